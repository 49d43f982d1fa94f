-- 0014: the coordinator processes sharing this database, so that they find each other (a
-- team's coordinators on one PostgreSQL, or several processes on one file). Each registers
-- itself when it starts serving, heartbeats every 10 s, and sets stopped_at on a clean exit;
-- health comes from the heartbeat's age. Rows of coordinators gone for a day are pruned.
CREATE TABLE coordinators (
    id            TEXT PRIMARY KEY,     -- the process's session id: random per start
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    version       TEXT NOT NULL,        -- mcp-coordinator's version
    transports    TEXT NOT NULL,        -- JSON object: stdio, http (its MCP URL), url, console
    capabilities  TEXT NOT NULL,        -- JSON object: tool groups, instance types, protocols
    toolsets      TEXT NOT NULL,        -- JSON array: the toolsets a connection starts with
    started_at    TEXT NOT NULL,
    heartbeat_ms  INTEGER NOT NULL,     -- the database's clock, ms since the epoch
    stopped_at    TEXT                  -- set on a clean exit
);
CREATE INDEX coordinators_heartbeat ON coordinators (heartbeat_ms);
