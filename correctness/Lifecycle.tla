----------------------------- MODULE Lifecycle -----------------------------
(***************************************************************************)
(* The job lifecycle of Weir, with epochs, receipts, rescue and cancel.    *)
(*                                                                         *)
(* What this spec is for: the core decides every job transition, and the  *)
(* only thing that stops a slow or paused worker from overwriting a job    *)
(* that has since moved on is the epoch carried in its receipt. This spec  *)
(* lets TLC try every interleaving of claims, worker writes, rescues,      *)
(* cancels, admin retries, crashes, pauses and lost acknowledgements for a *)
(* couple of jobs and processes, and checks that the fence holds.          *)
(*                                                                         *)
(* Modelled as in weir_core::job (see MAPPING.md):                         *)
(*   - a job row is (state, epoch, attempt);                               *)
(*   - every claim bumps epoch and attempt and gives the claiming process  *)
(*     a receipt <<job, epoch>>;                                           *)
(*   - heartbeat / complete / fail / snooze / wait_external and the        *)
(*     handler's own cancel (cancel_attempt) are accepted only from the    *)
(*     receipt of the current epoch of a running job; resume_external     *)
(*     only from the receipt of the current epoch of a waiting job (the    *)
(*     external system holds it while the job waits). A rejected write     *)
(*     changes nothing;                                                    *)
(*   - rescue, cancel, expire_external and admin retry are decided by the  *)
(*     system, not by a worker, and bump the epoch (so does               *)
(*     cancel_attempt, which is a cancel).                                 *)
(*                                                                         *)
(* Abstractions (why they are sound for the properties checked):          *)
(*   - Time is not modelled. Which running job is "stale" is a             *)
(*     nondeterministic choice (Rescue); backoff and scheduled_at collapse *)
(*     into Promote being enabled.                                         *)
(*   - A paused process is a process that takes no steps for a while,      *)
(*     which interleaving gives us for free. The one thing a pause changes *)
(*     is that the holder's heartbeat goes stale, so with PAUSE on, rescue *)
(*     may take a running job whose holder still has its receipt; when the *)
(*     holder "wakes up" it simply takes its next step with that receipt.  *)
(*     Without PAUSE, rescue only takes jobs whose holder crashed.         *)
(*   - Each process runs one attempt at a time (a worker slot).            *)
(*   - Snoozes, external waits and admin retries are bounded per job by    *)
(*     constants. They are not part of the core; they only keep the state  *)
(*     space finite (each of them can reopen a job forever otherwise).     *)
(*   - Enqueue is Init: every job starts scheduled or available.           *)
(***************************************************************************)
EXTENDS Naturals, FiniteSets, TLC

CONSTANTS
    Jobs,             \* job ids (model values)
    Procs,            \* worker processes (model values)
    MaxAttempts,      \* max_attempts of every job
    MaxSnoozes,       \* model bound: snoozes per job
    MaxWaits,         \* model bound: external waits per job
    MaxAdminRetries,  \* model bound: admin retries per job
    \* Fault and feature switches. The liveness config turns them off.
    CRASH,            \* a process may crash and lose every receipt it holds
    PAUSE,            \* a holder may pause (GC, partition) long enough to be
                      \* rescued, and deliver its writes afterwards
    LOST_ACK,         \* an accepted write's ack may be lost: the worker keeps
                      \* its receipt and may deliver the same write again
    CANCEL,           \* users may cancel jobs (also running ones)
    ADMIN_RETRY,      \* admins may retry failed / cancelled jobs
    \* Deliberate bugs; each one must be caught by a named property.
    BUG_CLAIM_NO_EPOCH_BUMP,       \* claim reuses the old epoch
    BUG_COMPLETE_NO_EPOCH_CHECK,   \* complete ignores the receipt's epoch
    BUG_COMPLETE_REAPPLIES,        \* a repeated complete is applied again to an
                                   \* already completed job instead of rejected
    BUG_SNOOZE_CONSUMES_ATTEMPT,   \* snooze forgets to refund the attempt
    BUG_ADMIN_RETRY_RESETS_EPOCH,  \* admin retry resets epoch with attempts
    BUG_RESCUE_NO_EPOCH_BUMP,      \* rescue requeues without bumping the epoch
    BUG_CANCEL_NO_EPOCH_BUMP,      \* cancel without bumping the epoch
    BUG_PROMOTE_SKIPS_RETRYABLE,   \* promote only looks at scheduled jobs
    BUG_RETRY_PAST_MAX             \* a failed last attempt is retried anyway

ASSUME MaxAttempts \in Nat \ {0}
ASSUME {MaxSnoozes, MaxWaits, MaxAdminRetries} \subseteq Nat

VARIABLES
    state,         \* state[j]   : the job's state
    epoch,         \* epoch[j]   : bumped by claim, rescue, cancel, expiry, admin retry
    attempt,       \* attempt[j] : attempts used so far
    held,          \* held[p]    : receipts process p still believes in (at most one)
    callbacks,     \* receipts held by external systems for waiting jobs
    snoozes,       \* ghost: accepted snoozes per job (model bound)
    waits,         \* ghost: accepted external waits per job (model bound)
    adminRetries,  \* ghost: admin retries per job (model bound)
    termCount,     \* ghost: terminal outcomes recorded at the job's current epoch
    staleWriteChanged \* ghost: some write with an old epoch changed a job

vars == <<state, epoch, attempt, held, callbacks, snoozes, waits, adminRetries,
          termCount, staleWriteChanged>>

States   == {"scheduled", "available", "running", "waiting_external",
             "retryable", "completed", "failed", "cancelled"}
Terminal == {"completed", "failed", "cancelled"}

\* The worker writes that need a receipt. Each is one command of the core.
WriteKinds == {"heartbeat", "complete", "fail_retryable", "fail_terminal",
               "snooze", "wait_external", "cancel_attempt"}

Receipt(j, e) == <<j, e>>

-----------------------------------------------------------------------------
(* Helpers *)

\* Record one terminal outcome of j, at epoch e (the epoch after the step).
\* termCount[j] counts the outcomes recorded at the job's current epoch: a
\* step that records at a new epoch starts again from 1, and admin retry
\* (the one way out of a terminal state, which opens a new epoch - checked
\* by TerminalStaysTerminal) resets it to 0. Keeping the full history of
\* outcomes instead would multiply the states for nothing: in a correct
\* model termCount[j] is 1 exactly when the job is terminal.
RecordTerminal(j, e) ==
    termCount' = [termCount EXCEPT ![j] = IF e = epoch[j] THEN @ + 1 ELSE 1]

NoTerminal == UNCHANGED termCount

\* Some process holds the receipt of the current epoch of j.
HasHolder(j) == \E p \in Procs : Receipt(j, epoch[j]) \in held[p]

\* max_attempts of job j. Every job has the same here; trace validation
\* (LifecycleTrace.cfg) replaces this with the recorded jobs' own.
MaxAttemptsOf(j) == MaxAttempts

\* Where a failed attempt goes: retry while attempts remain.
AfterFailedAttempt(j) ==
    IF attempt[j] < MaxAttemptsOf(j) \/ (BUG_RETRY_PAST_MAX /\ attempt[j] = MaxAttemptsOf(j))
    THEN "retryable" ELSE "failed"

-----------------------------------------------------------------------------
(* Initial state: every job has been enqueued (Job::enqueue), either with a *)
(* future scheduled_at (scheduled) or to run now (available).             *)

Init ==
    /\ state \in [Jobs -> {"scheduled", "available"}]
    /\ epoch = [j \in Jobs |-> 0]
    /\ attempt = [j \in Jobs |-> 0]
    /\ held = [p \in Procs |-> {}]
    /\ callbacks = {}
    /\ snoozes = [j \in Jobs |-> 0]
    /\ waits = [j \in Jobs |-> 0]
    /\ adminRetries = [j \in Jobs |-> 0]
    /\ termCount = [j \in Jobs |-> 0]
    /\ staleWriteChanged = FALSE

-----------------------------------------------------------------------------
(* System actions (no receipt needed). *)

\* Job::promote: a scheduled job whose time has come, or a retryable job
\* whose backoff has passed, becomes available.
Promote(j) ==
    /\ \/ state[j] = "scheduled"
       \/ state[j] = "retryable" /\ ~BUG_PROMOTE_SKIPS_RETRYABLE
    /\ state' = [state EXCEPT ![j] = "available"]
    /\ UNCHANGED <<callbacks, epoch, attempt, held, snoozes, waits, adminRetries, termCount, staleWriteChanged>>

\* Job::claim: a new attempt. The epoch bump is what fences every earlier
\* receipt of this job out; the receipt handed to p is the only live one.
Claim(p, j) ==
    \* one attempt at a time per process: a worker with a receipt it still
    \* believes in (including one whose ack it is waiting for) is busy
    /\ held[p] = {}
    /\ state[j] = "available"
    \* (the bug, like the core's mutation, only spares the first claim)
    /\ LET e == IF BUG_CLAIM_NO_EPOCH_BUMP /\ epoch[j] > 0 THEN epoch[j] ELSE epoch[j] + 1 IN
       /\ state' = [state EXCEPT ![j] = "running"]
       /\ epoch' = [epoch EXCEPT ![j] = e]
       /\ attempt' = [attempt EXCEPT ![j] = @ + 1]
       /\ held' = [held EXCEPT ![p] = @ \cup {Receipt(j, e)}]
    /\ UNCHANGED <<callbacks, snoozes, waits, adminRetries, termCount, staleWriteChanged>>

\* Job::rescue: the heartbeat of a running job went stale or its deadline
\* passed: its holder crashed (nobody has the receipt any more) or, with
\* PAUSE, is paused or just slow (from the database's point of view these
\* are the same). The epoch bump fences the holder out if it comes back.
Rescue(j) ==
    /\ state[j] = "running"
    /\ PAUSE \/ ~HasHolder(j)
    /\ LET s == AfterFailedAttempt(j)
           e == IF BUG_RESCUE_NO_EPOCH_BUMP THEN epoch[j] ELSE epoch[j] + 1 IN
       /\ state' = [state EXCEPT ![j] = s]
       /\ epoch' = [epoch EXCEPT ![j] = e]
       /\ IF s \in Terminal THEN RecordTerminal(j, e) ELSE NoTerminal
    /\ UNCHANGED <<callbacks, attempt, held, snoozes, waits, adminRetries, staleWriteChanged>>

\* Job::resume_external: the external callback arrives with the receipt of
\* the attempt that started waiting. Accepted only for the current epoch of
\* a waiting job; then the job is available again and the parked attempt
\* is refunded (waiting is not failing; the next claim counts it again). A
\* callback may be delivered twice (LOST_ACK) or after the wait expired:
\* the guard must reject those.
ResumeAccepts(r) == state[r[1]] = "waiting_external" /\ epoch[r[1]] = r[2]

ResumeExternal(r) ==
    LET j  == r[1]
        ok == ResumeAccepts(r)
    IN
    /\ r \in callbacks
    /\ IF ok
       THEN /\ state' = [state EXCEPT ![j] = "available"]
            /\ attempt' = [attempt EXCEPT ![j] = @ - 1]
       ELSE UNCHANGED <<state, attempt>>
    /\ \E keep \in IF ok /\ LOST_ACK THEN {TRUE, FALSE} ELSE {FALSE} :
          callbacks' = IF keep THEN callbacks ELSE callbacks \ {r}
    /\ staleWriteChanged' = (staleWriteChanged \/ (ok /\ r[2] /= epoch[j]))
    /\ UNCHANGED <<epoch, held, snoozes, waits, adminRetries, termCount>>

\* Job::expire_external: the callback never came before its deadline. That
\* counts as a failed attempt; like rescue it bumps the epoch.
ExpireExternal(j) ==
    /\ state[j] = "waiting_external"
    /\ LET s == AfterFailedAttempt(j)
           e == epoch[j] + 1 IN
       /\ state' = [state EXCEPT ![j] = s]
       /\ epoch' = [epoch EXCEPT ![j] = e]
       /\ IF s \in Terminal THEN RecordTerminal(j, e) ELSE NoTerminal
    /\ UNCHANGED <<callbacks, attempt, held, snoozes, waits, adminRetries, staleWriteChanged>>

\* Job::cancel: any non-terminal job, running ones included. The bump
\* fences out the worker that is still running it.
Cancel(j) ==
    /\ CANCEL
    /\ state[j] \notin Terminal
    /\ LET e == IF BUG_CANCEL_NO_EPOCH_BUMP THEN epoch[j] ELSE epoch[j] + 1 IN
       /\ state' = [state EXCEPT ![j] = "cancelled"]
       /\ epoch' = [epoch EXCEPT ![j] = e]
       /\ RecordTerminal(j, e)
    /\ UNCHANGED <<callbacks, attempt, held, snoozes, waits, adminRetries, staleWriteChanged>>

\* Job::admin_retry: the only way out of a terminal state. It opens a new
\* epoch, so the old terminal outcome stays the only one of its epoch.
AdminRetry(j) ==
    /\ ADMIN_RETRY
    /\ state[j] \in {"failed", "cancelled"}
    /\ adminRetries[j] < MaxAdminRetries
    /\ state' = [state EXCEPT ![j] = "available"]
    /\ epoch' = [epoch EXCEPT ![j] = IF BUG_ADMIN_RETRY_RESETS_EPOCH THEN 0 ELSE @ + 1]
    /\ attempt' = [attempt EXCEPT ![j] = 0]
    /\ adminRetries' = [adminRetries EXCEPT ![j] = @ + 1]
    /\ termCount' = [termCount EXCEPT ![j] = 0]
    /\ UNCHANGED <<callbacks, held, snoozes, waits, staleWriteChanged>>

-----------------------------------------------------------------------------
(* Worker writes (need a receipt). *)

\* The guard of the core: the receipt is for the current epoch of a running
\* job. The two BUG_ switches each weaken one half of it, for complete only.
Accepts(j, e, kind) ==
    /\ \/ state[j] = "running"
       \/ BUG_COMPLETE_REAPPLIES /\ kind = "complete" /\ state[j] = "completed"
    /\ \/ epoch[j] = e
       \/ BUG_COMPLETE_NO_EPOCH_CHECK /\ kind = "complete"

\* What an accepted write does to <<state, epoch, attempt>>. Worker writes
\* do not bump the epoch (the worker keeps using the same receipt until its
\* attempt ends), except cancel_attempt, which is a cancel.
Effect(j, kind) ==
    CASE kind = "heartbeat"      -> <<"running", epoch[j], attempt[j]>>
      [] kind = "complete"       -> <<"completed", epoch[j], attempt[j]>>
      [] kind = "fail_retryable" -> <<AfterFailedAttempt(j), epoch[j], attempt[j]>>
      [] kind = "fail_terminal"  -> <<"failed", epoch[j], attempt[j]>>
         \* snooze gives the attempt back: a snoozed job did not fail
      [] kind = "snooze"         -> <<"scheduled", epoch[j],
                                      IF BUG_SNOOZE_CONSUMES_ATTEMPT
                                      THEN attempt[j] ELSE attempt[j] - 1>>
      [] kind = "wait_external"  -> <<"waiting_external", epoch[j], attempt[j]>>
         \* the handler cancels its own job: a cancel, so the epoch moves on
      [] kind = "cancel_attempt" -> <<"cancelled", epoch[j] + 1, attempt[j]>>

\* Job::heartbeat / complete / fail / snooze / wait_external /
\* cancel_attempt, by process p with receipt r. A rejected write leaves the job as it is and the worker
\* drops the receipt (it has learnt that its attempt is over). An accepted
\* write that ends the attempt drops the receipt too, unless its ack is lost
\* (LOST_ACK): then the worker still holds it and may send a write with it
\* again later (a retry of the same one, or any other), which is the late
\* duplicate the guard must reject.
Write(p, r, kind) ==
    LET j   == r[1]
        ok  == Accepts(j, r[2], kind)
        old == <<state[j], epoch[j], attempt[j]>>
        new == IF ok THEN Effect(j, kind) ELSE old
        keepChoices ==
            IF ok /\ kind = "heartbeat" THEN {TRUE}
            ELSE IF ok /\ LOST_ACK THEN {TRUE, FALSE}
            ELSE {FALSE}
    IN
    /\ r \in held[p]
    \* model bounds on how often a worker chooses to park the job
    /\ kind = "snooze" => snoozes[j] < MaxSnoozes
    /\ kind = "wait_external" => waits[j] < MaxWaits
    /\ kind = "cancel_attempt" => CANCEL
    /\ state' = [state EXCEPT ![j] = new[1]]
    /\ epoch' = [epoch EXCEPT ![j] = new[2]]
    /\ attempt' = [attempt EXCEPT ![j] = new[3]]
    /\ snoozes' = IF ok /\ kind = "snooze" THEN [snoozes EXCEPT ![j] = @ + 1] ELSE snoozes
    /\ waits' = IF ok /\ kind = "wait_external" THEN [waits EXCEPT ![j] = @ + 1] ELSE waits
    /\ IF ok /\ new[1] \in Terminal THEN RecordTerminal(j, new[2]) ELSE NoTerminal
    /\ \E keep \in keepChoices :
          held' = IF keep THEN held ELSE [held EXCEPT ![p] = @ \ {r}]
    \* a job that waits for a callback hands its receipt to the external system
    /\ callbacks' = IF ok /\ kind = "wait_external" THEN callbacks \cup {r} ELSE callbacks
    \* compare in the action: an old receipt that changed the job is the bug
    /\ staleWriteChanged' = (staleWriteChanged \/ (r[2] /= epoch[j] /\ new /= old))
    /\ UNCHANGED adminRetries

-----------------------------------------------------------------------------
(* Process faults. *)

\* A crash loses every receipt (the process restarts with nothing). Only
\* interesting when it held something.
Crash(p) ==
    /\ CRASH
    /\ held[p] /= {}
    /\ held' = [held EXCEPT ![p] = {}]
    /\ UNCHANGED <<callbacks, state, epoch, attempt, snoozes, waits, adminRetries, termCount, staleWriteChanged>>

\* Every job is final: the behaviour may stutter here, since a queue that
\* has finished its work is not deadlocked. Deadlock checking stays on, so
\* a state where a job is stuck and nothing is enabled is still reported.
Done ==
    /\ \A j \in Jobs : state[j] \in Terminal
    /\ UNCHANGED vars

Next ==
    \/ \E j \in Jobs :
          \/ Promote(j) \/ Rescue(j) \/ ExpireExternal(j)
          \/ Cancel(j) \/ AdminRetry(j)
          \/ \E p \in Procs : Claim(p, j)
    \/ \E p \in Procs :
          \/ \E r \in held[p], kind \in WriteKinds : Write(p, r, kind)
          \/ Crash(p)
    \/ \E r \in callbacks : ResumeExternal(r)
    \/ Done

Spec == Init /\ [][Next]_vars

\* Liveness: only with the faults switched off (see LifecycleLiveness.cfg).
\* Weak fairness on the system's own actions and on the worker finishing:
\* a worker that holds the live receipt eventually completes (it may still
\* fail or snooze first; attempts and the model bounds make that finite).
Fairness ==
    \A j \in Jobs :
        /\ WF_vars(\E p \in Procs : Claim(p, j))
        /\ WF_vars(\E p \in Procs : Write(p, Receipt(j, epoch[j]), "complete"))
        /\ WF_vars(Promote(j))
        /\ WF_vars(Rescue(j))
        /\ WF_vars((\E r \in callbacks : r[1] = j /\ ResumeExternal(r)) \/ ExpireExternal(j))

LiveSpec == Spec /\ Fairness

-----------------------------------------------------------------------------
(* Invariants (same names as weir_core::invariants::Violation and the     *)
(* stateright properties).                                                 *)

TypeOK ==
    /\ state \in [Jobs -> States]
    /\ epoch \in [Jobs -> Nat]
    /\ attempt \in [Jobs -> Nat]
    /\ held \in [Procs -> SUBSET (Jobs \X Nat)]
    /\ callbacks \subseteq (Jobs \X Nat)
    /\ snoozes \in [Jobs -> 0..MaxSnoozes]
    /\ waits \in [Jobs -> 0..MaxWaits]
    /\ adminRetries \in [Jobs -> 0..MaxAdminRetries]
    /\ termCount \in [Jobs -> Nat]
    /\ staleWriteChanged \in BOOLEAN

\* A write carrying an old epoch never changes a job. Write compares the
\* job before and after and raises the ghost flag if it did.
StaleWriteNeverChangesJob == ~staleWriteChanged

\* At most one process holds the live receipt (current epoch) of a running
\* job. Zero is allowed: the holder may have crashed; rescue handles that.
AtMostOneLiveAttempt ==
    \A j \in Jobs :
        state[j] = "running" =>
            Cardinality({p \in Procs : Receipt(j, epoch[j]) \in held[p]}) <= 1

\* At most one terminal outcome per (job, epoch). See RecordTerminal.
AtMostOneTerminalPerEpoch == \A j \in Jobs : termCount[j] <= 1

\* Attempts never exceed max_attempts (snooze and external waits refund).
AttemptsBounded == \A j \in Jobs : attempt[j] <= MaxAttemptsOf(j)

\* Every job is in exactly one of the eight states. With a state function
\* this holds by construction; TLC checks it anyway so that the invariant
\* list is the same as the core's, whose World keeps per-state indexes
\* where losing or duplicating a job is a real possibility.
NoJobLost ==
    \A j \in Jobs : Cardinality({s \in States : state[j] = s}) = 1

(* Action properties, checked on every step (PROPERTY in the cfg). *)

\* Epochs only grow.
EpochsOnlyGrow == [][\A j \in Jobs : epoch'[j] >= epoch[j]]_vars

\* Terminal states stay terminal unless an admin retry opens a new epoch.
\* (Only "new": that the new epoch is larger is EpochsOnlyGrow's job.)
TerminalStaysTerminal ==
    [][\A j \in Jobs :
         state[j] \in Terminal /\ state'[j] /= state[j] =>
             state'[j] = "available" /\ epoch'[j] /= epoch[j]]_vars

\* Taking a live attempt away from its holder - rescue, cancel, or the
\* expiry of an external wait - moves the epoch on, so the holder's
\* receipt is recognisably stale (Reject::StaleEpoch), whatever state the
\* job is in by the time the late write arrives. The core checks this on
\* the command (check_step); here the step is named by its action.
\* Note: given the "running" half of the write guard and the bump on claim,
\* none of the invariants above breaks without these bumps (TLC finds no
\* violation); this property is what pins them down.
TakeawayBumpsEpoch ==
    [][\A j \in Jobs :
         (Rescue(j) \/ Cancel(j) \/ ExpireExternal(j))
         /\ state[j] \in {"running", "waiting_external"}
         => epoch'[j] > epoch[j]]_vars

(* Liveness. *)

\* With faults off, every job ends up terminal and stays so.
EveryJobTerminates == <>[](\A j \in Jobs : state[j] \in Terminal)

(* Symmetry: jobs are interchangeable, and so are processes. *)
Symmetry == Permutations(Jobs) \cup Permutations(Procs)

=============================================================================
