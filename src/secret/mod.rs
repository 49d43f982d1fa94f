//! The encrypted secret store (AES-256-GCM): filled in by the secret-store work.
