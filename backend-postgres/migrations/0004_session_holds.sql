-- Weir schema, version 4: a session hold records the session that holds
-- it. `{schema}` is replaced by the quoted schema name; nothing else is
-- ever spliced into this text.
--
-- A session hold (`Command::SlotTry` with no lease) must end when its
-- holder's session ends, as an advisory lock does; before this version it
-- was a row with no expiry and nothing behind it, so a crashed holder held
-- its slot until someone sent `ProcessCrashed`. A session hold is now
-- taken on a connection its backend keeps for session holds alone, and the
-- row records that connection's server process id and the time it
-- started (`pg_stat_activity.backend_start`: process ids are reused, a
-- start time with its pid is not). A hold whose session is no longer in
-- `pg_stat_activity` counts as free. Both columns are set for session
-- holds written by version 4 or later and for nothing else; a session
-- hold written before records no session and holds, as it did, until it
-- is released or its holder is declared crashed.
ALTER TABLE {schema}.semaphore_slots
    ADD COLUMN holder_pid           integer,
    ADD COLUMN holder_session_start timestamptz,
    ADD CONSTRAINT semaphore_slots_session CHECK (
        (holder_pid IS NULL) = (holder_session_start IS NULL)
        AND (holder_pid IS NULL OR (holder IS NOT NULL AND lease_expires_at IS NULL))
    );
