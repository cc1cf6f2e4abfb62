use super::*;
use crate::cmd;
use crate::ids::ProcessId;

fn dispatcher() -> Dispatcher {
    let queue = QueueName::new("q").unwrap();
    Dispatcher::new(DispatcherConfig::new(ProcessId(1), queue, 2), Timestamp(0))
}

#[test]
fn a_fresh_dispatcher_acquires_a_lease_and_seeks_leadership_first() {
    let mut d = dispatcher();
    d.handle(Timestamp(0), 0, Input::Tick);
    let effects: Vec<Effect> = std::iter::from_fn(|| d.poll_effect()).collect();
    assert!(matches!(
        effects[0],
        Effect::Execute(_, Command::LeaderElect(cmd::LeaderElect { .. }))
    ));
    assert!(matches!(
        effects[1],
        Effect::Execute(_, Command::ClaimerAcquire(cmd::ClaimerAcquire { .. }))
    ));
    assert_eq!(effects.len(), 2);
    assert_eq!(d.check_invariants(), Ok(()));
}
