-- Every mutating external request (POST, PUT, DELETE), authenticated or not: written when it
-- starts, completed (status) when it ends. `actor_id` is NULL when authentication failed.
CREATE TABLE IF NOT EXISTS audit_log (
    id UUID NOT NULL PRIMARY KEY,
    time_started TIMESTAMPTZ NOT NULL,
    time_completed TIMESTAMPTZ,
    request_id TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    operation_id TEXT NOT NULL,
    actor_kind TEXT NOT NULL CHECK (actor_kind IN ('user', 'unauthenticated')),
    actor_id UUID,
    actor_silo_id UUID,
    http_status INT4,
    error_code TEXT
);
