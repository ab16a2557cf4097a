-- Exposure snapshots (SPEC 2.3): one row per experiment, updated in place.
-- No foreign key: the experiments relation may be a view of another product's tables.
CREATE TABLE IF NOT EXISTS experiment_exposures (
    experiment_id        bigint      PRIMARY KEY,
    as_of                timestamptz NULL,
    payload              jsonb       NULL,
    last_error_at        timestamptz NULL,
    refresh_requested_at timestamptz NULL,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
