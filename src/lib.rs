//! exposures: an AWS Lambda function that keeps one exposure snapshot per
//! feature-flag experiment, computed from ClickHouse and stored in PostgreSQL.
//!
//! `main.rs` only wires these together; see `README.md` for the whole picture.

pub mod api;
pub mod config;
pub mod error;
pub mod handler;
pub mod health;
pub mod incremental;
pub mod intake;
pub mod retry;
pub mod rfc3339;
pub mod secrets;
pub mod service;
pub mod store;
pub mod summary;
pub mod sweep;
pub mod tls;
pub mod warehouse;
pub mod window;

pub use config::Config;
pub use error::Error;
pub use service::App;
