-- The region a region replacement creates, set with `replacing_region_id`: the mark names the
-- replacement (its saga's new region), so two replacements of the same lost region (one
-- adopted from a Nexus gone silent, one a live Nexus started meanwhile) cannot both pass it.
ALTER TABLE disk ADD COLUMN IF NOT EXISTS replacement_region_id UUID;
