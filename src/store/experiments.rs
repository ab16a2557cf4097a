//! Reading the experiments relation (read only, SPEC 2.2).

use serde_json::Value;
use tokio_postgres::Row;

use super::{snapshots, DbError, Store};
use crate::domain::experiment::Experiment;
use crate::domain::health::Weights;
use crate::domain::snapshot::StoredSnapshot;

impl Store {
    /// The experiment and its stored snapshot, in one round trip.
    pub async fn load(
        &self,
        id: i64,
    ) -> Result<Option<(Experiment, Option<StoredSnapshot>)>, DbError> {
        let sql = self.select("e.id = $1::bigint");
        let sql = &sql;
        let found = self
            .retry_once(|client| async move { Ok(client.query_opt(sql, &[&id]).await?) })
            .await?;
        found.map(|row| self.decode(id, &row)).transpose()
    }

    /// Every `running` experiment with its stored snapshot, for the sweep's
    /// metrics. A row that cannot be used is logged and left out.
    pub async fn running_experiments(
        &self,
    ) -> Result<Vec<(Experiment, Option<StoredSnapshot>)>, DbError> {
        let sql = self.select("e.id IS NOT NULL AND e.status::text = 'running' ORDER BY e.id");
        let sql = &sql;
        let rows = self
            .retry_once(|client| async move { Ok(client.query(sql, &[]).await?) })
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let id = row.try_get("id").unwrap_or_default();
                self.decode(id, row)
                    .inspect_err(|error| tracing::warn!(experiment_id = id, %error, "experiment left out of the sweep's metrics"))
                    .ok()
            })
            .collect())
    }

    /// The experiments and stored snapshots matching `filter`.
    fn select(&self, filter: &str) -> String {
        format!(
            "SELECT e.id::bigint AS id, e.environment_key::text AS environment_key,
                    e.feature_name::text AS feature_name, e.status::text AS status,
                    e.started_at, e.ended_at,
                    -- Through the row as JSON: a relation without the column gives NULL.
                    -- As text, so a number serde_json cannot hold (1e400) is malformed, not an error.
                    (to_jsonb(e) -> 'variant_weights')::text AS variant_weights,
                    x.experiment_id IS NOT NULL AS stored,
                    x.as_of, x.payload, x.last_error_at, x.refresh_requested_at, x.updated_at,
                    x.window_start, x.window_rows, x.window_checksum
             FROM {} e LEFT JOIN experiment_exposures x ON x.experiment_id = e.id
             WHERE {filter}",
            self.experiments
        )
    }

    /// One row of [`Store::select`].
    fn decode(&self, id: i64, row: &Row) -> Result<(Experiment, Option<StoredSnapshot>), DbError> {
        let column = |name: &str| DbError::BadRow {
            relation: self.experiments.clone(),
            reason: format!("experiment {id}: column {name} is NULL or of an unexpected type"),
        };
        let experiment = Experiment {
            id: row.try_get("id").map_err(|_| column("id"))?,
            environment_key: row
                .try_get("environment_key")
                .map_err(|_| column("environment_key"))?,
            feature_name: row
                .try_get("feature_name")
                .map_err(|_| column("feature_name"))?,
            status: row.try_get("status").map_err(|_| column("status"))?,
            started_at: row
                .try_get("started_at")
                .map_err(|_| column("started_at"))?,
            ended_at: row.try_get("ended_at").map_err(|_| column("ended_at"))?,
            variant_weights: self.variant_weights(id, row)?,
        };
        let stored = if row.try_get("stored")? {
            Some(snapshots::from_row(row)?)
        } else {
            None
        };
        Ok((experiment, stored))
    }

    /// `variant_weights` of a loaded row; a malformed value counts as none and is
    /// logged (once per load, so once per invocation and experiment).
    fn variant_weights(&self, id: i64, row: &Row) -> Result<Option<Weights>, DbError> {
        let text: Option<String> = row.try_get("variant_weights")?;
        let weights = match text.as_deref().map(serde_json::from_str::<Value>) {
            None => Ok(None),
            Some(Ok(value)) => Weights::from_json(Some(&value)),
            Some(Err(e)) => Err(format!("not readable as JSON here ({e})")),
        };
        Ok(weights.unwrap_or_else(|reason| {
            tracing::warn!(
                experiment_id = id,
                relation = %self.experiments,
                reason = %reason,
                "variant_weights ignored: not an object of non-negative numbers"
            );
            None
        }))
    }

    /// Ids of the experiments the sweep refreshes: started, `running`, `paused`
    /// or `completed`, and without a final snapshot (SPEC 5.4).
    pub async fn due_experiments(&self) -> Result<Vec<i64>, DbError> {
        let sql = format!(
            "SELECT e.id::bigint
             FROM {} e LEFT JOIN experiment_exposures x ON x.experiment_id = e.id
             WHERE e.id IS NOT NULL AND e.started_at IS NOT NULL
               AND e.status IN ('running', 'paused', 'completed')
               AND NOT (e.ended_at IS NOT NULL AND x.as_of IS NOT NULL AND x.as_of >= e.ended_at)
             ORDER BY e.id",
            self.experiments
        );
        let sql = &sql;
        let rows = self
            .retry_once(|client| async move { Ok(client.query(sql, &[]).await?) })
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }
}
