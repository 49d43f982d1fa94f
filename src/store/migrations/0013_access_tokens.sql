-- 0013: access tokens and API keys this coordinator issued for MCP over HTTP
-- (`mcp-coordinator token issue`). A token is a signed JWT the holder keeps; its row says who it
-- was issued to, with which roles, and whether it was revoked. An API key is opaque; only its
-- SHA-256 is kept (the key is random and long, so a slow hash would add nothing).
CREATE TABLE access_tokens (
    id          TEXT PRIMARY KEY,                                   -- tok_... or key_...
    kind        TEXT NOT NULL CHECK (kind IN ('token', 'api_key')),
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    roles       TEXT NOT NULL,                                      -- comma-separated
    key_hash    TEXT UNIQUE,                                        -- API keys: hex SHA-256
    issued_at   TEXT NOT NULL,
    issued_by   TEXT NOT NULL,
    expires_at  TEXT,                                               -- NULL: never
    revoked_at  TEXT,
    revoked_by  TEXT,
    CHECK ((kind = 'api_key') = (key_hash IS NOT NULL))
);
