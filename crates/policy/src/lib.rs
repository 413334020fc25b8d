//! weft policy, as pure code: the resource model (Linkerd's kinds, parsed
//! and validated into snapshots with their problems), the translation to
//! linkerd2-proxy-api `inbound::Server`, weft's typed form of that message,
//! and [`judge`], the one verdict the proxy and `weft policy explain` share.
//!
//! Sources (the watched directory, Kubernetes) and gRPC services live in the
//! control plane; sockets live in the proxy. Nothing here does I/O.

mod defaults;
pub mod describe;
pub mod eval;
pub mod judge;
pub mod model;
pub mod path;
pub mod ports;
pub mod resources;
pub mod routes;
pub mod servers;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod translate;
mod unsettled;

pub use eval::{Client, Request};
pub use judge::{Denial, Facts, Handling, Mode, Traffic, Verdict, declares_http, handling, judge};
pub use model::{
    Authentication, Authorization, IdentitySuffix, Named, Network, Protocol, ReceiveError, Route,
    Server,
};

#[cfg(test)]
mod eval_tests;
