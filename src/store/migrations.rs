//! The schema this function owns, applied by `{"action": "migrate"}`.

use deadpool_postgres::Object;

use super::{DbError, Store};

/// The migrations, in order; applied by `{"action": "migrate"}`.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_create_experiments",
        include_str!("../../migrations/0001_create_experiments.sql"),
    ),
    (
        "0002_create_experiment_exposures",
        include_str!("../../migrations/0002_create_experiment_exposures.sql"),
    ),
    (
        "0003_snapshot_window_fingerprint",
        include_str!("../../migrations/0003_snapshot_window_fingerprint.sql"),
    ),
];

impl Store {
    /// Applies the migrations not yet applied, in one transaction under an
    /// advisory lock, so concurrent `migrate` invocations queue up and a failed
    /// one leaves nothing half done. Returns the names it applied.
    pub async fn migrate(&self) -> Result<Vec<&'static str>, DbError> {
        // Safe to repeat: a transaction whose commit was lost finds its work done.
        self.retry_once(Self::migrate_on).await
    }

    async fn migrate_on(mut client: Object) -> Result<Vec<&'static str>, DbError> {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock(7215804162)", &[])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS exposures_schema_migrations (
                 name text PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let mut applied = Vec::new();
        for (name, sql) in MIGRATIONS {
            let done = tx
                .query_opt(
                    "SELECT 1 FROM exposures_schema_migrations WHERE name = $1",
                    &[name],
                )
                .await?
                .is_some();
            if !done {
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO exposures_schema_migrations (name) VALUES ($1)",
                    &[name],
                )
                .await?;
                applied.push(*name);
            }
        }
        tx.commit().await?;
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_ordered_and_unique() {
        let names: Vec<_> = MIGRATIONS.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted);
    }
}
