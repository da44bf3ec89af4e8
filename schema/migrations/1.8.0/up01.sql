-- Every Nexus that has run against this database, and when it last said it was alive (the
-- database's clock, so Nexus hosts' clocks never matter). A Nexus whose heartbeat is older
-- than the bound is gone: a live one adopts its unfinished sagas.
CREATE TABLE IF NOT EXISTS nexus (
    id UUID NOT NULL PRIMARY KEY,
    -- Random per process start: a second process started with the same id takes the row,
    -- and the first learns at its next heartbeat that it was superseded.
    incarnation UUID NOT NULL,
    time_started TIMESTAMPTZ NOT NULL,
    time_heartbeat TIMESTAMPTZ NOT NULL
);
