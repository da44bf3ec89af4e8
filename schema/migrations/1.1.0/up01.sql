-- An operator's verdict that a sled is gone for good (`omdb nexus sled-expunge`): placement
-- never picks it, its registrations are refused, and its VMMs were failed and retired.
ALTER TABLE sled ADD COLUMN IF NOT EXISTS time_expunged TIMESTAMPTZ;
