-- 0004: pipelines. A definition is versioned (editing adds a version); a run pins the version
-- it started with and keeps one row per stage, updated in the same transaction as the task or
-- approval that moved it, so a restarted coordinator continues exactly where the last one was.
CREATE TABLE pipelines (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    latest_version INTEGER NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    created_by     TEXT NOT NULL,
    deleted_at     TEXT
);
-- Names are unique among pipelines that are not deleted.
CREATE UNIQUE INDEX pipelines_name ON pipelines (name) WHERE deleted_at IS NULL;

CREATE TABLE pipeline_versions (
    pipeline_id  TEXT NOT NULL REFERENCES pipelines (id),
    version      INTEGER NOT NULL CHECK (version >= 1),
    description  TEXT NOT NULL,
    definition   TEXT NOT NULL,                 -- JSON {stages, dependencies}, validated
    created_at   TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    PRIMARY KEY (pipeline_id, version)
);

CREATE TABLE pipeline_runs (
    id               TEXT PRIMARY KEY,
    pipeline_id      TEXT NOT NULL,
    version          INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    input            TEXT NOT NULL,             -- JSON
    parameters       TEXT NOT NULL,             -- JSON
    priority         INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 3),
    started_by       TEXT NOT NULL,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    finished_ms      INTEGER,
    error            TEXT,
    webhook_url      TEXT,
    webhook_state    TEXT CHECK (webhook_state IN ('waiting', 'pending', 'delivered', 'failed')),
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_next_ms  INTEGER,                   -- next attempt, or the end of a claimed attempt
    webhook_error    TEXT,
    FOREIGN KEY (pipeline_id, version) REFERENCES pipeline_versions (pipeline_id, version),
    CHECK ((status = 'running') = (finished_ms IS NULL))
);
CREATE INDEX pipeline_runs_active ON pipeline_runs (pipeline_id) WHERE status = 'running';
CREATE INDEX pipeline_runs_recent ON pipeline_runs (created_ms);
CREATE INDEX pipeline_runs_webhook ON pipeline_runs (webhook_next_ms) WHERE webhook_state = 'pending';

CREATE TABLE pipeline_stage_runs (
    run_id      TEXT NOT NULL REFERENCES pipeline_runs (id),
    stage       TEXT NOT NULL,
    position    INTEGER NOT NULL,               -- topological order
    status      TEXT NOT NULL CHECK (status IN
                ('waiting', 'queued', 'awaiting_approval', 'completed', 'failed', 'skipped', 'cancelled')),
    task_id     TEXT UNIQUE,                    -- the queue task that runs it (not for approval stages)
    approval_id TEXT,                           -- the approval an approval stage waits for
    output      TEXT,                           -- JSON
    error       TEXT,
    started_ms  INTEGER,
    finished_ms INTEGER,
    PRIMARY KEY (run_id, stage)
);
-- The tick's look for stages with something to collect: tasks still out, questions still open.
CREATE INDEX pipeline_stage_runs_queued ON pipeline_stage_runs (task_id) WHERE status = 'queued';
CREATE INDEX pipeline_stage_runs_asking ON pipeline_stage_runs (approval_id) WHERE status = 'awaiting_approval';
