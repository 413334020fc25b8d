//! The identity service: turns a workload's proof of who it is into a
//! short-lived certificate, over Linkerd's `Certify` API.

pub mod csr;
pub mod issuer;
pub mod keys;
pub mod limit;
pub mod metrics;
pub mod proof;
pub mod record;
pub mod refusal_log;
pub mod reload;
pub mod service;
pub mod state;
pub mod token;

pub use issuer::{IssuerFiles, IssuerState};
pub use reload::{IssuerStatus, Reloader};
pub use service::{CertifyConfig, IdentityService};
