//! `weft.mesh.v1`: the stream between each proxy and the control plane that
//! carries the live trust bundle, renew-now requests and proxy reports.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("weft.mesh.v1");
}
