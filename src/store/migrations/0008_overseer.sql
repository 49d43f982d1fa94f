-- 0008: the overseer credential and the lock on wrong answers.
-- They live in the database, not in the data directory: approvals live here, and `--db` can
-- point any data directory (an empty one, say) at this file. A credential kept beside the
-- signing key would be skipped by `--data-dir /tmp/empty --db <this file>`.
--
-- Every set, change and reset adds a row; the newest row is the credential in force. Rows are
-- never rewritten or deleted (a process that writes the file directly can still drop these
-- triggers; the audit chain records every legitimate change, so that shows).
CREATE TABLE overseer_credentials (
    seq         INTEGER PRIMARY KEY CHECK (seq >= 1),
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    passphrase  TEXT NOT NULL CHECK (passphrase LIKE '$argon2id$%'),  -- PHC string
    recovery    TEXT NOT NULL CHECK (recovery LIKE '$argon2id$%'),    -- PHC string of the recovery code
    event       TEXT NOT NULL CHECK (event IN ('init', 'change', 'reset')),
    set_at      TEXT NOT NULL,
    set_by      TEXT NOT NULL                                         -- user:OS@HOST
);
CREATE TRIGGER overseer_credentials_fixed BEFORE UPDATE ON overseer_credentials
BEGIN
    SELECT RAISE(ABORT, 'overseer credentials are never rewritten: a change adds a row');
END;
CREATE TRIGGER overseer_credentials_no_delete BEFORE DELETE ON overseer_credentials
BEGIN
    SELECT RAISE(ABORT, 'overseer credentials are never deleted');
END;

-- One row: wrong answers in a row, and until when passphrase checks are refused. Here rather
-- than in a process, so the lock holds across every CLI process on this database.
CREATE TABLE overseer_lock (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    failures      INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    locked_until  TEXT                                  -- RFC 3339 UTC, or NULL
);
INSERT INTO overseer_lock (id, failures) VALUES (1, 0);
CREATE TRIGGER overseer_lock_no_delete BEFORE DELETE ON overseer_lock
BEGIN
    SELECT RAISE(ABORT, 'the overseer lock is never deleted');
END;
