//! Cost of the health computed on every answer (`scripts/bench.sh --health`):
//! the whole health object (chi-squared and sequential tests, multiple
//! exposure, findings) on stored payloads of growing size, with weights, as the
//! function runs it (payload already parsed from PostgreSQL's jsonb), plus its
//! serialization into the answer. Median of many runs after a warm-up.
//!
//! Arguments (after `cargo bench --bench health --`): `--runs N` (default 2000).

use std::hint::black_box;
use std::time::Instant;

use chrono::{TimeDelta, TimeZone, Utc};
use exposures::health::{Facts, Health, Limits, Weights};
use serde_json::{json, Map, Value};

/// A payload of `points` buckets of `width` with `variants` variants in each.
fn payload(points: usize, variants: usize, width: TimeDelta) -> Value {
    let first_day = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let points: Vec<Value> = (0..points)
        .map(|p| {
            let counts: Map<String, Value> = (0..variants)
                .map(|v| (format!("variant_{v}"), json!(1000 + p * 7 + v)))
                .collect();
            let bucket = first_day + width * p as i32;
            json!({"bucket": exposures::rfc3339::format(&bucket), "new_identities": counts})
        })
        .collect();
    let granularity = if width == TimeDelta::hours(1) {
        "hour"
    } else {
        "day"
    };
    json!({"excluded_identities": 1234, "timeseries": {"granularity": granularity, "points": points}})
}

/// (median, fastest) in µs; the fastest shows the cost when another process shares the cores.
fn median_micros(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..runs / 10 + 1 {
        f();
    }
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not.
    if !args.iter().any(|a| a == "--bench") {
        println!("benches/health.rs: run it with `scripts/bench.sh --health`");
        return;
    }
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map_or(2000, |n| n.parse().expect("--runs N"));
    // A running experiment whose snapshot is stale and failing: every finding is evaluated.
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let facts = Facts {
        status: "running",
        started_at: Some(start),
        as_of: Some(start + TimeDelta::days(400)),
        last_error_at: Some(start + TimeDelta::days(401)),
        now: start + TimeDelta::days(402),
    };
    let limits = Limits::default();
    println!(
        "| payload | points | arms | compute µs | compute + serialize µs | required (compute) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, points, variants, width, required) in [
        ("3 days hourly", 72, 2, TimeDelta::hours(1), ""),
        ("3 days hourly", 72, 5, TimeDelta::hours(1), "≤ 20"),
        ("90 days daily", 90, 3, TimeDelta::days(1), ""),
        ("1 year daily", 365, 10, TimeDelta::days(1), "≤ 200"),
    ] {
        let payload = payload(points, variants, width);
        let weights: Map<String, Value> = (0..variants)
            .map(|v| (format!("variant_{v}"), json!(1)))
            .collect();
        let weights = Weights::from_json(Some(&Value::Object(weights)))
            .unwrap()
            .unwrap();
        let compute = median_micros(runs, || {
            black_box(Health::compute(
                black_box(&payload),
                Some(&weights),
                &facts,
                &limits,
            ));
        });
        let both = median_micros(runs, || {
            let health = Health::compute(black_box(&payload), Some(&weights), &facts, &limits);
            black_box(serde_json::to_string(&health).unwrap());
        });
        println!(
            "| {name} | {points} | {variants} | {:.1} / {:.1} | {:.1} / {:.1} | {required} |",
            compute.0, compute.1, both.0, both.1
        );
    }
}
