-- Weir schema, version 1. `{schema}` is replaced by the quoted schema name;
-- nothing else is ever spliced into this text.
--
-- Every time is a bigint of milliseconds since the Unix epoch (the core's
-- `Timestamp`), so what the database stores is exactly what the core
-- computes with. Each table and index says why it exists; see also
-- backend-postgres/README.md.

-- The database clock, in the core's unit. Transaction time, so every
-- statement of one command sees the same `now`.
CREATE FUNCTION {schema}.now_ms() RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT floor(extract(epoch FROM transaction_timestamp()) * 1000)::bigint $$;

-- `t + span` saturating at the largest bigint, like `Timestamp::plus`.
CREATE FUNCTION {schema}.plus_ms(t bigint, span numeric) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT least(t::numeric + span, 9223372036854775807)::bigint $$;

-- Jobs: one row per job for its whole life (until pruned). The state's data
-- lives in nullable columns that are set only in the states that own them
-- (checked below), so a row reads like the core's `JobState`.
CREATE SEQUENCE {schema}.jobs_id_seq AS bigint;

CREATE TABLE {schema}.jobs (
    id              bigint   PRIMARY KEY DEFAULT nextval('{schema}.jobs_id_seq'),
    queue           text     NOT NULL,
    kind            text     NOT NULL,
    payload         bytea    NOT NULL,
    priority        smallint NOT NULL,
    attempt         integer  NOT NULL CHECK (attempt >= 0 AND attempt <= max_attempts),
    max_attempts    integer  NOT NULL CHECK (max_attempts >= 1),
    epoch           bigint   NOT NULL CHECK (epoch >= 0),
    timeout_ms      bigint   NOT NULL CHECK (timeout_ms > 0),
    unique_key      text,
    created_at      bigint   NOT NULL,
    state           text     NOT NULL CHECK (state IN ('scheduled', 'available', 'running',
                        'waiting_external', 'retryable', 'completed', 'failed', 'cancelled')),
    -- scheduled, available, retryable
    run_at          bigint,
    -- running
    holder          bigint,
    claimed_at      bigint,
    heartbeat_at    bigint,
    -- running, waiting_external
    deadline        bigint,
    -- waiting_external
    waiting_since   bigint,
    -- completed, failed, cancelled
    finished_at     bigint,
    -- failed
    fail_reason     text CHECK (fail_reason IN ('attempts_exhausted', 'terminal')),
    -- the last error, in any state
    error_attempt   integer,
    error_at        bigint,
    error_message   text,
    CONSTRAINT jobs_state_data CHECK (
        (run_at IS NOT NULL) = (state IN ('scheduled', 'available', 'retryable'))
        AND (holder IS NOT NULL) = (state = 'running')
        AND (claimed_at IS NOT NULL) = (state = 'running')
        AND (heartbeat_at IS NOT NULL) = (state = 'running')
        AND (deadline IS NOT NULL) = (state IN ('running', 'waiting_external'))
        AND (waiting_since IS NOT NULL) = (state = 'waiting_external')
        AND (finished_at IS NOT NULL) = (state IN ('completed', 'failed', 'cancelled'))
        AND (fail_reason IS NOT NULL) = (state = 'failed')
    )
) WITH (
    -- Room on each page for heartbeat updates to stay HOT (heartbeat_at is
    -- in no index), and vacuum early: finished and claimed rows churn.
    fillfactor = 85,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);
ALTER SEQUENCE {schema}.jobs_id_seq OWNED BY {schema}.jobs.id;

-- Claim: the next available jobs of a queue in claim order. Partial, so it
-- holds only what can be claimed and stays small however many jobs finished.
CREATE INDEX jobs_claim ON {schema}.jobs (queue, priority, run_at, id)
    WHERE state = 'available';
-- Promote: scheduled and retryable jobs in due order.
CREATE INDEX jobs_due ON {schema}.jobs (run_at, id)
    WHERE state IN ('scheduled', 'retryable');
-- Rescue: running jobs in id order (the overdue test reads heartbeat_at,
-- which is deliberately not indexed so heartbeats stay HOT).
CREATE INDEX jobs_running ON {schema}.jobs (id)
    WHERE state = 'running';
-- Rescue: callback waits in deadline order.
CREATE INDEX jobs_waiting ON {schema}.jobs (deadline, id)
    WHERE state = 'waiting_external';
-- Prune: finished jobs in finishing order.
CREATE INDEX jobs_finished ON {schema}.jobs (finished_at, id)
    WHERE state IN ('completed', 'failed', 'cancelled');
-- Unique keys: one job per (kind, key) until it is pruned; the index is
-- what makes concurrent duplicate inserts race-free.
CREATE UNIQUE INDEX jobs_unique ON {schema}.jobs (kind, unique_key)
    WHERE unique_key IS NOT NULL;

-- Queues whose claims are paused. A row per paused queue: claims read it
-- with one index probe; no row is written while nothing is paused.
CREATE TABLE {schema}.paused_queues (
    queue text PRIMARY KEY
);

-- Claimer leases: at most K rows per queue. Written only on acquire,
-- takeover, release and the half-stale refresh, never on every claim.
CREATE TABLE {schema}.claimer_leases (
    queue           text    NOT NULL,
    slot            integer NOT NULL CHECK (slot >= 0),
    owner           bigint,
    lease_epoch     bigint  NOT NULL CHECK (lease_epoch >= 1),
    last_claimed_at bigint  NOT NULL,
    expires_at      bigint  NOT NULL,
    PRIMARY KEY (queue, slot)
) WITH (fillfactor = 50);

-- The maintenance leader: one row, whose term only grows.
CREATE TABLE {schema}.leader (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    term       bigint  NOT NULL CHECK (term >= 0),
    holder     bigint,
    expires_at bigint  NOT NULL
) WITH (fillfactor = 50);
INSERT INTO {schema}.leader (term, holder, expires_at) VALUES (0, NULL, 0);

-- Semaphores (the lease-table implementation, and `Command::SlotTry`): the
-- size fixed by the first try, and one row per slot once it is first taken.
-- A slot without a row is free at epoch 0.
CREATE TABLE {schema}.semaphores (
    name    text    PRIMARY KEY,
    permits integer NOT NULL CHECK (permits BETWEEN 1 AND 65535),
    -- Stable number for advisory-lock keys (see the advisory semaphore).
    key     integer GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE TABLE {schema}.semaphore_slots (
    name             text    NOT NULL REFERENCES {schema}.semaphores (name),
    slot             integer NOT NULL CHECK (slot >= 0),
    epoch            bigint  NOT NULL CHECK (epoch >= 0),
    holder           bigint,
    -- NULL with a holder: held for the holder's session.
    lease_expires_at bigint,
    PRIMARY KEY (name, slot)
) WITH (fillfactor = 50);
