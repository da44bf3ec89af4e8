INSERT INTO db_metadata (singleton, version, time_created, time_modified)
    VALUES (TRUE, '1.0.0', now(), now())
    ON CONFLICT (singleton) DO NOTHING;
