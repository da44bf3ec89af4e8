INSERT INTO silo (id, name, time_created, time_modified)
    VALUES ('001de000-5110-4000-8000-000000000000', 'default-silo', now(), now())
    ON CONFLICT (id) DO NOTHING;
