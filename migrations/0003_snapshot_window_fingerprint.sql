-- What an incremental refresh must know about the stored snapshot's window
-- (README "Incremental refresh"): where it started and what it held when counted.
-- NULL on snapshots stored before this migration: their next refresh is full.
ALTER TABLE experiment_exposures
    ADD COLUMN IF NOT EXISTS window_start    timestamptz NULL,
    ADD COLUMN IF NOT EXISTS window_rows     bigint      NULL,
    ADD COLUMN IF NOT EXISTS window_checksum bigint      NULL;
