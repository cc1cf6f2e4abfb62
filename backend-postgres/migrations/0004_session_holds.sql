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

-- Whether the session a hold records has ended: its process id is no
-- longer in `pg_stat_activity`, or belongs to a session that started at
-- another time (a reused id). A session this role may not inspect shows
-- no start time and counts as alive: a hold is never freed on a guess.
-- `pg_stat_activity` is read as it is now, not from the copy a transaction
-- keeps after its first read (`pg_stat_clear_snapshot`): a slot try that
-- waited for another try's row lock must see the session that other try
-- may have opened meanwhile. `VOLATILE` for the same reason.
CREATE FUNCTION {schema}.session_ended(pid integer, started timestamptz) RETURNS boolean
    LANGUAGE sql VOLATILE
    AS $$
        SELECT pg_stat_clear_snapshot();
        SELECT NOT EXISTS (
            SELECT 1 FROM pg_stat_get_activity($1) a
            WHERE a.backend_start IS NULL OR a.backend_start = $2)
    $$;
