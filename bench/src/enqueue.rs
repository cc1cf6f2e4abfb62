//! Enqueue: single inserts (one job per statement), batch inserts (128
//! per statement) and the bulk path (`COPY`), jobs/s, each from P
//! processes at once into a fresh database.

use serde_json::json;

use super::burn::split;
use super::child::{Children, WorkerSpec};
use super::report::{thousands, Shape, Verdict};
use super::{ceiling_json, Ctx, REFERENCE_CLIENTS};

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
        let total: u64 = done.iter().filter_map(|d| d["jobs"].as_u64()).sum();
        let longest = done
            .iter()
            .filter_map(|d| d["seconds"].as_f64())
            .fold(0.0, f64::max);
        let rate = total as f64 / longest.max(1e-9);
        let per: Vec<String> = done
            .iter()
            .map(|d| thousands(d["jobs_per_s"].as_f64().unwrap_or(0.0)))
            .collect();
        rows.push(Verdict::new(
            format!(
                "enqueue, {mode} ({}), {processes} process(es)",
                match mode {
                    "single" => "one job per statement",
                    "batch" => "128 per statement",
                    _ => "COPY",
                }
            ),
            "reported",
            format!(
                "{} jobs/s (per process: {})",
                thousands(rate),
                per.join(", ")
            ),
            None,
        ));
        modes.push(json!({
            "mode": mode, "jobs": total, "seconds": longest, "jobs_per_s": rate, "per_process": done,
        }));
    }
    let record = json!({
        "params": { "processes": processes, "seconds": seconds, "bulk_jobs": jobs },
        "ceiling": ceiling_json(&ceilings),
        "modes": modes,
    });
    Ok(Shape::new("enqueue", record, rows))
}
