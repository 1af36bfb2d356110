//! An in-memory stand-in for the Kubernetes API, for reconcile tests that need
//! no cluster (placeholder: filled in by the reconcile tests' author).
