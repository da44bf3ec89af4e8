-- The instance's auto-restart policy as its owner set it ('never' or 'best_effort'); NULL: the
-- control plane's default (best effort).
ALTER TABLE instance ADD COLUMN IF NOT EXISTS auto_restart_policy TEXT
    CHECK (auto_restart_policy IN ('never', 'best_effort'));
