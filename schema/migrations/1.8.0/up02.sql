-- Why a saga could not be resumed (its DAG or log unreadable, an action no longer known);
-- NULL for every saga that could. Such a saga is reported, never a reason to refuse to start.
ALTER TABLE saga ADD COLUMN IF NOT EXISTS resume_failure TEXT;
