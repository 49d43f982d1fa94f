-- 0007: child MCP instances and the pinned definitions of their tools.
-- An instance belongs to the coordinator process that runs it (owner = host:pid:session);
-- other processes sharing the file see it but never call it. `resume` marks an instance that
-- was stopped only because its coordinator exited, so the next coordinator starts it again.
-- Times are RFC 3339 UTC text.
CREATE TABLE instances (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    type        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('starting', 'running', 'unhealthy', 'restarting',
                    'crash_loop', 'expired', 'stopped', 'failed')),
    owner       TEXT NOT NULL,
    owner_host  TEXT NOT NULL,
    owner_pid   INTEGER NOT NULL,
    pid         INTEGER,
    overrides   TEXT NOT NULL DEFAULT '{}',
    ttl_seconds INTEGER,
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    expires_at  TEXT,
    stopped_at  TEXT,
    restarts    INTEGER NOT NULL DEFAULT 0,
    health      TEXT NOT NULL DEFAULT 'unknown',
    last_error  TEXT,
    tools       INTEGER NOT NULL DEFAULT 0,
    resume      INTEGER NOT NULL DEFAULT 0,
    updated_at  TEXT NOT NULL
);
-- A name is taken while its instance is live (crash_loop included: it waits for a person).
CREATE UNIQUE INDEX instances_live_name ON instances (name)
    WHERE status NOT IN ('stopped', 'expired', 'failed');
CREATE INDEX instances_status ON instances (status, updated_at);

-- Tool pinning: the hash of each child tool's definition (description, schemas, annotations)
-- the first time an instance type showed it. A changed or suspicious definition waits in
-- pending_* (status quarantined, not exposed) until a person approves it.
CREATE TABLE instance_tool_pins (
    type               TEXT NOT NULL,
    tool               TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('pinned', 'quarantined')),
    hash               TEXT,
    definition         TEXT,
    flags              TEXT NOT NULL DEFAULT '[]',
    pending_hash       TEXT,
    pending_definition TEXT,
    pending_flags      TEXT,
    approval_id        TEXT,
    first_seen_at      TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    PRIMARY KEY (type, tool)
);
