-- 0005: the encrypted secret store. Each value is AES-256-GCM ciphertext (with its 16-byte tag)
-- under the master key, with a random 96-bit nonce per value and the name as associated data,
-- so a row cannot be moved to another name. key_fingerprint names the master key a row was
-- stored under (16 hex of a domain-separated SHA-256 of the key), so a wrong key is reported as
-- such. No part of a value is ever stored in clear. Times are RFC 3339 UTC text.
CREATE TABLE secrets (
    name            TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 128),
    nonce           BLOB NOT NULL CHECK (length(nonce) = 12),
    ciphertext      BLOB NOT NULL CHECK (length(ciphertext) >= 16),
    key_fingerprint TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX secrets_key_fingerprint ON secrets (key_fingerprint);
