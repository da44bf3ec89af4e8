CREATE INDEX IF NOT EXISTS role_assignment_by_identity
    ON role_assignment (identity_type, identity_id);
