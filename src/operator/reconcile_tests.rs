//! Reconcile against the in-memory API (`fake_api`).
