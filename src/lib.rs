//! exposures: an AWS Lambda function that keeps one exposure snapshot per
//! feature-flag experiment, computed from ClickHouse and stored in PostgreSQL.
//!
//! `main.rs` only wires these together; see `README.md` for the whole picture
//! and its "Layout" section for which way the modules depend on each other.

pub mod api;
pub mod causes;
pub mod config;
pub mod conninfo;
pub mod domain;
pub mod error;
pub mod handler;
pub mod intake;
pub mod metrics;
pub mod retry;
pub mod secrets;
pub mod service;
pub mod store;
pub mod sweep;
pub mod tls;
pub mod warehouse;

pub use config::Config;
pub use domain::{health, incremental, rfc3339, summary, window};
pub use error::Error;
pub use service::App;
