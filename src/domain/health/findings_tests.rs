//! Unit tests of `findings.rs` (a file of their own: they outgrow the code).

use chrono::TimeZone;
use serde_json::{json, Value};

use super::super::tests::{payload, weights};
use super::super::Health;
use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A running experiment started 2026-06-01, its snapshot as of 2026-06-03,
/// read at that moment, no failure.
fn running() -> Facts<'static> {
    Facts {
        status: "running",
        started_at: Some(t("2026-06-01T00:00:00Z")),
        as_of: Some(t("2026-06-03T00:00:00Z")),
        last_error_at: None,
        now: t("2026-06-03T00:00:00Z"),
    }
}

/// Daily points with these (control, variant_a) counts from 2026-06-01 on.
fn daily(counts: &[(u64, u64)], excluded: u64) -> Value {
    let points: Vec<Value> = counts
        .iter()
        .enumerate()
        .map(|(day, (c, a))| {
            let bucket =
                Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap() + TimeDelta::days(day as i64);
            json!({"bucket": rfc3339::format(&bucket),
                   "new_identities": {"control": c, "variant_a": a}})
        })
        .collect();
    payload(Value::Array(points), excluded)
}

fn findings_of(payload: &Value, facts: &Facts<'_>, limits: &Limits) -> Vec<Finding> {
    let w = weights(json!({"control": 1, "variant_a": 1}));
    Health::compute(payload, Some(&w), facts, limits).findings
}

fn codes(findings: &[Finding]) -> Vec<&'static str> {
    findings.iter().map(|f| f.code.as_str()).collect()
}

fn only(findings: &[Finding], code: Code) -> &Finding {
    assert_eq!(codes(findings), [code.as_str()], "{findings:#?}");
    &findings[0]
}

#[test]
fn nothing_wrong_means_no_findings() {
    let p = daily(&[(500, 500), (510, 490)], 0);
    assert_eq!(findings_of(&p, &running(), &Limits::default()), []);
}

#[test]
fn no_exposures_from_exactly_the_grace_period_on() {
    let empty = payload(json!([]), 0);
    let started = t("2026-06-01T00:00:00Z");
    let at = |now: DateTime<Utc>| Facts {
        as_of: Some(now),
        now,
        ..running()
    };
    let limits = Limits::default();
    // One second before 24 h: nothing yet.
    let early = at(started + TimeDelta::hours(24) - TimeDelta::seconds(1));
    assert_eq!(findings_of(&empty, &early, &limits), []);
    // Exactly 24 h: the finding, since started_at + 24 h.
    let found = findings_of(&empty, &at(started + TimeDelta::hours(24)), &limits);
    let f = only(&found, Code::NoExposures);
    assert_eq!(f.severity, Severity::Error);
    assert_eq!(f.since, Some(t("2026-06-02T00:00:00Z")));
    assert_eq!(
        f.detail,
        "Running for 24 hours and no identity has been counted."
    );
    // The threshold is configurable; since moves with it.
    let six = Limits {
        no_exposures_after: TimeDelta::hours(6),
        ..limits
    };
    let found = findings_of(&empty, &at(started + TimeDelta::hours(7)), &six);
    assert_eq!(
        only(&found, Code::NoExposures).since,
        Some(t("2026-06-01T06:00:00Z"))
    );
    // Identities excluded (all quarantined) are exposures too.
    let quarantined = payload(json!([]), 3);
    assert_eq!(
        findings_of(&quarantined, &at(started + TimeDelta::days(3)), &limits),
        []
    );
    // A point with only zero counts counts nobody: still no exposures, and
    // stalled is not raised on top (the point's bucket is recent).
    let zeros = daily(&[(0, 0)], 0);
    let found = findings_of(&zeros, &at(started + TimeDelta::hours(25)), &limits);
    assert_eq!(codes(&found), ["no_exposures"]);
}

#[test]
fn stale_from_exactly_the_limit_on() {
    let p = daily(&[(500, 500), (510, 490)], 0);
    let as_of = t("2026-06-03T00:00:00Z");
    let limits = Limits::default();
    let at = |now| Facts { now, ..running() };
    assert_eq!(
        findings_of(&p, &at(as_of + TimeDelta::seconds(3599)), &limits),
        []
    );
    let found = findings_of(&p, &at(as_of + TimeDelta::seconds(3600)), &limits);
    let f = only(&found, Code::Stale);
    assert_eq!(f.severity, Severity::Warning);
    assert_eq!(f.since, Some(t("2026-06-03T01:00:00Z")));
    assert_eq!(f.detail, "The snapshot is 3600 seconds old (limit 3600).");
    let short = Limits {
        stale_after: TimeDelta::seconds(60),
        ..limits
    };
    let found = findings_of(&p, &at(as_of + TimeDelta::seconds(60)), &short);
    assert_eq!(
        only(&found, Code::Stale).since,
        Some(t("2026-06-03T00:01:00Z"))
    );
}

#[test]
fn stalled_from_exactly_the_limit_after_the_last_bucket_ends() {
    // The last point's bucket is 2026-06-02 (a day): it ends 2026-06-03.
    let p = daily(&[(500, 500), (510, 490)], 0);
    let limits = Limits::default();
    let at = |as_of| Facts {
        as_of: Some(as_of),
        now: as_of,
        ..running()
    };
    let end = t("2026-06-03T00:00:00Z");
    assert_eq!(
        findings_of(
            &p,
            &at(end + TimeDelta::hours(24) - TimeDelta::seconds(1)),
            &limits
        ),
        []
    );
    let found = findings_of(&p, &at(end + TimeDelta::hours(24)), &limits);
    let f = only(&found, Code::Stalled);
    assert_eq!(f.severity, Severity::Warning);
    assert_eq!(f.since, Some(end));
    assert_eq!(
        f.detail,
        "No first exposure for 24 hours before the snapshot's as_of (last bucket ended 2026-06-03T00:00:00Z)."
    );
    // Hourly buckets end an hour after they start; the limit is configurable.
    let hourly = json!({"excluded_identities": 0, "timeseries": {"granularity": "hour", "points": [
        {"bucket": "2026-06-01T05:00:00Z", "new_identities": {"control": 60, "variant_a": 60}}]}});
    let two = Limits {
        stalled_after: TimeDelta::hours(2),
        ..limits
    };
    assert_eq!(
        findings_of(&hourly, &at(t("2026-06-01T07:59:59Z")), &two),
        []
    );
    let found = findings_of(&hourly, &at(t("2026-06-01T08:00:00Z")), &two);
    assert_eq!(
        only(&found, Code::Stalled).since,
        Some(t("2026-06-01T06:00:00Z"))
    );
    // Measured against as_of, not the clock: an old snapshot read much later
    // is stale, not stalled.
    let later = Facts {
        now: t("2026-06-10T00:00:00Z"),
        ..running()
    };
    assert_eq!(codes(&findings_of(&p, &later, &limits)), ["stale"]);
}

#[test]
fn refresh_failing_only_when_the_failure_is_after_the_snapshot() {
    let p = daily(&[(500, 500)], 0);
    let limits = Limits::default();
    let failed = |as_of: Option<&str>, last_error_at: &str| Facts {
        as_of: as_of.map(t),
        last_error_at: Some(t(last_error_at)),
        now: t("2026-06-02T00:10:00Z"),
        ..running()
    };
    // No as_of: failing.
    let found = findings_of(&p, &failed(None, "2026-06-02T00:05:00Z"), &limits);
    let f = only(&found, Code::RefreshFailing);
    assert_eq!((f.severity, f.since), (Severity::Error, None));
    assert_eq!(
        f.detail,
        "The last refresh failed at 2026-06-02T00:05:00Z, after the stored snapshot."
    );
    // Later than as_of: failing.
    let found = findings_of(
        &p,
        &failed(Some("2026-06-02T00:00:00Z"), "2026-06-02T00:05:00.5Z"),
        &limits,
    );
    assert_eq!(
        only(&found, Code::RefreshFailing).detail,
        "The last refresh failed at 2026-06-02T00:05:00.500Z, after the stored snapshot (as_of 2026-06-02T00:00:00Z)."
    );
    // Equal to as_of, or earlier: a good refresh came after it.
    for error in ["2026-06-02T00:00:00Z", "2026-06-01T23:00:00Z"] {
        let facts = failed(Some("2026-06-02T00:00:00Z"), error);
        assert_eq!(findings_of(&p, &facts, &limits), [], "{error}");
    }
    // Not only while running: a paused experiment's refreshes fail too.
    let paused = Facts {
        status: "paused",
        ..failed(Some("2026-06-01T00:00:00Z"), "2026-06-02T00:05:00Z")
    };
    assert_eq!(
        codes(&findings_of(&p, &paused, &limits)),
        ["refresh_failing"]
    );
}

#[test]
fn paused_and_completed_experiments_have_no_running_only_findings() {
    // Empty, long stalled, stale: every running-only condition holds...
    let empty = payload(json!([]), 0);
    let old = daily(&[(500, 500)], 0);
    let facts = Facts {
        status: "running",
        started_at: Some(t("2026-06-01T00:00:00Z")),
        as_of: Some(t("2026-06-10T00:00:00Z")),
        last_error_at: None,
        now: t("2026-06-20T00:00:00Z"),
    };
    let limits = Limits::default();
    assert_eq!(
        codes(&findings_of(&empty, &facts, &limits)),
        ["no_exposures", "stale"]
    );
    assert_eq!(
        codes(&findings_of(&old, &facts, &limits)),
        ["stale", "stalled"]
    );
    // ...and none is raised for a paused, completed (final) or created one.
    for status in ["paused", "completed", "created"] {
        let other = Facts { status, ..facts };
        assert_eq!(findings_of(&empty, &other, &limits), [], "{status}");
        assert_eq!(findings_of(&old, &other, &limits), [], "{status}");
    }
    // A final snapshot (as_of = ended_at) of a completed experiment still
    // says what is wrong with its data.
    let final_ = Facts {
        status: "completed",
        ..facts
    };
    let skewed = daily(&[(6000, 4000)], 200);
    assert_eq!(
        codes(&findings_of(&skewed, &final_, &limits)),
        ["srm", "multiple_exposure"]
    );
}

#[test]
fn srm_since_is_the_onset_bucket() {
    // Ten even days, then the split goes 55/45.
    let mut counts = vec![(1000, 1000); 10];
    counts.extend(vec![(1100, 900); 10]);
    let p = daily(&counts, 0);
    let w = weights(json!({"control": 1, "variant_a": 1}));
    let h = Health::compute(&p, Some(&w), &running(), &Limits::default());
    let seq = h.sample_ratio.sequential.clone().unwrap();
    let onset = seq.onset_bucket.unwrap();
    assert!(onset >= t("2026-06-11T00:00:00Z"), "{onset}");
    let f = only(&h.findings, Code::Srm);
    assert_eq!((f.severity, f.since), (Severity::Error, Some(onset)));
    assert!(f.detail.contains("sequential p-value"), "{}", f.detail);
    // The same counts before the change: no finding, no onset.
    let before = daily(&counts[..10], 0);
    let h = Health::compute(&before, Some(&w), &running(), &Limits::default());
    assert_eq!(h.sample_ratio.sequential.unwrap().onset_bucket, None);
    assert_eq!(h.findings, []);
}

#[test]
fn errors_first_then_by_code() {
    // srm, an unexpected variant, 2% quarantined, a failed refresh after
    // the snapshot, stalled two days and stale.
    let p = json!({"excluded_identities": 40, "timeseries": {"granularity": "day", "points": [
        {"bucket": "2026-06-01T00:00:00Z", "new_identities": {"control": 1400, "variant_a": 600, "zz": 1}}]}});
    let facts = Facts {
        status: "running",
        started_at: Some(t("2026-06-01T00:00:00Z")),
        as_of: Some(t("2026-06-04T00:00:00Z")),
        last_error_at: Some(t("2026-06-04T00:15:00Z")),
        now: t("2026-06-04T01:00:00Z"),
    };
    let found = findings_of(&p, &facts, &Limits::default());
    assert_eq!(
        codes(&found),
        [
            "refresh_failing",
            "srm",
            "unexpected_variants",
            "multiple_exposure",
            "stale",
            "stalled"
        ]
    );
    let since: Vec<Option<DateTime<Utc>>> = found.iter().map(|f| f.since).collect();
    assert_eq!(
        since,
        [
            None,
            Some(t("2026-06-01T00:00:00Z")),
            None,
            None,
            Some(t("2026-06-04T01:00:00Z")),
            Some(t("2026-06-02T00:00:00Z")),
        ]
    );
    assert_eq!(
        found[2].detail,
        "1 variant(s) seen that have no positive weight: zz."
    );
    assert_eq!(
        found[3].detail,
        "40 identities (1.96%) saw more than one variant and are excluded."
    );
    // no_exposures sorts between the other errors.
    let empty = payload(json!([]), 0);
    let found = findings_of(&empty, &facts, &Limits::default());
    assert_eq!(codes(&found), ["no_exposures", "refresh_failing", "stale"]);
    // As the answer writes them.
    assert_eq!(
        serde_json::to_value(&found[2]).unwrap(),
        json!({"code": "stale", "severity": "warning", "since": "2026-06-04T01:00:00Z",
               "detail": "The snapshot is 3600 seconds old (limit 3600)."})
    );
    assert_eq!(
        serde_json::to_value(&found[1]).unwrap()["since"],
        Value::Null
    );
}

#[test]
fn codes_and_severities_as_the_contract_lists_them() {
    let listed: Vec<(&str, Severity)> = Code::ALL
        .iter()
        .map(|c| (c.as_str(), c.severity()))
        .collect();
    assert_eq!(
        listed,
        [
            ("multiple_exposure", Severity::Warning),
            ("no_exposures", Severity::Error),
            ("refresh_failing", Severity::Error),
            ("srm", Severity::Error),
            ("stale", Severity::Warning),
            ("stalled", Severity::Warning),
            ("unexpected_variants", Severity::Error),
        ]
    );
    for code in Code::ALL {
        assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
    }
    let mut sorted = Code::ALL;
    sorted.sort();
    assert_eq!(sorted, Code::ALL, "declared in alphabetical order");
}
