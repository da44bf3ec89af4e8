-- The sled's address on the underlay network (where other sleds tunnel its guests' traffic),
-- as its agent reports it; NULL: none reported (mappings then name the agent's own IP).
ALTER TABLE sled ADD COLUMN IF NOT EXISTS underlay_ip INET;
