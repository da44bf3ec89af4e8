CREATE UNIQUE INDEX IF NOT EXISTS lookup_device_auth_by_user_code
    ON device_auth_request (user_code);
