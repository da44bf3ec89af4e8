CREATE INDEX IF NOT EXISTS audit_log_by_time ON audit_log (time_started, id);
