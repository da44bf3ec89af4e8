-- When the instance watcher declared this sled's VMMs failed because its sled agent stayed
-- silent past the bound; NULL otherwise. While set, placement never picks the sled: when its
-- agent answers again, Nexus first has it destroy those VMMs (reconciliation), then clears it.
ALTER TABLE sled ADD COLUMN IF NOT EXISTS time_vmms_failed TIMESTAMPTZ;
