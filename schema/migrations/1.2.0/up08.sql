CREATE INDEX IF NOT EXISTS api_token_by_user ON api_token (user_id);
