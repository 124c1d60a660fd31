//! The record store's tests: the cases every backend must pass
//! (`cases.rs`) on a real SQLite file and on the real PostgreSQL, and each
//! backend's own (reopening, schema upgrades, several nodes at once).

mod postgres;
mod sqlite;
