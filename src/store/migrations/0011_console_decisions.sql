-- 0011: a decision made in the oversight console is recorded as such (decided_via 'console').
-- SQLite cannot change a CHECK in place, so the table is rebuilt the documented way (new table,
-- copy, drop, rename) with its indexes and triggers. The questions that reference approvals are
-- set aside first and put back last: dropping a parent that still has children counts as a
-- foreign key violation, which renaming the new table into its place does not undo (and
-- `foreign_keys` cannot be switched off inside the migration's transaction).
CREATE TEMP TABLE approval_questions_0011 AS SELECT * FROM approval_questions;
DELETE FROM approval_questions;

CREATE TABLE approvals_0011 (
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
    decided_via   TEXT CHECK (decided_via IN ('elicitation_form', 'cli', 'console', 'expiry')),
    decided_at    TEXT,
    reason        TEXT,
    cause         TEXT,
    executed_at   TEXT,                   -- set once, when the authorised action runs
    CHECK ((state = 'pending') = (decided_at IS NULL)),
    CHECK (executed_at IS NULL OR state = 'approved')
);
INSERT INTO approvals_0011 SELECT * FROM approvals;
DROP TABLE approvals;
ALTER TABLE approvals_0011 RENAME TO approvals;

CREATE INDEX approvals_state   ON approvals (state, created_at);
CREATE INDEX approvals_created ON approvals (created_at, id);
CREATE INDEX approvals_hash    ON approvals (action_hash);

-- Decisions are final, and an approved action executes at most once (as in 0002).
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

INSERT INTO approval_questions SELECT * FROM temp.approval_questions_0011;
DROP TABLE temp.approval_questions_0011;
