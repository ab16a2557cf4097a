//! ClickHouse: the client and one file per query (SPEC sections 2.1 and 3).
//!
//! One query per refresh, over every exposure in the window, so its shape is the
//! product's cost (README "Performance"). It has to run unchanged on current
//! releases and on the old server Debian packages (18.16), which shapes it:
//! - identities are grouped by `sipHash128(identifier)`, a 16-byte fixed key,
//!   not by the string: hashing and comparing variable-length keys was most of
//!   the cost and memory. Two identifiers are the same identity only if their
//!   SipHash-128 are equal, the rule ClickHouse's own `uniqExact` and
//!   `count(DISTINCT)` apply to strings (a collision among 10 million identities
//!   has a probability near 10^-25);
//! - variants travel as `cityHash64(value)` codes, so the per-identity state is
//!   three numbers (first timestamp, lowest and highest code: quarantined when
//!   they differ). The codes are named again by a small `GROUP BY value` over the
//!   same rows, joined at the end; a code with two names (a 64-bit collision
//!   between two variant keys) or none (a variant inserted between the two reads)
//!   marks its row `unresolved` and the refresh fails instead of guessing;
//! - no CTEs (`WITH name AS (subquery)` is missing on 18.16): subqueries in `FROM`;
//! - buckets are computed from Unix seconds, `intDiv(epoch, width) * width`,
//!   which is a UTC hour or day whatever the server's or the column's time zone;
//! - every value is bound client-side with `?` (18.16 cannot take server-side
//!   parameters sent as multipart), and results come as plain `RowBinary`
//!   with explicit casts (18.16 lacks `RowBinaryWithNamesAndTypes`).

mod client;
mod delta_rows;
mod error;
mod exposures;
mod incremental;
mod plan;
mod sql;

pub use client::{Warehouse, CLUSTER_SETTINGS, MEMORY_SETTINGS};
pub use error::{WarehouseError, TRANSIENT_SERVER_CODES};
pub use exposures::{counts, fingerprint, BucketRow, Computed};
pub use incremental::{delta, Delta, TransitionRow};
pub use plan::Plan;
pub use sql::{Target, TimestampKind, EXPOSURE_EVENT};
