-- Weir schema, version 2: worker presence. `{schema}` is replaced by the
-- quoted schema name; nothing else is ever spliced into this text.
--
-- One row per live worker process, written by its periodic announce (an
-- upsert) and deleted when it retires. Operators read it beside the queue
-- depths: a kind with unfinished jobs that no live worker can run is shown
-- as such instead of silently waiting. Nothing here decides anything: the
-- claimer leases, not presence, say who may claim.
--
-- Times are bigint milliseconds of `{schema}.now_ms()`, like every other
-- table. A row past `expires_at` counts as gone; the next announce of any
-- process deletes it, so crashed processes do not pile up.
CREATE TABLE {schema}.workers (
    process    bigint PRIMARY KEY,
    label      text   NOT NULL,
    queues     text[] NOT NULL,
    kinds      text[] NOT NULL,
    started_at bigint NOT NULL,
    seen_at    bigint NOT NULL,
    expires_at bigint NOT NULL CHECK (expires_at >= seen_at)
) WITH (
    -- An announce rewrites only unindexed columns: room on the page keeps
    -- it a HOT update.
    fillfactor = 50
);
