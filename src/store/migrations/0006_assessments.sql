-- 0006: assessments of MCP client configs and remediation proposals. Each row keeps its whole
-- record as JSON (`doc`), with the columns that queries filter on beside it.
CREATE TABLE assessments (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('security', 'compliance', 'health')),
    status     TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    created_at TEXT NOT NULL,
    doc        TEXT NOT NULL
);
CREATE INDEX assessments_recent ON assessments (created_at);

CREATE TABLE remediations (
    id            TEXT PRIMARY KEY,
    status        TEXT NOT NULL CHECK (status IN
                  ('proposed', 'withdrawn', 'executing', 'executed', 'failed', 'rolled_back')),
    assessment_id TEXT REFERENCES assessments (id),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    doc           TEXT NOT NULL
);
CREATE INDEX remediations_recent ON remediations (created_at);
