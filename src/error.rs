//! The one error type of the function, mapped once to API statuses and to
//! Lambda invocation errors.

use lambda_runtime::Diagnostic;

use crate::intake::IntakeError;
use crate::store::DbError;
use crate::warehouse::WarehouseError;

/// Everything that can stop an invocation from doing what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input was malformed (bad JSON shape, bad id).
    #[error(transparent)]
    BadInput(#[from] IntakeError),
    /// No experiment with this id in the experiments relation.
    #[error("experiment {0} does not exist")]
    UnknownExperiment(i64),
    /// No route matches the request path.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// The route exists but not for this method.
    #[error("method {method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The methods the route answers.
        allow: &'static str,
    },
    /// The caller may not see this experiment.
    #[error("not allowed to access experiment {0}")]
    Forbidden(i64),
    /// An API refresh of an experiment that has not started.
    #[error("experiment {0} has not started; there is nothing to refresh")]
    NotStarted(i64),
    /// An API refresh of an experiment whose snapshot is final.
    #[error("experiment {0} has a final snapshot; it is never recomputed")]
    Final(i64),
    /// An API refresh sooner than the minimum interval after the last accepted one.
    #[error("experiment {experiment_id} was refreshed on request less than {interval_seconds} s ago; retry in {retry_after} s")]
    Throttled {
        /// The experiment.
        experiment_id: i64,
        /// The configured minimum interval.
        interval_seconds: u64,
        /// Whole seconds until a refresh will be accepted, rounded up.
        retry_after: u64,
    },
    /// ClickHouse failed or timed out; the failure has been stamped.
    #[error("refresh of experiment {experiment_id} failed: {source}")]
    Warehouse {
        /// The experiment.
        experiment_id: i64,
        /// What ClickHouse said.
        #[source]
        source: WarehouseError,
    },
    /// PostgreSQL could not be used.
    #[error("PostgreSQL unavailable: {0}")]
    Database(#[from] DbError),
}

impl Error {
    /// The `error` code of API bodies and the `errorType` of failed invocations.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadInput(_) => "bad_request",
            Error::UnknownExperiment(_) | Error::RouteNotFound(_) => "not_found",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::Forbidden(_) => "forbidden",
            Error::NotStarted(_) => "not_started",
            Error::Final(_) => "final",
            Error::Throttled { .. } => "throttled",
            Error::Warehouse { .. } => "warehouse_error",
            Error::Database(_) => "database_unavailable",
        }
    }

    /// The HTTP status of the API answer.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadInput(_) => 400,
            Error::Forbidden(_) => 403,
            Error::UnknownExperiment(_) | Error::RouteNotFound(_) => 404,
            Error::MethodNotAllowed { .. } => 405,
            Error::NotStarted(_) | Error::Final(_) => 409,
            Error::Throttled { .. } => 429,
            Error::Warehouse { .. } => 502,
            Error::Database(_) => 503,
        }
    }
}

impl From<Error> for Diagnostic {
    fn from(error: Error) -> Self {
        Diagnostic {
            error_type: error.code().to_owned(),
            error_message: error.to_string(),
        }
    }
}
