CREATE INDEX IF NOT EXISTS unfinished_saga_by_sec
    ON saga (current_sec, id) WHERE saga_state != 'done';
