//! Enqueue: single inserts (one job per statement), batch inserts (128
//! per statement) and the bulk path (`COPY`), jobs/s, each from P
//! processes at once into a fresh database.

use serde::Serialize;
use serde_json::Value;

use super::burn::split;
use super::child::{Children, WorkerSpec};
use super::report::{thousands, Shape, Verdict};
use super::{CeilingRecord, Ctx, REFERENCE_CLIENTS};

/// `weir bench enqueue`.
pub async fn run(ctx: &mut Ctx, jobs: u64, processes: u32) -> Result<Shape, String> {
    let seconds = if ctx.quick { 1.0 } else { 5.0 };
    let mut modes = Vec::new();
    let mut rows = Vec::new();
    let mut ceilings = Vec::new();
    for mode in ["single", "batch", "bulk"] {
        let db = ctx.server.fresh().await?;
        if ceilings.is_empty() {
            ceilings = ctx.ceilings(&db, REFERENCE_CLIENTS).await?;
        }
        let shares = split(jobs.min(u64::from(u32::MAX)) as u32, processes);
        let specs: Vec<WorkerSpec> = shares
            .iter()
            .map(|&share| WorkerSpec::Enqueue {
                url: db.app_url.clone(),
                mode: mode.to_string(),
                seconds,
                jobs: u64::from(share),
            })
            .collect();
        let bar = ctx.spinner(format!(
            "enqueue: {mode} inserts from {processes} process(es)"
        ));
        let mut children = Children::spawn(&specs)?;
        children.ready().await?;
        children.go()?;
        let done = children.finish().await?;
        bar.finish_and_clear();
        let record = ModeRecord::new(mode, done);
        rows.push(record.verdict(processes));
        modes.push(record);
    }
    let record = EnqueueRecord {
        params: EnqueueParams {
            processes,
            seconds,
            bulk_jobs: jobs,
        },
        ceiling: CeilingRecord::new(&ceilings),
        modes,
    };
    Ok(Shape::new("enqueue", &record, rows))
}

/// The `enqueue` shape's record.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct EnqueueRecord {
    params: EnqueueParams,
    ceiling: CeilingRecord,
    modes: Vec<ModeRecord>,
}

#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct EnqueueParams {
    processes: u32,
    seconds: f64,
    bulk_jobs: u64,
}

/// One insert mode, over every process.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
struct ModeRecord {
    mode: &'static str,
    jobs: u64,
    seconds: f64,
    jobs_per_s: f64,
    /// The enqueuing processes' own records.
    per_process: Vec<Value>,
}

impl ModeRecord {
    fn new(mode: &'static str, done: Vec<Value>) -> ModeRecord {
        let total: u64 = done.iter().filter_map(|d| d["jobs"].as_u64()).sum();
        let longest = done
            .iter()
            .filter_map(|d| d["seconds"].as_f64())
            .fold(0.0, f64::max);
        ModeRecord {
            mode,
            jobs: total,
            seconds: longest,
            jobs_per_s: total as f64 / longest.max(1e-9),
            per_process: done,
        }
    }

    fn verdict(&self, processes: u32) -> Verdict {
        let per: Vec<String> = self
            .per_process
            .iter()
            .map(|d| thousands(d["jobs_per_s"].as_f64().unwrap_or(0.0)))
            .collect();
        Verdict::new(
            format!(
                "enqueue, {} ({}), {processes} process(es)",
                self.mode,
                match self.mode {
                    "single" => "one job per statement",
                    "batch" => "128 per statement",
                    _ => "COPY",
                }
            ),
            "reported",
            format!(
                "{} jobs/s (per process: {})",
                thousands(self.jobs_per_s),
                per.join(", ")
            ),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{key_paths, sorted};

    /// The keys the enqueue shape's `json!` wrote before it was typed.
    #[test]
    fn enqueue_record_keeps_its_keys() {
        let record = EnqueueRecord {
            modes: vec![ModeRecord::default()],
            ..EnqueueRecord::default()
        };
        let keys = [
            "params",
            "params.processes",
            "params.seconds",
            "params.bulk_jobs",
            "ceiling",
            "ceiling.measured",
            "ceiling.judged_against_jobs_per_s",
            "modes",
            "modes[].mode",
            "modes[].jobs",
            "modes[].seconds",
            "modes[].jobs_per_s",
            "modes[].per_process",
        ];
        assert_eq!(key_paths(&record), sorted(&keys));
    }
}
