//! What a stored window held, to prove it unchanged.

/// What a snapshot's window held when it was computed: its rows and a wrapping
/// sum of their timestamps (Unix seconds, or milliseconds on `DateTime64`).
/// Computed by the same read as the payload, so it describes exactly the data the
/// payload counts; a later read of the same window that finds other numbers
/// proves the window changed (a late insert, a deletion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint {
    /// Non-anonymous exposure rows of the experiment in the window.
    pub rows: u64,
    /// Wrapping sum of their timestamps.
    pub checksum: u64,
}

impl Fingerprint {
    pub fn add(self, rows: u64, checksum: u64) -> Self {
        Self {
            rows: self.rows.wrapping_add(rows),
            checksum: self.checksum.wrapping_add(checksum),
        }
    }
}
