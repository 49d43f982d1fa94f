-- 0010: fewer index pages per task step and per audit event. Each index a transaction changes
-- costs at least one 4 KB WAL frame (and one more copy at the next checkpoint), and a step
-- that moves an entry from one part of an index to another costs two. Measured with the
-- benchmark's "WAL per task": 29.5 frames before, 18.1 after.

-- tasks is rebuilt because its UNIQUE idempotency_key kept an index entry for every task,
-- keys or not (NULLs are indexed too): now only tasks with a key have one. The columns are
-- those of 0003, in the same order.
CREATE TABLE tasks_new (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    params           TEXT NOT NULL,             -- JSON
    capabilities     TEXT NOT NULL,             -- JSON array the claiming agent must all have
    target_agent_id  TEXT REFERENCES agents (id),
    priority         INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 3),  -- 3 urgent .. 0 low
    status           TEXT NOT NULL CHECK (status IN
                     ('queued', 'leased', 'running', 'completed', 'failed', 'timed_out', 'cancelled', 'dead')),
    timeout_ms       INTEGER NOT NULL,
    max_retries      INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    idempotency_key  TEXT,                      -- unique among tasks that have one (index below)
    not_before_ms    INTEGER NOT NULL,          -- not claimable before (not_before, or backoff)
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    submitted_by     TEXT NOT NULL,
    leased_by        TEXT,                      -- the current leaseholder, while leased or running
    lease_expires_ms INTEGER,
    last_agent_id    TEXT,                      -- the agent that last held the lease (kept after)
    progress         REAL,
    message          TEXT,
    result           TEXT,                      -- JSON
    last_error       TEXT,
    finished_ms      INTEGER,
    CHECK ((status IN ('leased', 'running')) = (leased_by IS NOT NULL))
);
INSERT INTO tasks_new SELECT * FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_new RENAME TO tasks;
CREATE UNIQUE INDEX tasks_idempotency ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The claim path: queued tasks in dispatch order, and those aimed at one agent.
CREATE INDEX tasks_queue  ON tasks (priority DESC, created_ms, id) WHERE status = 'queued';
CREATE INDEX tasks_target ON tasks (target_agent_id, priority DESC, created_ms) WHERE status = 'queued' AND target_agent_id IS NOT NULL;
-- The sweeper: leases by expiry. A lease sets last_agent_id to the holder, so tasks_agent
-- finds what an agent holds.
CREATE INDEX tasks_leases ON tasks (lease_expires_ms) WHERE status IN ('leased', 'running');
CREATE INDEX tasks_agent  ON tasks (last_agent_id) WHERE last_agent_id IS NOT NULL;
-- There is no index of every status any more: (status, updated_ms) changed on every step of
-- every task, three to five frames a task. Each status group has its partial index instead
-- (tasks_queue, tasks_leases, and this one for the final statuses, led by the status so that
-- listing, counting and purging one final status is an index range; a finished task's
-- updated_ms is its finished_ms, so the list's order is unchanged).
CREATE INDEX tasks_finished ON tasks (status, finished_ms) WHERE finished_ms IS NOT NULL;

-- audit_events_ts cost a frame on every append. Events are appended in time order (an append
-- never takes a time earlier than the head's), so a time range is a range of seq, found by a
-- binary search over the primary key.
DROP INDEX audit_events_ts;
-- The actions every tool call and every task step record are left out of the action index:
-- a filter on one of them finds its events at once by walking the newest first, and each of
-- those appends writes one page fewer. The rarer actions (approvals, failures, changes) keep
-- their index. store::audit::HOT_ACTIONS repeats this list word for word.
DROP INDEX audit_events_action;
CREATE INDEX audit_events_action ON audit_events (action, seq)
    WHERE action NOT IN ('tool.call', 'task.submitted', 'task.leased', 'task.running', 'task.completed');
