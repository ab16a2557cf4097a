//! Whether a refresh may start from the stored snapshot, and why not.
//!
//! Pure: the decision from what is stored and how much changed, unit-tested here;
//! the queries are in `warehouse`, the compare-and-set write in `store`, and
//! `service` puts them together (README "Incremental refresh").

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::domain::experiment::Experiment;
use crate::domain::snapshot::{StoredSnapshot, StoredWindow};
use crate::domain::window::Window;

/// Why a refresh computes in full; logged as `full_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    /// Nothing usable is stored yet.
    First,
    /// The window ends at `ended_at`: the final snapshot is always computed in full.
    Final,
    /// The stored snapshot predates window fingerprints (or its payload is missing).
    NoFingerprint,
    /// `started_at` is not the one the stored snapshot was computed from.
    StartMoved,
    /// The stored `as_of` is not before this refresh's: nothing to add to.
    StoredAhead,
    /// The stored window no longer holds what it held: late, deleted, merged
    /// or mutated events, on any shard (a different content fingerprint).
    ChangedWindow,
    /// So much arrived since the stored `as_of` that a full refresh is cheaper.
    LargeChange,
    /// The stored payload could not take the change (it does not match the data).
    Inconsistent,
    /// Events arrived between the incremental query's two reads of the table.
    ConcurrentInsert,
    /// Two identities shared the incremental query's 64-bit grouping key.
    KeyCollision,
    /// Another refresh stored a snapshot in between; the change was computed against the old one.
    Race,
}

impl FullReason {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Final => "final",
            Self::NoFingerprint => "no_fingerprint",
            Self::StartMoved => "start_moved",
            Self::StoredAhead => "stored_ahead",
            Self::ChangedWindow => "changed_window",
            Self::LargeChange => "large_change",
            Self::Inconsistent => "inconsistent",
            Self::ConcurrentInsert => "concurrent_insert",
            Self::KeyCollision => "key_collision",
            Self::Race => "race",
        }
    }
}

/// The stored snapshot an incremental refresh starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct Base<'a> {
    /// End of its window: the change covers `[as_of, window.end)`.
    pub as_of: DateTime<Utc>,
    /// Its payload.
    pub payload: &'a Value,
    /// What its window held.
    pub window: StoredWindow,
}

/// The stored snapshot to start from, or why the refresh must be full.
pub fn base<'a>(
    experiment: &Experiment,
    window: &Window,
    stored: Option<&'a StoredSnapshot>,
) -> Result<Base<'a>, FullReason> {
    if experiment.ended_at == Some(window.end) {
        return Err(FullReason::Final);
    }
    let Some((as_of, payload)) = stored.and_then(|s| Some((s.as_of?, s.payload.as_ref()?))) else {
        return Err(FullReason::First);
    };
    let stored_window = stored
        .and_then(|s| s.window)
        .ok_or(FullReason::NoFingerprint)?;
    if stored_window.start != window.start {
        return Err(FullReason::StartMoved);
    }
    if as_of >= window.end {
        return Err(FullReason::StoredAhead);
    }
    Ok(Base {
        as_of,
        payload,
        window: stored_window,
    })
}

/// A change larger than this share of the stored window's rows is computed in full.
///
/// Measured on the benchmark data (README "Incremental refresh"): the incremental
/// query reads the whole window once whatever the change, then collects and groups
/// the rows of the identities seen since `as_of`, so its memory grows with the
/// change. At 0.7 % of the window (15 minutes) it took 0.23 of a full refresh's
/// time and 0.25 of its memory on 18.16; at 6 % (one day) 0.72 of the time but
/// 2.4 times the memory. Interpolated, memory reaches the full refresh's near
/// 3 %; 2 % keeps both below it.
pub const MAX_CHANGE_SHARE: f64 = 0.02;

/// Changes up to this many rows are never large: both plans take milliseconds there.
pub const SMALL_CHANGE_ROWS: u64 = 10_000;

/// True when `changed_rows` arrived since the stored snapshot of `stored_rows` rows
/// is too many for an incremental refresh to pay off.
pub fn is_large_change(changed_rows: u64, stored_rows: u64) -> bool {
    changed_rows > SMALL_CHANGE_ROWS && changed_rows as f64 > stored_rows as f64 * MAX_CHANGE_SHARE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fingerprint::Fingerprint;
    use chrono::{TimeDelta, TimeZone};
    use serde_json::json;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap() + TimeDelta::hours(h)
    }

    fn experiment(ended_at: Option<DateTime<Utc>>) -> Experiment {
        Experiment {
            id: 1,
            environment_key: "prod".into(),
            feature_name: "checkout".into(),
            status: "running".into(),
            started_at: Some(t(0)),
            ended_at,
            variant_weights: None,
        }
    }

    fn stored(as_of: DateTime<Utc>, start: DateTime<Utc>, window: bool) -> StoredSnapshot {
        StoredSnapshot {
            as_of: Some(as_of),
            payload: Some(json!({})),
            last_error_at: None,
            refresh_requested_at: None,
            updated_at: as_of,
            window: window.then_some(StoredWindow {
                start,
                fingerprint: Fingerprint {
                    rows: 7,
                    checksum: 9,
                },
            }),
        }
    }

    #[test]
    fn starts_from_a_stored_snapshot_with_its_window() {
        let window = Window::new(t(0), None, t(5));
        let s = stored(t(4), t(0), true);
        let b = base(&experiment(None), &window, Some(&s)).unwrap();
        assert_eq!(b.as_of, t(4));
        assert_eq!(b.window.fingerprint.rows, 7);
    }

    #[test]
    fn full_when_it_cannot_start_from_the_stored_snapshot() {
        let running = experiment(None);
        let window = Window::new(t(0), None, t(5));
        let reason = |s: Option<&StoredSnapshot>, e: &Experiment, w: &Window| {
            base(e, w, s).map(|_| ()).unwrap_err()
        };
        assert_eq!(reason(None, &running, &window), FullReason::First);
        let mut no_payload = stored(t(4), t(0), true);
        no_payload.payload = None;
        assert_eq!(
            reason(Some(&no_payload), &running, &window),
            FullReason::First
        );
        assert_eq!(
            reason(Some(&stored(t(4), t(0), false)), &running, &window),
            FullReason::NoFingerprint
        );
        assert_eq!(
            reason(Some(&stored(t(4), t(1), true)), &running, &window),
            FullReason::StartMoved
        );
        assert_eq!(
            reason(Some(&stored(t(5), t(0), true)), &running, &window),
            FullReason::StoredAhead
        );
        // The final snapshot is computed in full, even from a good base.
        let ended = experiment(Some(t(5)));
        let final_window = Window::new(t(0), Some(t(5)), t(9));
        assert_eq!(
            reason(Some(&stored(t(4), t(0), true)), &ended, &final_window),
            FullReason::Final
        );
    }

    #[test]
    fn large_change_threshold() {
        assert!(!is_large_change(0, 0));
        assert!(!is_large_change(150_000, 20_000_000));
        assert!(!is_large_change(400_000, 20_000_000));
        assert!(is_large_change(400_001, 20_000_000));
        assert!(is_large_change(1_430_000, 20_000_000));
        assert!(!is_large_change(SMALL_CHANGE_ROWS, 0));
        assert!(is_large_change(SMALL_CHANGE_ROWS + 1, 0));
    }
}
