----------------------------- MODULE Semaphore -----------------------------
(***************************************************************************)
(* A named semaphore of N slots (weir_core::semaphore).                    *)
(*                                                                         *)
(* A process acquires by scanning slots 0..N-1 in order and taking the     *)
(* first free one (Semaphore::try_slot, one try per slot). A try may fail  *)
(* with an error (lock timeout, lost connection): that slot is skipped and *)
(* the scan goes on, an error is not fatal. A scan that finds nothing is a *)
(* miss: the process sleeps a jittered pause, never past its deadline      *)
(* (wait_max), and scans again; once the deadline has come it gives up     *)
(* holding nothing. The sans-IO Acquisition (poll / handle_try) makes these    *)
(* decisions; this spec lets TLC interleave them with other processes,     *)
(* renewals, releases (idempotent, possibly delivered twice) and crashes.  *)
(*                                                                         *)
(* Two kinds of holder, as in the core (Hold::Session / Hold::Lease):      *)
(*   - session holders hold until they release or their session ends; a   *)
(*     crash ends the session and Semaphore::release_holder frees the slot *)
(*     at once;                                                            *)
(*   - lease holders hold for LeaseTTL ticks and renew; a holder that does *)
(*     not renew in time (slow, or crashed) loses the slot when the lease  *)
(*     runs out (Semaphore::expire; the core already treats a lapsed hold  *)
(*     as free). A live holder notices on the same clock and stops         *)
(*     believing it holds.                                                 *)
(*                                                                         *)
(* Modelling choices:                                                      *)
(*   - Time is discrete and RELATIVE: instead of timestamps we keep what   *)
(*     is left of each timer (wait budget, pause, lease), and Tick counts  *)
(*     them all down. Situations that differ only in when they happened   *)
(*     are one state, which keeps this small enough for liveness, and time *)
(*     never has to stop at a horizon.                                     *)
(*   - A scan step is instantaneous; Tick may fall between two of them.    *)
(*   - Each process makes one acquisition, and a session holder may once  *)
(*     release and at once take the same slot again (Return: the runtime's *)
(*     limiter gives a permit back and takes one for its next job under    *)
(*     one process id). Every take bumps the slot's epoch, and a grant     *)
(*     carries it (SlotGrant.epoch): the release of the earlier holding,   *)
(*     delivered again late, must not free the new one.                    *)
(***************************************************************************)
EXTENDS Integers, FiniteSets, TLC

CONSTANTS
    SessionProcs,   \* processes that hold for their session (model values)
    LeaseProcs,     \* processes that hold a renewable lease (model values)
    N,              \* semaphore size (permits)
    WaitMax,        \* wait_max: time budget of one acquisition
    RetryPause,     \* retry_max (retry_min is 1): the jitter picks 1..RetryPause
    LeaseTTL,       \* a lease hold's length, from acquisition or renewal
    ERRORS,         \* a try may fail with an error
    CRASH,          \* holders may crash
    RETURNS,        \* how many times a session holder may Return (0 or 1)
    \* Deliberate bugs; each one must be caught by a named property.
    BUG_ACQUIRE_NO_HOLDER_CHECK,  \* try_slot takes the slot even if it is held
    BUG_SCAN_STOPS_AT_ERROR,      \* an error ends the scan: sleep, skip the rest
    BUG_IGNORES_DEADLINE,         \* poll never times out; it keeps rescanning
    BUG_RELEASE_ANY_HOLDER,       \* a release frees the slot whoever holds it
    BUG_RELEASE_NO_EPOCH_CHECK,   \* a release checks the holder, not the epoch
    BUG_SESSION_END_KEEPS_SLOT    \* session end does not free the slot

ASSUME N \in Nat \ {0} /\ WaitMax \in Nat \ {0} /\ RetryPause \in Nat \ {0}
ASSUME LeaseTTL \in Nat \ {0} /\ SessionProcs \cap LeaseProcs = {}
ASSUME RETURNS \in Nat

Procs   == SessionProcs \cup LeaseProcs
Slots   == 0..(N - 1)
None    == "none"
NoSlot  == -1
Session == -1     \* slot[i].lease of a session hold (it never runs out)

Phases == {"idle",      \* not acquiring yet
           "scanning",  \* trying slots idx[p], idx[p]+1, ...
           "waiting",   \* missed; pausing for sleep[p] more ticks
           "holding",   \* holds slot mine[p]
           "released",  \* released slot mine[p] (may deliver the release again)
           "lapsed",    \* a lease holder whose lease ran out before it renewed
           "timedout",  \* reached its deadline holding nothing
           "crashed"}   \* crashed while holding

VARIABLES
    slot,      \* slot[i] = [holder, lease, epoch]: lease = Session, the ticks
               \*           left of a lease hold (1..LeaseTTL), or 0 when
               \*           free; epoch is bumped by every take
    phase,     \* phase[p]
    idx,       \* idx[p]: next slot to try in the current scan
    tried,     \* ghost: tried[p] = slots tried in the current scan
    budget,    \* budget[p]: ticks left until the deadline (scanning, waiting)
    sleep,     \* sleep[p]: ticks left of the current pause (waiting)
    mine,      \* mine[p]: the slot p holds / released, or NoSlot
    held,      \* held[p]: the epoch of p's grant of mine[p] (0 for none)
    late,      \* late[p]: the grant [slot, epoch] of a release p sent
               \*          before it took its slot again, to be delivered
               \*          a second time, or NoGrant
    returns    \* returns left (Return: release and take the slot again)

\* Fields that do not matter in a phase are kept at 0 / NoSlot, so that
\* states that differ only in dead values are not counted twice.

vars == <<slot, phase, idx, tried, budget, sleep, mine, held, late, returns>>

Min(a, b) == IF a < b THEN a ELSE b
Dec(x)    == IF x > 0 THEN x - 1 ELSE 0

NoGrant == [slot |-> NoSlot, epoch |-> 0]

\* Slot i freed: no holder, its epoch kept (epochs only grow).
Freed(i) == [holder |-> None, lease |-> 0, epoch |-> slot[i].epoch]

\* Who holds slot i, as the database sees it (Slot::holder_at). A lease is
\* written back as free the moment it runs out (see Tick), so a row with a
\* holder is held.
Holder(i) == slot[i].holder

-----------------------------------------------------------------------------

Init ==
    /\ slot = [i \in Slots |-> [holder |-> None, lease |-> 0, epoch |-> 0]]
    /\ phase = [p \in Procs |-> "idle"]
    /\ idx = [p \in Procs |-> 0]
    /\ tried = [p \in Procs |-> 0]
    /\ budget = [p \in Procs |-> 0]
    /\ sleep = [p \in Procs |-> 0]
    /\ mine = [p \in Procs |-> NoSlot]
    /\ held = [p \in Procs |-> 0]
    /\ late = [p \in Procs |-> NoGrant]
    /\ returns = RETURNS

\* One unit of time passes: every timer counts down. A lease that runs out
\* frees its slot (Semaphore::expire), and a live holder of it, reading the
\* same clock, knows it no longer holds.
Lapses == {i \in Slots : slot[i].lease = 1}

Tick ==
    /\ budget' = [p \in Procs |-> Dec(budget[p])]
    /\ sleep' = [p \in Procs |-> Dec(sleep[p])]
    /\ slot' = [i \in Slots |->
                  IF i \in Lapses THEN Freed(i)
                  ELSE IF slot[i].lease > 1 THEN [slot[i] EXCEPT !.lease = @ - 1]
                  ELSE slot[i]]
    /\ phase' = [p \in Procs |->
                   IF phase[p] = "holding" /\ mine[p] \in Lapses THEN "lapsed" ELSE phase[p]]
    /\ mine' = [p \in Procs |->
                  IF phase[p] = "holding" /\ mine[p] \in Lapses THEN NoSlot ELSE mine[p]]
    /\ held' = [p \in Procs |->
                  IF phase[p] = "holding" /\ mine[p] \in Lapses THEN 0 ELSE held[p]]
    /\ UNCHANGED <<idx, tried, late, returns>>

\* A caller starts an acquisition (Acquisition::new) with the full budget.
Start(p) ==
    /\ phase[p] = "idle"
    /\ phase' = [phase EXCEPT ![p] = "scanning"]
    /\ budget' = [budget EXCEPT ![p] = WaitMax]
    /\ UNCHANGED <<slot, idx, tried, sleep, mine, held, late, returns>>

\* Acquisition::poll gives up once the deadline has come: before the next
\* try of a scan, or when a pause ends (a pause never runs past it).
DeadlineReached(p) == budget[p] = 0 /\ ~BUG_IGNORES_DEADLINE

TimeOut(p) ==
    /\ DeadlineReached(p)
    /\ phase[p] = "scanning" \/ (phase[p] = "waiting" /\ sleep[p] = 0)
    /\ phase' = [phase EXCEPT ![p] = "timedout"]
    /\ idx' = [idx EXCEPT ![p] = 0]
    /\ tried' = [tried EXCEPT ![p] = 0]
    /\ UNCHANGED <<slot, budget, sleep, mine, held, late, returns>>

\* One try of slot idx[p]: poll yields Try(i), Semaphore::try_slot runs it
\* (or the try fails with an error), Acquisition::handle_try takes the result.
Try(p) ==
    /\ phase[p] = "scanning"
    /\ idx[p] < N
    /\ ~DeadlineReached(p)
    /\ LET i == idx[p] IN
       \/ \* the try failed with an error: skip this slot (with the bug the
          \* scan stops here and counts as a miss)
          /\ ERRORS
          /\ idx' = [idx EXCEPT ![p] = IF BUG_SCAN_STOPS_AT_ERROR THEN N ELSE i + 1]
          /\ tried' = [tried EXCEPT ![p] = @ + 1]
          /\ UNCHANGED <<slot, phase, budget, mine, held>>
       \/ \* the slot is free: take it, for the session or with a lease
          /\ Holder(i) = None \/ BUG_ACQUIRE_NO_HOLDER_CHECK
          /\ slot' = [slot EXCEPT ![i] =
                        [holder |-> p,
                         lease |-> IF p \in LeaseProcs THEN LeaseTTL ELSE Session,
                         epoch |-> slot[i].epoch + 1]]
          /\ phase' = [phase EXCEPT ![p] = "holding"]
          /\ mine' = [mine EXCEPT ![p] = i]
          /\ held' = [held EXCEPT ![p] = slot[i].epoch + 1]
          /\ idx' = [idx EXCEPT ![p] = 0]
          /\ tried' = [tried EXCEPT ![p] = 0]
          /\ budget' = [budget EXCEPT ![p] = 0]
       \/ \* the slot is held: try the next one
          /\ Holder(i) /= None
          /\ idx' = [idx EXCEPT ![p] = i + 1]
          /\ tried' = [tried EXCEPT ![p] = @ + 1]
          /\ UNCHANGED <<slot, phase, mine, budget, held>>
    /\ UNCHANGED <<sleep, late, returns>>

\* The scan went past the last slot: a miss. Sleep for a jittered pause of
\* 1..RetryPause, cut to the deadline (never sleep past it).
Miss(p) ==
    /\ phase[p] = "scanning"
    /\ idx[p] = N
    /\ ~DeadlineReached(p)
    /\ phase' = [phase EXCEPT ![p] = "waiting"]
    /\ idx' = [idx EXCEPT ![p] = 0]
    /\ \E w \in 1..RetryPause : sleep' = [sleep EXCEPT ![p] = Min(w, budget[p])]
    /\ UNCHANGED <<slot, tried, budget, mine, held, late, returns>>

\* The pause is over and the deadline has not come: scan again from slot 0.
WakeUp(p) ==
    /\ phase[p] = "waiting"
    /\ sleep[p] = 0
    /\ ~DeadlineReached(p)
    /\ phase' = [phase EXCEPT ![p] = "scanning"]
    /\ tried' = [tried EXCEPT ![p] = 0]
    /\ UNCHANGED <<slot, idx, budget, sleep, mine, held, late, returns>>

\* Semaphore::renew: a lease holder extends its lease (only while it still
\* holds; a lapsed hold cannot be renewed).
Renew(p) ==
    /\ phase[p] = "holding"
    /\ p \in LeaseProcs
    /\ slot' = [slot EXCEPT ![mine[p]].lease = LeaseTTL]
    /\ UNCHANGED <<phase, idx, tried, budget, sleep, mine, held, late, returns>>

\* Semaphore::release of p's grant [slot i, epoch e]: frees the slot only
\* if that grant still holds it, its holder and its epoch, so a release
\* delivered twice is a no-op, even once p holds the slot again.
Frees(p, i, e) ==
    \/ BUG_RELEASE_ANY_HOLDER
    \/ slot[i].holder = p /\ (slot[i].epoch = e \/ BUG_RELEASE_NO_EPOCH_CHECK)

ReleaseEffect(p, i, e) ==
    slot' = IF Frees(p, i, e) THEN [slot EXCEPT ![i] = Freed(i)] ELSE slot

Release(p) ==
    /\ phase[p] = "holding"
    /\ ReleaseEffect(p, mine[p], held[p])
    /\ phase' = [phase EXCEPT ![p] = "released"]
    /\ UNCHANGED <<idx, tried, budget, sleep, mine, held, late, returns>>

\* The same release arrives again (client retry after a lost response).
DuplicateRelease(p) ==
    /\ phase[p] = "released"
    /\ ReleaseEffect(p, mine[p], held[p])
    /\ UNCHANGED <<phase, idx, tried, budget, sleep, mine, held, late, returns>>

\* A session holder releases its slot and at once takes it again (the
\* release frees it; the take is Semaphore::try_slot of a free slot, with
\* a new epoch). The release will be delivered a second time (LateRelease).
Return(p) ==
    /\ returns > 0
    /\ phase[p] = "holding"
    /\ p \in SessionProcs
    /\ LET i == mine[p] IN
       /\ slot' = [slot EXCEPT ![i] =
                     [holder |-> p, lease |-> Session, epoch |-> slot[i].epoch + 1]]
       /\ held' = [held EXCEPT ![p] = slot[i].epoch + 1]
       /\ late' = [late EXCEPT ![p] = [slot |-> i, epoch |-> held[p]]]
    /\ returns' = returns - 1
    /\ UNCHANGED <<phase, idx, tried, budget, sleep, mine>>

\* The earlier release of a returned holder, delivered again.
LateRelease(p) ==
    /\ late[p] /= NoGrant
    /\ ReleaseEffect(p, late[p].slot, late[p].epoch)
    /\ late' = [late EXCEPT ![p] = NoGrant]
    /\ UNCHANGED <<phase, idx, tried, budget, sleep, mine, held, returns>>

\* A holder crashes. A session holder's session ends:
\* Semaphore::release_holder frees its slot at once. A lease holder just
\* vanishes; its lease runs out (Tick).
Crash(p) ==
    /\ CRASH
    /\ phase[p] = "holding"
    /\ slot' = IF p \in SessionProcs /\ ~BUG_SESSION_END_KEEPS_SLOT
               THEN [slot EXCEPT ![mine[p]] = Freed(mine[p])]
               ELSE slot
    /\ phase' = [phase EXCEPT ![p] = "crashed"]
    /\ mine' = [mine EXCEPT ![p] = NoSlot]
    /\ held' = [held EXCEPT ![p] = 0]
    /\ late' = [late EXCEPT ![p] = NoGrant]
    /\ UNCHANGED <<idx, tried, budget, sleep, returns>>

Next ==
    \/ Tick
    \/ \E p \in Procs :
          \/ Start(p) \/ Try(p) \/ Miss(p) \/ WakeUp(p) \/ TimeOut(p)
          \/ Renew(p) \/ Release(p) \/ DuplicateRelease(p) \/ Crash(p)
          \/ Return(p) \/ LateRelease(p)

Spec == Init /\ [][Next]_vars

\* Weak fairness on the acquisition machine and on time. Renewals and
\* releases are not fair: a holder may keep its slot for good (or let its
\* lease lapse), and waiters must still finish.
Fairness ==
    /\ WF_vars(Tick)
    /\ \A p \in Procs :
          /\ WF_vars(Try(p)) /\ WF_vars(Miss(p))
          /\ WF_vars(WakeUp(p)) /\ WF_vars(TimeOut(p))

LiveSpec == Spec /\ Fairness

-----------------------------------------------------------------------------
(* Invariants *)

TypeOK ==
    /\ \A i \in Slots : /\ slot[i].holder \in Procs \cup {None}
                        /\ slot[i].lease \in {Session} \cup 0..LeaseTTL
                        /\ slot[i].epoch \in Nat
    /\ phase \in [Procs -> Phases]
    /\ idx \in [Procs -> 0..N]
    /\ tried \in [Procs -> 0..N]
    /\ budget \in [Procs -> 0..WaitMax]
    /\ sleep \in [Procs -> 0..RetryPause]
    /\ mine \in [Procs -> Slots \cup {NoSlot}]
    /\ held \in [Procs -> Nat]
    /\ late \in [Procs -> [slot : Slots \cup {NoSlot}, epoch : Nat]]
    /\ returns \in 0..RETURNS

Holding == {p \in Procs : phase[p] = "holding"}

\* Never more than N processes believe they hold a slot.
AtMostNHolders == Cardinality(Holding) <= N

\* No slot has two holders: every process that believes it holds a slot is
\* the slot's holder in the database, with its grant's epoch, so two of
\* them cannot share one.
NoSlotWithTwoHolders ==
    /\ \A p \in Holding : Holder(mine[p]) = p /\ slot[mine[p]].epoch = held[p]
    /\ \A p, q \in Holding : p /= q => mine[p] /= mine[q]

\* A crashed holder's slot becomes free: once its session ended at once,
\* once its lease ran out otherwise. Lapsed leases are freed by Tick, so
\* what is left to check is that a crashed holder still holds a slot only
\* while a lease is running down for it.
CrashedHolderSlotFreed ==
    \A i \in Slots :
        Holder(i) /= None /\ phase[Holder(i)] = "crashed" => slot[i].lease >= 1

\* A waiter never sleeps past its deadline.
NeverSleepsPastDeadline ==
    \A p \in Procs : phase[p] = "waiting" => sleep[p] <= budget[p]

\* A scan tries every slot (an erroring one is skipped, not fatal) before
\* it sleeps.
ScanTriesEverySlot ==
    \A p \in Procs : phase[p] = "waiting" => tried[p] = N

(* Liveness *)

\* Every process that starts waiting eventually holds a slot or times out.
EachWaiterAcquiresOrTimesOut ==
    \A p \in Procs : phase[p] = "scanning" ~> phase[p] \in {"holding", "timedout"}

Symmetry == Permutations(SessionProcs) \cup Permutations(LeaseProcs)

=============================================================================
