--------------------------- MODULE LifecycleTrace ---------------------------
(***************************************************************************)
(* Trace validation of Lifecycle.tla: is a recorded run of the core a      *)
(* behaviour of the spec?                                                  *)
(*                                                                         *)
(* LifecycleTraceData (written by weir_model_check::tla_trace from a       *)
(* simulator run replayed through the core; see correctness/README.md,     *)
(* "Trace validation") holds the run as a sequence of events: each names   *)
(* the Lifecycle action it stands for, its arguments, whether the core     *)
(* accepted it, and the job's (state, epoch, attempt) afterwards as the    *)
(* core has it. TraceNext takes event i + 1 with that action of the spec   *)
(* (the spec's own definition, with those arguments) and requires the      *)
(* spec's job to end up exactly as the core's did. There is no choice      *)
(* left: one state per event. If some event cannot be taken - the core     *)
(* accepted what the spec rejects, or left the job in a state the spec     *)
(* does not reach - TraceAccepted fails at that event and prints it.       *)
(*                                                                         *)
(* The spec is coarser than the core in three places (MAPPING.md, "Trace   *)
(* validation"): a snooze into the past is a snooze and a promote here; a *)
(* pruned job stays final here and later commands on it are stutters that *)
(* the core must reject; a write or callback with a receipt the spec's     *)
(* process has already given up (it was rejected once, or its attempt      *)
(* ended and it was not used again) is a stutter that the spec's guard     *)
(* must reject too.                                                        *)
(***************************************************************************)
EXTENDS Lifecycle, LifecycleTraceData, Sequences, TLC

VARIABLES
    i,       \* events taken so far
    pruned   \* jobs the core has deleted (the spec keeps them, final)

traceVars == <<vars, i, pruned>>

(* The constants the cfg substitutes: the recorded jobs and one spec process *)
(* per claim (0 stands for "nobody": a receipt that was never issued).      *)
TraceJobs == 1..TraceJobCount
TraceProcs == 0..TraceProcCount
TraceMaxAttemptsOf(j) == TraceMaxAttempts[j]
Big == 1000000   \* the model bounds (snoozes, waits, admin retries) are off
\* TLC evaluates every constant definition up front, Lifecycle's Symmetry
\* (all permutations of hundreds of jobs) too: the cfg replaces it by this.
NoSymmetry == {}

Event == Trace[i + 1]

\* The spec's Init, with each job's state as the core enqueued it.
TraceInit ==
    /\ state = [j \in Jobs |-> TraceInitial[j]]
    /\ Init
    /\ i = 0
    /\ pruned = {}

\* The job as the core has it after the event (or deleted by prune).
PostMatches(e) ==
    e.job \in Jobs =>
        IF e.post[1] = "gone"
        THEN e.job \in pruned'
        ELSE <<state'[e.job], epoch'[e.job], attempt'[e.job]>> = e.post

\* A command the spec cannot take at all, which the core refused: nothing
\* changes, and the spec must agree it could not have been taken.
Refused(e, cannot) == /\ ~e.ok /\ cannot /\ UNCHANGED vars

TakeEvent(e) ==
    LET j == e.job
        r == Receipt(e.job, e.epoch)
    IN
    CASE e.kind = "claim" ->
            Claim(e.proc, j)
      [] e.kind = "write" ->
            \/ /\ r \in held[e.proc]
               /\ e.ok = Accepts(j, e.epoch, e.write)
               /\ Write(e.proc, r, e.write)
               /\ (r \in held'[e.proc]) = e.keep
            \/ /\ r \notin held[e.proc]
               /\ Refused(e, ~Accepts(j, e.epoch, e.write))
      [] e.kind = "resume" ->
            \/ /\ r \in callbacks
               /\ e.ok = ResumeAccepts(r)
               /\ ResumeExternal(r)
               /\ (r \in callbacks') = e.keep
            \/ /\ r \notin callbacks
               /\ Refused(e, ~ResumeAccepts(r))
      [] e.kind = "promote" ->
            Promote(j)
      [] e.kind = "rescue" ->
            Rescue(j) \/ ExpireExternal(j)
      [] e.kind = "cancel" ->
            IF e.ok THEN Cancel(j) ELSE Refused(e, ~ENABLED Cancel(j))
      [] e.kind = "retry" ->
            IF e.ok THEN AdminRetry(j)
            ELSE Refused(e, j \in pruned \/ ~ENABLED AdminRetry(j))
      [] e.kind = "crash" ->
            Crash(e.proc)
      [] e.kind = "prune" ->
            /\ state[j] \in Terminal
            /\ UNCHANGED vars

TraceNext ==
    \/ /\ i < Len(Trace)
       /\ TakeEvent(Event)
       /\ pruned' = IF Event.kind = "prune" THEN pruned \cup {Event.job} ELSE pruned
       /\ i' = i + 1
       /\ PostMatches(Event)
    \* the whole trace was taken: stutter (not a deadlock)
    \/ /\ i = Len(Trace)
       /\ UNCHANGED traceVars

TraceSpec == TraceInit /\ [][TraceNext]_traceVars

\* Every event can be taken in turn. When one cannot, this prints it with
\* the spec's view of its job, and fails.
TraceAccepted ==
    \/ i = Len(Trace)
    \/ ENABLED TraceNext
    \/ /\ PrintT(<<"trace diverges at event", i + 1, "of", Len(Trace), TraceName, Event,
                   "spec has", IF Event.job \in Jobs
                               THEN <<state[Event.job], epoch[Event.job], attempt[Event.job]>>
                               ELSE held[Event.proc]>>)
       /\ FALSE

=============================================================================
