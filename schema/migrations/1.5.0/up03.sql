-- The instance whose create made this disk (deleted with it); NULL: made by a disk create.
ALTER TABLE disk ADD COLUMN IF NOT EXISTS created_by_instance_id UUID;
