CREATE INDEX IF NOT EXISTS sled_reservation_by_sled ON sled_reservation (sled_id);
