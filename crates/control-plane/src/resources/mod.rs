//! Resources (ExternalWorkload and Namespace now; policy kinds later) read
//! from a directory of Kubernetes-style YAML files, the standalone
//! counterpart of Kubernetes watches. The indexes above see only
//! [`Snapshot`]s, whichever source produced them.
//!
//! Layout: `types` (the kinds), `parse` (files to objects, strict on `spec`),
//! `snapshot` (the pure merge rules), `source` (the watched directory).

mod de;
mod parse;
mod problem;
mod snapshot;
mod source;
mod types;

pub use parse::{claimed_addresses, lint, parse_file};
pub use problem::{Problem, Severity};
pub use snapshot::{DirRead, FileOutcome, Snapshot, Sourced, merge};
pub use source::{DirSource, is_resource_file};
pub use types::{
    ExternalWorkload, ExternalWorkloadSpec, Kind, MeshTls, Meta, Namespace, Object, ObjectKey,
    PortSpec, WorkloadIp, parse_identity,
};

#[cfg(test)]
mod parse_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod source_tests;
