-- 0001: the append-only, hash-chained audit log and the signatures over its head.
CREATE TABLE audit_events (
    seq        INTEGER PRIMARY KEY,          -- 1, 2, 3 ... with no gaps
    ts         TEXT    NOT NULL,             -- RFC 3339 UTC, fixed width, microseconds
    actor      TEXT    NOT NULL,             -- who: client:name/version, user:name@host, agent:id
    action     TEXT    NOT NULL,             -- what: tool.call, audit.sign, ...
    subject    TEXT    NOT NULL,             -- on what: a tool name, an approval id, ...
    outcome    TEXT    NOT NULL,             -- ok | error | denied | ...
    detail     TEXT    NOT NULL,             -- redacted JSON object, stored exactly as hashed
    prev_hash  TEXT    NOT NULL,             -- hex SHA-256 of the previous event (64 zeros for the first)
    -- Deliberately not UNIQUE or indexed: the chain already links every hash, and an index on
    -- random keys makes each append rewrite a random page (5x slower at a million events).
    hash       TEXT    NOT NULL              -- hex SHA-256 of this event's canonical form
);
CREATE INDEX audit_events_ts      ON audit_events (ts);
CREATE INDEX audit_events_action  ON audit_events (action, seq);
CREATE INDEX audit_events_subject ON audit_events (subject, seq);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused');
END;

-- An Ed25519 signature over the chain head (seq, hash) by the coordinator's key.
CREATE TABLE audit_signatures (
    seq         INTEGER PRIMARY KEY,         -- the event whose hash was signed
    hash        TEXT    NOT NULL,            -- that event's hash at signing time
    public_key  TEXT    NOT NULL,            -- hex Ed25519 verifying key
    signature   TEXT    NOT NULL,            -- hex signature over the head message
    signed_at   TEXT    NOT NULL
);
CREATE TRIGGER audit_signatures_no_update BEFORE UPDATE ON audit_signatures
BEGIN
    SELECT RAISE(ABORT, 'audit_signatures is append-only: UPDATE refused');
END;
CREATE TRIGGER audit_signatures_no_delete BEFORE DELETE ON audit_signatures
BEGIN
    SELECT RAISE(ABORT, 'audit_signatures is append-only: DELETE refused');
END;
