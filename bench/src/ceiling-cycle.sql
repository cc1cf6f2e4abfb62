-- Copied verbatim from ../shared/bench/ceiling-cycle.sql (the reference every
-- Weir speed figure is quoted against; see docs/benchmarks/README.md).
-- One cycle = 128 jobs: insert a batch, claim a batch with SKIP LOCKED
-- (bumping attempt and epoch), finish a batch. Three commits per 128 jobs.
begin;
insert into ceiling_jobs (args) select jsonb_build_object('n', g) from generate_series(1, 128) g;
commit;
begin;
with c as (
  select id from ceiling_jobs
  where state = 0 and queue = 'q' and run_at <= now()
  order by run_at, id limit 128 for update skip locked)
update ceiling_jobs j set state = 1, attempt = attempt + 1, epoch = epoch + 1,
  lease_until = now() + interval '30 s'
from c where j.id = c.id;
commit;
delete from ceiling_jobs where id in (
  select id from ceiling_jobs where state = 1 limit 128 for update skip locked);
