-- When the control plane last restarted the instance on its own after it failed; the next
-- automatic restart waits out the cooldown from then. NULL: never.
ALTER TABLE instance ADD COLUMN IF NOT EXISTS time_last_auto_restarted TIMESTAMPTZ;
