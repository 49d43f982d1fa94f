//! SQL for the encrypted secret store.
