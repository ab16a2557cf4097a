//! Semantics of one refresh (SPEC section 3) as data: each scenario is run
//! through the whole function against the real ClickHouse server (`DateTime`
//! column, server in a non-UTC zone) and, with the same query text, on the
//! current engine in chDB (`DateTime64(3)` reference layout, session in another zone).

use serde_json::{json, Value};

use crate::helpers::{exposure, ts, Ev};

pub struct Scenario {
    pub name: &'static str,
    pub environment_key: &'static str,
    pub feature_name: &'static str,
    pub started_at: &'static str,
    /// `None`: a running experiment refreshed at `now`.
    pub ended_at: Option<&'static str>,
    pub now: &'static str,
    pub events: Vec<Ev>,
    /// The stored payload.
    pub expected: Value,
}

fn scenario(
    name: &'static str,
    started_at: &'static str,
    ended_at: &'static str,
    events: Vec<Ev>,
    expected: Value,
) -> Scenario {
    Scenario {
        name,
        environment_key: "prod",
        feature_name: "checkout",
        started_at,
        ended_at: Some(ended_at),
        now: "2026-07-01T00:00:00Z",
        events,
        expected,
    }
}

fn hourly(points: Value, excluded: u64) -> Value {
    json!({"excluded_identities": excluded, "timeseries": {"granularity": "hour", "points": points}})
}

fn daily(points: Value, excluded: u64) -> Value {
    json!({"excluded_identities": excluded, "timeseries": {"granularity": "day", "points": points}})
}

pub fn duplicates_count_once() -> Scenario {
    let mut events = vec![];
    for _ in 0..5 {
        events.push(exposure("u1", "control", "2026-06-01T10:15:00Z"));
    }
    events.push(exposure("u1", "control", "2026-06-01T12:00:00Z"));
    events.push(exposure("u2", "variant_a", "2026-06-01T10:59:59Z"));
    events.push(exposure("u2", "variant_a", "2026-06-01T10:59:59Z"));
    scenario(
        "duplicates_count_once",
        "2026-06-01T10:00:00Z",
        "2026-06-02T00:00:00Z",
        events,
        hourly(
            json!([{"bucket": "2026-06-01T10:00:00Z", "new_identities": {"control": 1, "variant_a": 1}}]),
            0,
        ),
    )
}

pub fn first_seen_before_window_counts_at_first_in_window_exposure() -> Scenario {
    scenario(
        "first_seen_before_window",
        "2026-06-01T10:00:00Z",
        "2026-06-02T00:00:00Z",
        vec![
            exposure("u1", "control", "2026-06-01T08:00:00Z"),
            exposure("u1", "control", "2026-06-01T13:30:00Z"),
            exposure("u1", "control", "2026-06-01T15:00:00Z"),
        ],
        hourly(
            json!([{"bucket": "2026-06-01T13:00:00Z", "new_identities": {"control": 1}}]),
            0,
        ),
    )
}

pub fn other_value_outside_window_is_not_quarantined() -> Scenario {
    scenario(
        "other_value_outside_window",
        "2026-06-01T10:00:00Z",
        "2026-06-02T00:00:00Z",
        vec![
            exposure("u1", "variant_a", "2026-06-01T09:59:59Z"),
            exposure("u1", "control", "2026-06-01T11:00:00Z"),
            exposure("u1", "variant_a", "2026-06-02T00:00:00Z"),
            exposure("u2", "control", "2026-06-01T11:00:00Z"),
            exposure("u2", "variant_a", "2026-06-01T23:59:59Z"),
        ],
        hourly(
            json!([{"bucket": "2026-06-01T11:00:00Z", "new_identities": {"control": 1}}]),
            1,
        ),
    )
}

pub fn window_bounds_are_half_open() -> Scenario {
    scenario(
        "window_bounds_are_half_open",
        "2026-06-01T10:00:00Z",
        "2026-06-01T12:00:00Z",
        vec![
            exposure("at_start", "control", "2026-06-01T10:00:00Z"),
            exposure("before_start", "control", "2026-06-01T09:59:59Z"),
            exposure("last_second", "control", "2026-06-01T11:59:59Z"),
            exposure("at_end", "control", "2026-06-01T12:00:00Z"),
        ],
        hourly(
            json!([
                {"bucket": "2026-06-01T10:00:00Z", "new_identities": {"control": 1}},
                {"bucket": "2026-06-01T11:00:00Z", "new_identities": {"control": 1}}
            ]),
            0,
        ),
    )
}

pub fn exactly_72_hours_is_hourly() -> Scenario {
    scenario(
        "exactly_72_hours_is_hourly",
        "2026-06-01T00:00:00Z",
        "2026-06-04T00:00:00Z",
        vec![
            exposure("u1", "control", "2026-06-01T00:30:00Z"),
            exposure("u2", "control", "2026-06-03T23:59:59Z"),
        ],
        hourly(
            json!([
                {"bucket": "2026-06-01T00:00:00Z", "new_identities": {"control": 1}},
                {"bucket": "2026-06-03T23:00:00Z", "new_identities": {"control": 1}}
            ]),
            0,
        ),
    )
}

pub fn one_second_over_72_hours_is_daily() -> Scenario {
    scenario(
        "one_second_over_72_hours_is_daily",
        "2026-06-01T00:00:00Z",
        "2026-06-04T00:00:01Z",
        vec![
            exposure("u1", "control", "2026-06-01T00:30:00Z"),
            exposure("u2", "control", "2026-06-03T23:59:59Z"),
            exposure("u3", "control", "2026-06-04T00:00:00Z"),
        ],
        daily(
            json!([
                {"bucket": "2026-06-01T00:00:00Z", "new_identities": {"control": 1}},
                {"bucket": "2026-06-03T00:00:00Z", "new_identities": {"control": 1}},
                {"bucket": "2026-06-04T00:00:00Z", "new_identities": {"control": 1}}
            ]),
            0,
        ),
    )
}

/// 23:30 UTC and 00:30 UTC are the same local day in UTC+5:30 and in UTC-4;
/// they must land in two UTC days (and hour buckets on whole UTC hours).
pub fn buckets_are_utc_days() -> Scenario {
    scenario(
        "buckets_are_utc_days",
        "2026-06-01T00:00:00Z",
        "2026-06-10T00:00:00Z",
        vec![
            exposure("u1", "control", "2026-06-01T23:30:00Z"),
            exposure("u2", "control", "2026-06-02T00:30:00Z"),
            exposure("u3", "variant_a", "2026-06-02T03:59:59Z"),
            exposure("u4", "variant_a", "2026-06-09T23:59:59Z"),
        ],
        daily(
            json!([
                {"bucket": "2026-06-01T00:00:00Z", "new_identities": {"control": 1}},
                {"bucket": "2026-06-02T00:00:00Z", "new_identities": {"control": 1, "variant_a": 1}},
                {"bucket": "2026-06-09T00:00:00Z", "new_identities": {"variant_a": 1}}
            ]),
            0,
        ),
    )
}

pub fn buckets_are_utc_hours() -> Scenario {
    scenario(
        "buckets_are_utc_hours",
        "2026-06-01T00:00:00Z",
        "2026-06-02T00:00:00Z",
        vec![
            exposure("u1", "control", "2026-06-01T05:29:59Z"),
            exposure("u2", "control", "2026-06-01T05:30:00Z"),
        ],
        hourly(
            json!([{"bucket": "2026-06-01T05:00:00Z", "new_identities": {"control": 2}}]),
            0,
        ),
    )
}

pub fn multi_variant_identities_are_quarantined() -> Scenario {
    scenario(
        "multi_variant_identities_are_quarantined",
        "2026-06-01T00:00:00Z",
        "2026-06-02T00:00:00Z",
        vec![
            exposure("u1", "control", "2026-06-01T01:00:00Z"),
            exposure("u1", "variant_a", "2026-06-01T02:00:00Z"),
            exposure("u2", "variant_a", "2026-06-01T01:00:00Z"),
            exposure("u2", "variant_b", "2026-06-01T01:00:00Z"),
            exposure("u2", "control", "2026-06-01T03:00:00Z"),
            exposure("u3", "control", "2026-06-01T01:10:00Z"),
        ],
        hourly(
            json!([{"bucket": "2026-06-01T01:00:00Z", "new_identities": {"control": 1}}]),
            2,
        ),
    )
}

pub fn variant_named_multiple_is_an_ordinary_variant() -> Scenario {
    scenario(
        "variant_named_multiple",
        "2026-06-01T00:00:00Z",
        "2026-06-02T00:00:00Z",
        vec![
            exposure("u1", "$multiple", "2026-06-01T01:00:00Z"),
            exposure("u2", "$multiple", "2026-06-01T01:00:00Z"),
            exposure("u3", "control", "2026-06-01T01:00:00Z"),
            exposure("u3", "$multiple", "2026-06-01T01:30:00Z"),
            exposure("u4", "", "2026-06-01T02:00:00Z"),
        ],
        hourly(
            json!([
                {"bucket": "2026-06-01T01:00:00Z", "new_identities": {"$multiple": 2}},
                {"bucket": "2026-06-01T02:00:00Z", "new_identities": {"": 1}}
            ]),
            1,
        ),
    )
}

pub fn anonymous_and_unrelated_rows_are_ignored() -> Scenario {
    let other = |f: fn(&mut Ev)| {
        let mut e = exposure("other", "control", "2026-06-01T01:00:00Z");
        f(&mut e);
        e
    };
    scenario(
        "anonymous_and_unrelated_rows_are_ignored",
        "2026-06-01T00:00:00Z",
        "2026-06-02T00:00:00Z",
        vec![
            exposure("", "control", "2026-06-01T01:00:00Z"),
            exposure("", "variant_a", "2026-06-01T01:00:00Z"),
            other(|e| e.event = "$pageview".into()),
            other(|e| e.feature_name = "checkout-v2".into()),
            other(|e| e.environment_key = "staging".into()),
            other(|e| e.feature_name = "Checkout".into()),
            exposure("u1", "variant_a", "2026-06-01T01:00:00Z"),
        ],
        hourly(
            json!([{"bucket": "2026-06-01T01:00:00Z", "new_identities": {"variant_a": 1}}]),
            0,
        ),
    )
}

pub fn unicode_and_quotes_in_names() -> Scenario {
    let env = "prod ' \" \\ ? ünï";
    let feature = "checkout's \"new\" flow — 🚀 ?";
    let mk = |id: &str, value: &str, at: &str| Ev {
        environment_key: env.into(),
        event: "$flag_exposure".into(),
        feature_name: feature.into(),
        identifier: id.into(),
        value: value.into(),
        at: ts(at),
    };
    Scenario {
        name: "unicode_and_quotes_in_names",
        environment_key: env,
        feature_name: feature,
        started_at: "2026-06-01T00:00:00Z",
        ended_at: Some("2026-06-02T00:00:00Z"),
        now: "2026-07-01T00:00:00Z",
        events: vec![
            mk(
                "user 'o\"brien' \\",
                "contrôle ' \"",
                "2026-06-01T01:00:00Z",
            ),
            mk("日本語", "variánt-ä ?", "2026-06-01T01:00:00Z"),
            mk(
                "x'); DROP TABLE events; --",
                "contrôle ' \"",
                "2026-06-01T02:00:00Z",
            ),
            exposure("plain", "control", "2026-06-01T01:00:00Z"),
        ],
        expected: hourly(
            json!([
                {"bucket": "2026-06-01T01:00:00Z", "new_identities": {"contrôle ' \"": 1, "variánt-ä ?": 1}},
                {"bucket": "2026-06-01T02:00:00Z", "new_identities": {"contrôle ' \"": 1}}
            ]),
            0,
        ),
    }
}

pub fn empty_result() -> Scenario {
    scenario(
        "empty_result",
        "2026-06-01T00:00:00Z",
        "2026-06-10T00:00:00Z",
        vec![exposure("u1", "control", "2026-05-31T23:59:59Z")],
        daily(json!([]), 0),
    )
}

/// A running experiment: the window ends now; granularity follows now - started_at.
pub fn running_experiment_window_ends_now() -> Scenario {
    Scenario {
        ended_at: None,
        now: "2026-06-01T05:00:00Z",
        ..scenario(
            "running_experiment_window_ends_now",
            "2026-06-01T00:00:00Z",
            "unused",
            vec![
                exposure("u1", "control", "2026-06-01T04:59:59Z"),
                exposure("u2", "control", "2026-06-01T05:00:00Z"),
            ],
            hourly(
                json!([{"bucket": "2026-06-01T04:00:00Z", "new_identities": {"control": 1}}]),
                0,
            ),
        )
    }
}

/// Every scenario, for the chDB run (the server tests name them one by one).
pub fn all() -> Vec<Scenario> {
    vec![
        duplicates_count_once(),
        first_seen_before_window_counts_at_first_in_window_exposure(),
        other_value_outside_window_is_not_quarantined(),
        window_bounds_are_half_open(),
        exactly_72_hours_is_hourly(),
        one_second_over_72_hours_is_daily(),
        buckets_are_utc_days(),
        buckets_are_utc_hours(),
        multi_variant_identities_are_quarantined(),
        variant_named_multiple_is_an_ordinary_variant(),
        anonymous_and_unrelated_rows_are_ignored(),
        unicode_and_quotes_in_names(),
        empty_result(),
        running_experiment_window_ends_now(),
    ]
}
