CREATE UNIQUE INDEX IF NOT EXISTS lookup_api_token_by_hash ON api_token (token_hash);
