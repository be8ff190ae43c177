-- Banned exits, fleet-wide: every gateway on this database refuses these
-- exit ids at join and disconnects them (bumping the revision makes every
-- gateway reload the list within a second). Times are Unix seconds.
CREATE TABLE exit_bans (
    exit_id TEXT PRIMARY KEY,
    since BIGINT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
