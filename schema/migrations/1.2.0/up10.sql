CREATE UNIQUE INDEX IF NOT EXISTS lookup_device_auth_by_device_code
    ON device_auth_request (device_code_hash);
