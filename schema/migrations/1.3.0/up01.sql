-- Authorization (see ARCHITECTURE.md, "Authorization"): who holds which role on what. A role
-- is held on the fleet (resource_id: FLEET_ID in db-model; roles admin, viewer) or on one
-- project (admin, collaborator, viewer). A project's rows are its policy.
CREATE TABLE IF NOT EXISTS role_assignment (
    resource_type TEXT NOT NULL CHECK (resource_type IN ('fleet', 'project')),
    resource_id UUID NOT NULL,
    identity_type TEXT NOT NULL CHECK (identity_type IN ('silo_user')),
    identity_id UUID NOT NULL,
    role_name TEXT NOT NULL CHECK (
        (resource_type = 'fleet' AND role_name IN ('admin', 'viewer'))
        OR (resource_type = 'project' AND role_name IN ('admin', 'collaborator', 'viewer'))
    ),
    PRIMARY KEY (resource_type, resource_id, identity_type, identity_id, role_name)
);
