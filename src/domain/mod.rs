//! The domain core: value types and the arithmetic on them, shared by the
//! edges (`store`, `warehouse`, `api`). Nothing here does I/O or imports a
//! client crate, so all of it is unit-tested without a server.

pub mod experiment;
pub mod fingerprint;
pub mod health;
pub mod incremental;
pub mod rfc3339;
pub mod snapshot;
pub mod summary;
pub mod transition;
pub mod window;
