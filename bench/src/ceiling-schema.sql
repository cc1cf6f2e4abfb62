-- Copied verbatim from ../shared/bench/ceiling-schema.sql (the reference every
-- Weir speed figure is quoted against; see docs/benchmarks/README.md).
-- A minimal job table: the least a Postgres job queue must write per job.
drop table if exists ceiling_jobs;
create table ceiling_jobs (
  id bigserial primary key,
  queue text not null default 'q',
  state smallint not null default 0,
  attempt int not null default 0,
  epoch bigint not null default 0,
  run_at timestamptz not null default now(),
  args jsonb not null default '{}',
  lease_until timestamptz
);
create index ceiling_jobs_claim on ceiling_jobs (queue, run_at, id) where state = 0;
