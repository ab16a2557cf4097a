//! Integration tests: one binary, real ClickHouse and PostgreSQL servers
//! (started by `scripts/servers.sh`), chDB for the current ClickHouse engine,
//! and `cargo lambda` for the files in `events/`.

mod api;
mod cargo_lambda;
mod chdb;
mod cluster;
mod cluster_nodes;
mod distributed;
mod faults;
mod findings;
mod health;
mod helpers;
mod incremental;
mod incremental_property;
mod invocation;
mod layout;
mod load;
mod metrics;
mod openapi;
mod proxy;
mod refresh;
mod scenarios;
mod secrets;
mod store;
mod sweep;
mod template;
mod tls;
