-- 0002: approvals, their final decisions, and the one-time handles of MRTR questions.
CREATE TABLE approvals (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('remediation', 'instance_tool_call', 'pipeline_stage', 'generic')),
    subject_id    TEXT NOT NULL,
    summary       TEXT NOT NULL,
    action        TEXT NOT NULL,          -- canonical JSON of exactly what is authorised
    action_hash   TEXT NOT NULL,          -- hex SHA-256 of `action`
    risk          TEXT NOT NULL CHECK (risk IN ('low', 'medium', 'high', 'critical')),
    preview       TEXT,                   -- what will change, for the person deciding
    requested_by  TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    decide_with   TEXT NOT NULL CHECK (decide_with IN ('elicitation', 'out_of_band')),
    state         TEXT NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'approved', 'rejected', 'expired', 'cancelled')),
    decided_by    TEXT,
    decided_via   TEXT CHECK (decided_via IN ('elicitation_form', 'cli', 'expiry')),
    decided_at    TEXT,
    reason        TEXT,
    cause         TEXT,
    executed_at   TEXT,                   -- set once, when the authorised action runs
    CHECK ((state = 'pending') = (decided_at IS NULL)),
    CHECK (executed_at IS NULL OR state = 'approved')
);
CREATE INDEX approvals_state   ON approvals (state, created_at);
CREATE INDEX approvals_created ON approvals (created_at, id);
CREATE INDEX approvals_hash    ON approvals (action_hash);

-- Decisions are final, and an approved action executes at most once.
CREATE TRIGGER approvals_decisions_final
BEFORE UPDATE OF state, decided_by, decided_via, decided_at, reason, cause ON approvals
WHEN OLD.state <> 'pending'
BEGIN
    SELECT RAISE(ABORT, 'approval decisions are final');
END;
CREATE TRIGGER approvals_execute_once
BEFORE UPDATE OF executed_at ON approvals
WHEN OLD.executed_at IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'an approved action executes at most once');
END;
CREATE TRIGGER approvals_action_fixed
BEFORE UPDATE OF kind, subject_id, summary, action, action_hash, risk, requested_by, created_at, decide_with ON approvals
BEGIN
    SELECT RAISE(ABORT, 'what an approval authorises cannot change');
END;
CREATE TRIGGER approvals_no_delete BEFORE DELETE ON approvals
BEGIN
    SELECT RAISE(ABORT, 'approvals are never deleted');
END;

-- One row per question asked through an MRTR input-required result. The sealed requestState
-- names the nonce; redeeming it twice is a replay.
CREATE TABLE approval_questions (
    nonce        TEXT PRIMARY KEY,
    approval_id  TEXT NOT NULL REFERENCES approvals (id),
    asked_at     TEXT NOT NULL,
    redeemed_at  TEXT
);
