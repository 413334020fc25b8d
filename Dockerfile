# The one weft image: control plane, proxy and init container are the same
# `weft` binary. `weft init` runs iptables, so the base carries it; nothing
# else. Built from the workspace root: `docker build -t weft:0.1.0 .`
#
# Not built or tested on the project's CI machines (they have no container
# runtime); the tests run the same binary, with the commands and environment
# the injected pod spec gives it (tests/k8s_webhook.rs, tests/k8s_mesh.rs).

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools cmake clang \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# Static: no libc in the image to patch.
RUN cargo build --release --locked -p weft --target x86_64-unknown-linux-musl \
 && install -m 0755 target/x86_64-unknown-linux-musl/release/weft /weft

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
