//! How many single-job transitions per second `World::apply` sustains
//! (release build): enqueue, claim and complete jobs one at a time.
//!
//! `cargo run --release -p weir-core --example apply_rate [jobs]`

use std::time::Instant;

use weir_core::cmd;
use weir_core::*;

fn main() {
    let jobs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let queue = QueueName::new("default").expect("valid");
    let kind = Kind::new("noop").expect("valid");
    let mut world = World::new(WorldConfig::default());
    let now = Timestamp(1);
    let started = Instant::now();
    let mut transitions = 0u64;
    for _ in 0..jobs {
        let job = NewJob::new(queue.clone(), kind.clone(), Payload::default());
        world.apply(now, Command::Enqueue(cmd::Enqueue { jobs: vec![job] }));
        transitions += 1;
    }
    let (claimer, _) = world
        .run(
            now,
            cmd::ClaimerAcquire {
                queue: queue.clone(),
                process: ProcessId(1),
            },
        )
        .expect("no claimer slot");
    for _ in 0..jobs {
        let claimed = world
            .run(
                now,
                cmd::Claim {
                    queue: queue.clone(),
                    claimer,
                    max: 1,
                    kinds: None,
                },
            )
            .expect("claim refused");
        let receipt = claimed.jobs[0].receipt;
        world.apply(
            now,
            Command::Complete(cmd::Complete {
                receipts: vec![receipt],
            }),
        );
        transitions += 2;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{transitions} single-job transitions in {secs:.3} s: {:.0} per second",
        transitions as f64 / secs
    );
}
