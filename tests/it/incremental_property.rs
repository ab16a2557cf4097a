//! Property test of the incremental refresh: random event streams (new,
//! returning, switching, late, deleted, anonymous, not yet due) and random
//! refresh times crossing hour, day and 72-hour boundaries. After every step the
//! stored payload equals a full computation over the same window and data: on
//! the Debian server through the whole refresh, and on the current engine (chDB)
//! for the queries and the payload arithmetic.
//!
//! The seed is printed; `EXPOSURES_PROPERTY_SEED=<n>` replays a run,
//! `EXPOSURES_PROPERTY_CASES=<n>` runs more cases (the suite runs a few),
//! `EXPOSURES_PROPERTY_EVENTS=<n>` up to n events per step (default 6).

use chrono::{DateTime, TimeDelta, Utc};
use exposures::service::Mode;
use exposures::summary::Payload;
use exposures::warehouse::{
    self, BucketRow, Plan, Target, TimestampKind, TransitionRow, Warehouse,
};
use exposures::window::Window;
use exposures::{App, Config};
use serde_json::json;

use crate::chdb::{run_chdb, REFERENCE_DDL};
use crate::helpers::{exposure, insert_sql, ts, Ev, TestEnv};
use crate::incremental::{full_payload, refresh, wait_for_mutations};

/// SplitMix64: small, seedable, enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A time in `[from, to)`, whole milliseconds (or seconds).
    fn time(&mut self, from: DateTime<Utc>, to: DateTime<Utc>, millis: bool) -> DateTime<Utc> {
        let span = (to - from).num_milliseconds().max(1) as u64;
        let t = from + TimeDelta::milliseconds(self.below(span) as i64);
        if millis {
            t
        } else {
            DateTime::from_timestamp(t.timestamp(), 0).unwrap()
        }
    }
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn seed() -> u64 {
    let seed = setting(
        "EXPOSURES_PROPERTY_SEED",
        Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64,
    );
    eprintln!("property test seed: EXPOSURES_PROPERTY_SEED={seed}");
    seed
}

const VARIANTS: [&str; 3] = ["control", "variant_a", "$multiple"];
/// Clock steps: crossing minutes, hours, days and (in a few steps) 72 hours.
const STEPS_MINUTES: [i64; 8] = [1, 7, 15, 59, 130, 600, 1500, 2900];

/// One random step: what happened since the last refresh, then the refresh time.
pub struct World {
    rng: Rng,
    start: DateTime<Utc>,
    now: DateTime<Utc>,
    millis: bool,
    identities: Vec<(String, &'static str)>,
    events: Vec<Ev>,
}

/// What one step did to the data.
pub struct Change {
    pub inserted: Vec<Ev>,
    pub deleted: Option<String>,
}

impl World {
    fn new(seed: u64, millis: bool) -> Self {
        let mut rng = Rng(seed);
        let start = ts("2026-06-01T00:00:00Z") + TimeDelta::minutes(rng.below(180) as i64);
        let now = start + TimeDelta::minutes(10 + rng.below(120) as i64);
        Self {
            rng,
            start,
            now,
            millis,
            identities: Vec::new(),
            events: Vec::new(),
        }
    }

    fn event(&mut self, who: &str, variant: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Ev {
        let mut e = exposure(who, variant, "2026-06-01T00:00:00Z");
        e.at = self.rng.time(from, to, self.millis);
        e
    }

    /// Events of the next step (between the previous `now` and the next), then advances `now`.
    fn step(&mut self, allow_delete: bool) -> Change {
        let before = self.now;
        let minutes = *self.rng.pick(&STEPS_MINUTES);
        self.now =
            before + TimeDelta::minutes(minutes) + TimeDelta::seconds(self.rng.below(60) as i64);
        let mut inserted = Vec::new();
        for _ in 0..1 + self.rng.below(setting("EXPOSURES_PROPERTY_EVENTS", 6)) {
            let (from, to) = (before, self.now);
            let kind = self.rng.below(10);
            let e = match kind {
                // new identity
                0..=2 => {
                    let who = format!("id{}", self.identities.len());
                    let variant = *self.rng.pick(&VARIANTS);
                    self.identities.push((who.clone(), variant));
                    self.event(&who, variant, from, to)
                }
                // returning, same variant
                3 | 4 if !self.identities.is_empty() => {
                    let (who, variant) = self.rng.pick(&self.identities).clone();
                    self.event(&who, variant, from, to)
                }
                // switching variant
                5 if !self.identities.is_empty() => {
                    let (who, _) = self.rng.pick(&self.identities).clone();
                    let variant = *self.rng.pick(&VARIANTS);
                    self.event(&who, variant, from, to)
                }
                // late: before the previous refresh (sometimes before the start)
                6 if !self.identities.is_empty() => {
                    let (who, variant) = self.rng.pick(&self.identities).clone();
                    let from = self.start - TimeDelta::minutes(30);
                    self.event(&who, variant, from, before)
                }
                // not due yet
                7 if !self.identities.is_empty() => {
                    let (who, variant) = self.rng.pick(&self.identities).clone();
                    let to = self.now + TimeDelta::hours(3);
                    self.event(&who, variant, self.now, to)
                }
                // anonymous
                _ => {
                    let variant = *self.rng.pick(&VARIANTS);
                    self.event("", variant, from, to)
                }
            };
            inserted.push(e);
        }
        self.events.extend(inserted.iter().cloned());
        let deleted = (allow_delete && !self.identities.is_empty() && self.rng.below(12) == 0)
            .then(|| self.rng.pick(&self.identities).0.clone());
        if let Some(who) = &deleted {
            self.events.retain(|e| &e.identifier != who);
        }
        Change { inserted, deleted }
    }
}

/// Modes of the refreshes of a run, by name (`incremental`, `full:<reason>`).
pub type Modes = std::collections::BTreeMap<String, u64>;

/// One case: `steps` random steps, each applied to the data by `apply`, then a
/// refresh of a new experiment in `env` with `app` that must store exactly what
/// a full computation over the same window and data gives.
pub async fn run_case(
    case_seed: u64,
    steps: u64,
    env: &TestEnv,
    app: &App,
    modes: &mut Modes,
    apply: impl AsyncFn(&Change),
) -> World {
    let mut world = World::new(case_seed, false);
    let id = env
        .experiment(Some(&exposures::rfc3339::format(&world.start)), None)
        .await;
    for step in 0..steps {
        // A deletion makes every later refresh of the case full: delete near the end.
        let change = world.step(step + 3 >= steps);
        apply(&change).await;
        env.set_now(world.now);
        let (payload, as_of, mode) = refresh(app, id).await;
        let expected = full_payload(app, id, as_of).await;
        assert_eq!(
            payload, expected,
            "EXPOSURES_PROPERTY_SEED={case_seed} (one case) step {step}, {mode:?}"
        );
        let name = match mode {
            Mode::Incremental => "incremental".to_owned(),
            Mode::Full(reason) => format!("full:{}", reason.as_str()),
        };
        *modes.entry(name).or_default() += 1;
    }
    world
}

#[tokio::test]
async fn incremental_equals_full_after_every_step_on_the_server() {
    let seed = seed();
    let cases = setting("EXPOSURES_PROPERTY_CASES", 6);
    let steps = 16;
    let mut modes = Modes::new();
    let (mut largest, mut longest) = ((0usize, 0usize), TimeDelta::zero());
    for case in 0..cases {
        let env = TestEnv::new().await;
        let world = run_case(
            seed.wrapping_add(case),
            steps,
            &env,
            &env.app,
            &mut modes,
            async |change: &Change| {
                env.insert(&change.inserted).await;
                if let Some(who) = &change.deleted {
                    env.clickhouse
                        .query("ALTER TABLE events DELETE WHERE identifier = ?")
                        .bind(who)
                        .execute()
                        .await
                        .expect("delete");
                    wait_for_mutations(&env.clickhouse).await;
                }
            },
        )
        .await;
        largest = largest.max((world.events.len(), world.identities.len()));
        longest = longest.max(world.now - world.start);
    }
    eprintln!(
        "property test (server): {cases} cases x {steps} steps (EXPOSURES_PROPERTY_SEED={seed}), modes {modes:?}, \
         largest case {} events, {} identities, longest window {} h",
        largest.0,
        largest.1,
        longest.num_hours()
    );
    assert!(
        modes.get("incremental").copied().unwrap_or(0) > 0,
        "no step was incremental: {modes:?}"
    );
}

#[test]
fn incremental_query_equals_full_query_on_the_current_engine() {
    let seed = seed();
    let cases = setting("EXPOSURES_PROPERTY_CASES", 6);
    let steps = 12;
    let warehouse = Warehouse::new(&Config::from_lookup(|_| None).unwrap()).unwrap();
    let sharded = Plan::Sharded {
        database: "job".into(),
        table: "events".into(),
    };
    let client = clickhouse::Client::default();
    let target = Target {
        environment_key: "prod",
        feature_name: "checkout",
    };
    // Per case: the data and window after each step.
    let mut jobs = Vec::new();
    let mut plan = Vec::new();
    for case in 0..cases {
        let mut world = World::new(seed.wrapping_add(case), true);
        let mut windows = Vec::new();
        for step in 0..=steps {
            if step > 0 {
                // Deletions are rows gone from the data: the fingerprint must notice.
                world.step(true);
            }
            let window = Window::new(world.start, None, world.now);
            let mut setup = vec![REFERENCE_DDL.to_owned()];
            if !world.events.is_empty() {
                setup.push(insert_sql(&client, "events", &world.events, true));
            }
            let name = format!("{case}/{step}");
            // Both plans' SQL: the sharded one with the table as its own only shard
            // (chDB is one process; the cluster tests run it on real shards).
            for (plan, suffix) in [(&Plan::Exact, ""), (&sharded, "/sharded")] {
                let full =
                    warehouse.exposures_query_for(plan, TimestampKind::DateTime64, target, &window);
                jobs.push(json!({"name": format!("{name}/full{suffix}"), "session_timezone": "Asia/Kolkata",
                                 "setup": setup, "query": full.sql_display().to_string()}));
                if let Some(previous) = windows.last() {
                    let previous: &Window = previous;
                    let inc = warehouse.incremental_query_for(
                        plan,
                        TimestampKind::DateTime64,
                        target,
                        &window,
                        previous.end,
                    );
                    jobs.push(json!({"name": format!("{name}/incremental{suffix}"), "session_timezone": "America/New_York",
                                     "setup": setup, "query": inc.sql_display().to_string()}));
                }
            }
            windows.push(window);
        }
        plan.push(windows);
    }
    let results = run_chdb(json!({ "jobs": jobs }));
    let full = |name: String, window: &Window| {
        let rows: Vec<BucketRow> = serde_json::from_value(results[&name].clone()).expect(&name);
        let fingerprint = warehouse::fingerprint(&rows);
        let counts = warehouse::counts(rows).expect("named");
        (Payload::build(window.granularity, counts), fingerprint)
    };
    let (mut applied, mut changed) = (0, 0);
    for (case, windows) in plan.iter().enumerate() {
        for step in 1..windows.len() {
            let (stored, stored_fingerprint) =
                full(format!("{case}/{}/full", step - 1), &windows[step - 1]);
            let (expected, expected_fingerprint) =
                full(format!("{case}/{step}/full"), &windows[step]);
            let context = format!("EXPOSURES_PROPERTY_SEED={seed} case {case} step {step}");
            assert_eq!(
                full(format!("{case}/{step}/full/sharded"), &windows[step]),
                (expected.clone(), expected_fingerprint),
                "{context}: the sharded plan's full query"
            );
            let read = |name: String| {
                let rows: Vec<TransitionRow> =
                    serde_json::from_value(results[&name].clone()).expect(&name);
                warehouse::delta(rows)
            };
            let mut delta = read(format!("{case}/{step}/incremental"));
            let mut sharded = read(format!("{case}/{step}/incremental/sharded"));
            // Transitions come in no particular order.
            for d in [&mut delta, &mut sharded] {
                d.transitions.sort_by_key(|t| format!("{t:?}"));
            }
            assert_eq!(
                sharded, delta,
                "{context}: the sharded plan's incremental query"
            );
            assert_eq!(delta.window, expected_fingerprint, "{context}");
            assert!(
                delta.complete,
                "{context}: static data, the IN set saw every row"
            );
            assert!(
                delta.keys_distinct,
                "{context}: no two identities share a key"
            );
            if delta.before != stored_fingerprint {
                // The earlier window changed (late or deleted rows): the refresh goes full.
                changed += 1;
                continue;
            }
            let next = stored
                .apply(windows[step].granularity, &delta.transitions)
                .unwrap_or_else(|e| panic!("{context}: {e}"));
            assert_eq!(next, expected, "{context}");
            applied += 1;
        }
    }
    eprintln!(
        "property test (chDB): {cases} cases x {steps} steps: {applied} incremental results equal the full ones, \
         {changed} steps saw the earlier window change"
    );
    assert!(applied > 0);
}
