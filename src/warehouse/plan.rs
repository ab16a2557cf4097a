//! Which plan a refresh runs (SPEC 3.9): read once per container from the
//! events table's engine.
//!
//! On a `Distributed` table sharded by a deterministic function of
//! `identifier` alone, every identity's rows live on one shard, so each shard
//! does the per-identity work on its local table and sends only
//! per-(quarantined, bucket, variant) rows; the server the function talks to
//! adds them up. Anything else (another sharding key, a table that is not
//! `Distributed`, an engine text this cannot read) gets the plan that is exact
//! whatever the sharding: per-identity states merged on that server.

use clickhouse::query::Query;
use clickhouse::sql::Identifier;

use super::error::WarehouseError;
use super::Warehouse;

/// How the per-identity work is distributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Per-identity states merged where the query is sent: exact for any table.
    Exact,
    /// Per-identity work on each shard's local table (`database`.`table`).
    Sharded {
        /// The local table's database, as the `Distributed` engine names it.
        database: String,
        /// The local table.
        table: String,
    },
}

impl Plan {
    /// The name in the `refreshed` log.
    pub fn as_str(&self) -> &'static str {
        match self {
            Plan::Exact => "exact",
            Plan::Sharded { .. } => "sharded",
        }
    }

    /// The plan for a table of `engine` whose full engine text is `engine_full`
    /// (`system.tables`), `current` being the database the function queries.
    pub fn for_engine(engine: &str, engine_full: &str, current: &str) -> Plan {
        if engine != "Distributed" {
            return Plan::Exact;
        }
        let Some(args) = engine_full
            .trim()
            .strip_prefix("Distributed(")
            .and_then(|rest| rest.rfind(')').map(|end| &rest[..end]))
        else {
            return Plan::Exact;
        };
        let args = split_arguments(args);
        let [_cluster, database, table, key, ..] = args.as_slice() else {
            return Plan::Exact;
        };
        let (Some(database), Some(table)) = (name(database), name(table)) else {
            return Plan::Exact;
        };
        if !is_identity_key(key) {
            return Plan::Exact;
        }
        Plan::Sharded {
            // An empty database in the engine means the Distributed table's own.
            database: if database.is_empty() {
                current.to_owned()
            } else {
                database
            },
            table,
        }
    }
}

/// The sharded plan's wrapper: each shard runs `{per_shard}` on its local
/// table and sends its few rows; this server adds them up. The `Distributed`
/// table on the left is what sends the query to every shard; `PREWHERE 0`
/// reads none of its rows, and the `RIGHT JOIN` keeps every shard's rows
/// (README "Running on a cluster").
const SHARDED_SQL: &str = "\
    SELECT {keys}, {sums}
    FROM ? ALL RIGHT JOIN ({per_shard}) AS shard USING identifier
    PREWHERE 0
    GROUP BY {keys}";

impl Plan {
    /// The text a query sends: `per_shard` itself under the exact plan; under
    /// the sharded plan, wrapped so that every shard runs it and this server
    /// adds up its `summed` columns per `keys` (`per_shard` then selects `''
    /// AS identifier`). [`Warehouse::bind_wrapper`] binds what the wrapper adds.
    pub(super) fn wrap(&self, per_shard: &str, keys: &[&str], summed: &[&str]) -> String {
        match self {
            Plan::Exact => per_shard.to_owned(),
            Plan::Sharded { .. } => {
                let sums: Vec<String> = summed
                    .iter()
                    .map(|c| format!("toUInt64(sum({c})) AS {c}"))
                    .collect();
                SHARDED_SQL
                    .replace("{per_shard}", per_shard)
                    .replace("{keys}", &keys.join(", "))
                    .replace("{sums}", &sums.join(", "))
            }
        }
    }
}

/// How a query names the table it counts in: the events table (`?`), or under
/// the sharded plan each shard's local table (`?.?`, module `sql`).
pub(super) fn counted(plan: &Plan) -> &'static str {
    match plan {
        Plan::Exact => "?",
        Plan::Sharded { .. } => "?.?",
    }
}

impl Warehouse {
    /// The plan refreshes run, once it was read (`exact` before).
    pub fn plan_name(&self) -> &'static str {
        self.plan.get().map_or("exact", Plan::as_str)
    }

    /// Binds the `Distributed` table [`Plan::wrap`] reads under the sharded plan.
    pub(super) fn bind_wrapper(&self, query: Query, plan: &Plan) -> Query {
        match plan {
            Plan::Exact => query,
            Plan::Sharded { .. } => query.bind(Identifier(&self.table)),
        }
    }

    /// Binds the table `counted` names.
    pub(super) fn bind_counted(&self, query: Query, plan: &Plan) -> Query {
        match plan {
            Plan::Exact => query.bind(Identifier(&self.table)),
            Plan::Sharded { database, table } => {
                query.bind(Identifier(database)).bind(Identifier(table))
            }
        }
    }

    /// Looked up once per container: a table's engine does not change under a
    /// running function (a redeploy or cold start reads it again).
    pub(super) async fn plan(&self) -> Result<&Plan, WarehouseError> {
        self.plan
            .get_or_try_init(|| async {
                let found = self
                    .with_timeout(
                        self.client
                            .query(
                                "SELECT engine, engine_full, currentDatabase() FROM system.tables \
                                 WHERE database = currentDatabase() AND name = ?",
                            )
                            .bind(&self.table)
                            .fetch_optional::<(String, String, String)>(),
                    )
                    .await?;
                let plan = found.map_or(Plan::Exact, |(engine, full, current)| {
                    Plan::for_engine(&engine, &full, &current)
                });
                tracing::info!(table = %self.table, plan = plan.as_str(), "warehouse plan");
                Ok(plan)
            })
            .await
    }
}

/// Hash and arithmetic functions that give the same result for the same
/// argument on every server: a key built from them and `identifier` alone
/// sends each identity to one shard. `rand()` and friends are not here.
const DETERMINISTIC: &[&str] = &[
    "sipHash64",
    "sipHash128",
    "cityHash64",
    "farmHash64",
    "farmFingerprint64",
    "metroHash64",
    "murmurHash2_32",
    "murmurHash2_64",
    "murmurHash3_32",
    "murmurHash3_64",
    "xxHash32",
    "xxHash64",
    "xxh3",
    "javaHash",
    "hiveHash",
    "halfMD5",
    "intHash32",
    "intHash64",
    "crc32",
    "CRC32",
    "jumpConsistentHash",
    "toUInt32",
    "toUInt64",
    "toInt64",
    "modulo",
    "lower",
    "upper",
];

/// True when `key` is an expression of `identifier`, constants and [`DETERMINISTIC`] functions.
fn is_identity_key(key: &str) -> bool {
    let mut words = Vec::new();
    let mut word = String::new();
    for c in key.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
        // Quoted names or strings could hide anything: not understood, not fast.
        if !(c.is_whitespace() || "(),+-*%".contains(c)) {
            return false;
        }
    }
    let identifier = words.iter().any(|w| w == "identifier");
    identifier
        && words.iter().all(|w| {
            w == "identifier"
                || w.chars().all(|c| c.is_ascii_digit())
                || DETERMINISTIC.contains(&w.as_str())
        })
}

/// The engine's arguments, split on the commas outside parentheses and quotes.
fn split_arguments(args: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let (mut depth, mut quote) = (0_i32, None::<char>);
    for c in args.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '`' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out.into_iter().map(|a| a.trim().to_owned()).collect()
}

/// A database or table argument: a bare or quoted name (no expression).
fn name(arg: &str) -> Option<String> {
    let unquoted = ['\'', '`', '"']
        .iter()
        .find_map(|q| arg.strip_prefix(*q).and_then(|a| a.strip_suffix(*q)))
        .unwrap_or(arg);
    unquoted
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then(|| unquoted.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(engine_full: &str) -> Plan {
        Plan::for_engine("Distributed", engine_full, "app")
    }

    fn sharded(database: &str, table: &str) -> Plan {
        Plan::Sharded {
            database: database.into(),
            table: table.into(),
        }
    }

    #[test]
    fn identity_keys_get_the_sharded_plan() {
        assert_eq!(
            plan("Distributed(exposures_cluster, research, events_local, sipHash64(identifier))"),
            sharded("research", "events_local")
        );
        assert_eq!(
            plan("Distributed('c', 'db', 'local', cityHash64(identifier) % 16, 'policy')"),
            sharded("db", "local")
        );
        assert_eq!(
            plan("Distributed(c, '', local, xxHash64(lower(identifier)))"),
            sharded("app", "local")
        );
    }

    #[test]
    fn any_other_key_or_engine_gets_the_exact_plan() {
        for engine_full in [
            "Distributed(c, db, local, rand())",
            "Distributed(c, db, local)",
            "Distributed(c, db, local, sipHash64(identifier, value))",
            "Distributed(c, db, local, sipHash64(identifier) + toUInt64(timestamp))",
            "Distributed(c, db, local, sipHash64(concat(identifier, 'x')))",
            "Distributed(c, currentDatabase(), local, sipHash64(identifier))",
            "Distributed(c, db",
            "",
        ] {
            assert_eq!(plan(engine_full), Plan::Exact, "{engine_full}");
        }
        assert_eq!(
            Plan::for_engine("MergeTree", "MergeTree ORDER BY identifier", "app"),
            Plan::Exact
        );
        assert_eq!(
            Plan::for_engine(
                "ReplicatedMergeTree",
                "Distributed(c, db, local, sipHash64(identifier))",
                "app"
            ),
            Plan::Exact
        );
    }
}
