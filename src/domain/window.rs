//! The refresh window and its granularity (SPEC section 3, steps 1, 2 and 6).

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::Serialize;

/// The width of one bucket of the time series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One UTC hour.
    Hour,
    /// One UTC calendar day.
    Day,
}

/// Windows up to and including this long are bucketed by hour.
pub const HOURLY_UP_TO: TimeDelta = TimeDelta::hours(72);

impl Granularity {
    /// `hour` when the window is at most 72 hours long (72 h exactly is still hourly), else `day`.
    pub fn for_window(start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        if end - start <= HOURLY_UP_TO {
            Self::Hour
        } else {
            Self::Day
        }
    }

    /// Bucket width in seconds. Unix time has no leap seconds, so
    /// `floor(epoch / width) * width` is exactly the start of a UTC hour or day.
    pub fn seconds(self) -> u32 {
        match self {
            Self::Hour => 3_600,
            Self::Day => 86_400,
        }
    }

    /// The name used in payloads and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }
}

/// The half-open interval `[start, end)` of exposures one refresh counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The experiment's `started_at` (inclusive).
    pub start: DateTime<Utc>,
    /// The snapshot's `as_of` (exclusive).
    pub end: DateTime<Utc>,
    /// Bucket width for both the query and the payload.
    pub granularity: Granularity,
}

impl Window {
    /// The window of a started experiment: it ends at `ended_at`, or at `now` while it runs.
    ///
    /// `now` is truncated to milliseconds, the precision of `DateTime64(3)`, so the
    /// stored `as_of` is exactly the bound the query used.
    pub fn new(
        started_at: DateTime<Utc>,
        ended_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Self {
        let end = ended_at.unwrap_or_else(|| {
            now.duration_trunc(TimeDelta::milliseconds(1))
                .unwrap_or(now)
        });
        Self {
            start: started_at,
            end,
            granularity: Granularity::for_window(started_at, end),
        }
    }

    /// True when no instant can satisfy `start <= t < end`.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap() + TimeDelta::hours(h)
    }

    #[test]
    fn exactly_72_hours_is_hourly_one_second_more_is_daily() {
        assert_eq!(Granularity::for_window(t(0), t(72)), Granularity::Hour);
        assert_eq!(
            Granularity::for_window(t(0), t(72) + TimeDelta::seconds(1)),
            Granularity::Day
        );
        assert_eq!(
            Granularity::for_window(t(0), t(72) + TimeDelta::milliseconds(1)),
            Granularity::Day
        );
        assert_eq!(Granularity::for_window(t(0), t(0)), Granularity::Hour);
    }

    #[test]
    fn window_ends_at_ended_at_when_the_experiment_ended() {
        let w = Window::new(t(0), Some(t(100)), t(500));
        assert_eq!(
            (w.start, w.end, w.granularity),
            (t(0), t(100), Granularity::Day)
        );
    }

    #[test]
    fn running_window_ends_now_truncated_to_milliseconds() {
        let now = t(5) + TimeDelta::nanoseconds(1_234_567_891);
        let w = Window::new(t(0), None, now);
        assert_eq!(w.end, t(5) + TimeDelta::milliseconds(1_234));
        assert_eq!(w.granularity, Granularity::Hour);
        assert!(!w.is_empty());
        assert!(Window::new(t(5), Some(t(1)), now).is_empty());
    }

    #[test]
    fn bucket_widths() {
        assert_eq!(Granularity::Hour.seconds(), 3600);
        assert_eq!(Granularity::Day.seconds(), 86400);
        assert_eq!(serde_json::to_value(Granularity::Day).unwrap(), "day");
    }
}
