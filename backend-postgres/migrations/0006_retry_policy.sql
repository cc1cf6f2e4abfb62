-- Weir schema, version 6: a job's own retry backoff, and the history of
-- its attempts' errors. `{schema}` is replaced by the quoted schema name;
-- nothing else is ever spliced into this text.

-- A job's own backoff (`NewJob::backoff`, from its kind's
-- `JobArgs::backoff`): all four columns or none. None means the backend's
-- configured policy, which the worker's fail batch passes as a table.
ALTER TABLE {schema}.jobs
    ADD COLUMN backoff_base_ms   bigint,
    ADD COLUMN backoff_factor    bigint,
    ADD COLUMN backoff_cap_ms    bigint,
    ADD COLUMN backoff_jitter    smallint,
    ADD CONSTRAINT jobs_backoff_whole CHECK (
        (backoff_base_ms IS NULL) = (backoff_factor IS NULL)
        AND (backoff_base_ms IS NULL) = (backoff_cap_ms IS NULL)
        AND (backoff_base_ms IS NULL) = (backoff_jitter IS NULL)
    );

-- `Job::errors`: the newest `ErrorRecord::KEPT` (20) errors, oldest first,
-- each `{"attempt": n, "at": ms, "message": text}`. The one error version
-- 5 kept becomes the first entry.
ALTER TABLE {schema}.jobs ADD COLUMN errors jsonb NOT NULL DEFAULT '[]';
UPDATE {schema}.jobs
SET errors = jsonb_build_array(jsonb_build_object(
        'attempt', error_attempt, 'at', error_at, 'message', error_message))
WHERE error_attempt IS NOT NULL;
ALTER TABLE {schema}.jobs
    DROP COLUMN error_attempt,
    DROP COLUMN error_at,
    DROP COLUMN error_message;

-- `Backoff::delay`, restated for the fail batch, which learns a job's own
-- policy and attempt only when it has locked the row: `base * factor ^
-- (attempt - 1)`, growing until it reaches `cap`, capped, then reduced by
-- `draw mod (floor(capped * jitter / 1000) + 1)`. `draw` is the core's
-- u64 draw (numeric: it may exceed bigint). Checked against the core's
-- function value for value by backend-postgres/tests/backoff_sql.rs.
CREATE FUNCTION {schema}.backoff_delay(
    base bigint, factor bigint, cap bigint, jitter integer, attempt integer, draw numeric)
RETURNS bigint LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    raw numeric := base;
    capped numeric;
    max_cut numeric;
BEGIN
    FOR i IN 1 .. greatest(attempt - 1, 0) LOOP
        EXIT WHEN raw >= cap OR factor = 1;
        raw := raw * factor;
    END LOOP;
    capped := least(raw, cap);
    max_cut := div(capped * jitter, 1000);
    IF max_cut = 0 THEN
        RETURN capped::bigint;
    END IF;
    RETURN (capped - mod(draw, max_cut + 1))::bigint;
END $$;
