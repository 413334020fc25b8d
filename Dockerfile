# The one weft image: control plane, proxy and init container are the same
# `weft` binary. `weft init` runs iptables, so the base carries it; nothing
# else. Built from the workspace root: `docker build -t weft:0.1.0 .`
#
# Not built or tested on the project's CI machines (they have no container
# runtime); the tests run the same binary, with the commands and environment
# the injected pod spec gives it (tests/k8s_webhook.rs, tests/k8s_mesh.rs).

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# glibc, as every test and benchmark runs it, linked against the same Debian
# release as the runtime stage. Not a static musl build: musl's allocator
# hands freed memory back to the kernel and faults it in again per request,
# which cost the HTTP path 33% more CPU per request (60 vs 45 us) and 29% of
# its keep-alive rate in one peer-benchmark run (BENCHMARKS.md, "The image").
RUN cargo build --release --locked -p weft \
 && install -m 0755 target/release/weft /weft

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /weft /usr/local/bin/weft
# Non-root by default (the control plane's uid, as `weft install` runs it);
# the injected proxy runs as 2102 and the init container as root with only
# NET_ADMIN/NET_RAW, both set by the pod spec.
USER 2103:2103
ENTRYPOINT ["/usr/local/bin/weft"]
