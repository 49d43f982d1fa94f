-- 0003: worker agents and the durable task queue. Times used in arithmetic (heartbeat age,
-- leases, backoff) are stored as Unix milliseconds; human-facing times as RFC 3339 text.
CREATE TABLE agents (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    agent_type        TEXT NOT NULL CHECK (agent_type IN ('worker', 'orchestrator', 'validator')),
    capabilities      TEXT NOT NULL,            -- JSON array of strings, sorted, unique
    endpoints         TEXT NOT NULL,            -- JSON object
    resources         TEXT NOT NULL,            -- JSON object
    metadata          TEXT NOT NULL,            -- JSON object
    status            TEXT NOT NULL CHECK (status IN ('ready', 'busy', 'draining')),
    load              REAL NOT NULL CHECK (load >= 0 AND load <= 1),
    registered_at     TEXT NOT NULL,
    last_heartbeat_ms INTEGER NOT NULL,
    token_generation  INTEGER NOT NULL,         -- tokens of older generations are refused
    deregistered_at   TEXT
);
CREATE INDEX agents_heartbeat ON agents (last_heartbeat_ms);

CREATE TABLE tasks (
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
    idempotency_key  TEXT UNIQUE,
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
-- The claim path: queued tasks in dispatch order, and those aimed at one agent.
CREATE INDEX tasks_queue  ON tasks (priority DESC, created_ms, id) WHERE status = 'queued';
CREATE INDEX tasks_target ON tasks (target_agent_id, priority DESC, created_ms) WHERE status = 'queued' AND target_agent_id IS NOT NULL;
-- The sweeper: leases by expiry, and by holder.
CREATE INDEX tasks_leases ON tasks (lease_expires_ms) WHERE status IN ('leased', 'running');
CREATE INDEX tasks_holder ON tasks (leased_by) WHERE leased_by IS NOT NULL;
-- Only the agent, not the time: an index entry that moved with every update would be
-- rewritten on every task step.
CREATE INDEX tasks_agent  ON tasks (last_agent_id);
-- Listing, stats and purging.
CREATE INDEX tasks_status ON tasks (status, updated_ms);
CREATE INDEX tasks_finished ON tasks (finished_ms) WHERE finished_ms IS NOT NULL;
