-- Weir schema, version 5: a pause is a barrier for the claims under way.
-- `{schema}` is replaced by the quoted schema name; nothing else is ever
-- spliced into this text.
--
-- The world applies `PauseQueue` at one instant: once it has answered, no
-- claim hands out a job of that queue. A claim statement reads the paused
-- queues from its snapshot, taken when the statement starts, and locks
-- its jobs later; before this version a claim under way when a pause
-- committed could still take a job after the pause had answered (found by
-- the history soak, seed 51168). Now every claim passes a gate first: it
-- takes the queue's pause lock in shared mode and then reads the paused
-- queues afresh. A pause takes the same lock exclusively and holds it
-- until it commits. So a claim that passed the gate before the pause is over
-- before the pause answers, and one that comes later waits for the
-- pause's commit and then sees the queue paused. The locks are
-- transaction-level and held for a single statement on the claim's side:
-- they work behind a transaction-pooling PgBouncer.

-- The advisory-lock key of a queue's pause lock: bit 61 set and bit 62
-- clear, so no semaphore slot lock (keys of 2^62 and more), no lock taken
-- with a 32-bit key and no two-key lock shares it; the low 46 bits hash
-- the schema and the queue, so two schemas in one database do not wait
-- on each other's pauses. Two queues whose hashes meet only make one
-- pause wait for the other queue's claims.
CREATE FUNCTION {schema}.pause_key(queue text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (1::bigint << 61)
                 | (hashtextextended('{schema}/' || queue, 0) & ((1::bigint << 46) - 1)) $$;

-- Takes `q`'s pause lock in shared mode and answers whether `q` may be
-- claimed from: not paused, read with a snapshot of its own taken after
-- the lock (a `VOLATILE` function's statements each take a fresh one in
-- READ COMMITTED), not the calling statement's.
CREATE FUNCTION {schema}.claim_gate(q text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock_shared({schema}.pause_key(q));
        RETURN NOT EXISTS (SELECT 1 FROM {schema}.paused_queues p WHERE p.queue = q);
    END $$;

-- Takes `q`'s pause lock exclusively, so the pause goes on only once
-- every claim that passed the gate before it is over, and holds it to the
-- commit, so every claim that comes later reads the pause. Then pauses
-- `q`; answers whether the queue was not paused before.
CREATE FUNCTION {schema}.pause_queue(q text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    AS $$
    DECLARE
        changed boolean;
    BEGIN
        PERFORM pg_advisory_xact_lock({schema}.pause_key(q));
        INSERT INTO {schema}.paused_queues (queue) VALUES (q) ON CONFLICT DO NOTHING;
        changed := FOUND;
        RETURN changed;
    END $$;
