-- Where the region's sled serves it over NBD (host:port), recorded once the sled agent made
-- it; NULL for a simulated sled's regions and before then. The export's name is the region's
-- id.
ALTER TABLE region ADD COLUMN IF NOT EXISTS export_address TEXT;
