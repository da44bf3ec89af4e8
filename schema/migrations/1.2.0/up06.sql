-- An API token: only the SHA-256 of the secret is kept (hex), never the secret itself.
CREATE TABLE IF NOT EXISTS api_token (
    id UUID NOT NULL PRIMARY KEY,
    token_hash TEXT NOT NULL,
    user_id UUID NOT NULL REFERENCES silo_user (id),
    time_created TIMESTAMPTZ NOT NULL,
    -- No expiry when NULL.
    time_expires TIMESTAMPTZ,
    time_revoked TIMESTAMPTZ
);
