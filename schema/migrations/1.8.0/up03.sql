-- The owner's adoption generation when the event was written: with `creator`, who wrote it
-- under which ownership. A write is accepted only from the saga's current owner at its current
-- generation, so no (saga, generation) has events from two writers.
ALTER TABLE saga_node_event ADD COLUMN IF NOT EXISTS adopt_generation INT8 NOT NULL DEFAULT 1;
