-- An OAuth 2.0 device authorization grant in progress (POST /device/auth): the device code
-- is a secret kept as its SHA-256 like a token; the user code is what the user confirms.
CREATE TABLE IF NOT EXISTS device_auth_request (
    id UUID NOT NULL PRIMARY KEY,
    client_id UUID NOT NULL,
    device_code_hash TEXT NOT NULL,
    user_code TEXT NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_expires TIMESTAMPTZ NOT NULL,
    -- The lifetime asked for the token; NULL: the default.
    token_ttl_seconds INT8 CHECK (token_ttl_seconds > 0),
    -- Set by POST /device/confirm.
    user_id UUID REFERENCES silo_user (id),
    time_confirmed TIMESTAMPTZ,
    -- Set once the token was handed out (POST /device/token), so it is handed out once.
    token_id UUID REFERENCES api_token (id)
);
