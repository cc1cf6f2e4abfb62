------------------------------ MODULE Claimer ------------------------------
(***************************************************************************)
(* Claimer leases of one queue (weir_core::claimer).                       *)
(*                                                                         *)
(* A queue has at most K claimer slots. A process claims jobs from the     *)
(* queue only while it owns an unexpired slot. Slots are rows             *)
(*   [owner, lease_epoch, last_claimed_at, expires_at].                    *)
(* The point of the design is that a busy claimer writes its lease row     *)
(* rarely: only after a non-empty claim, and only when the lease is no     *)
(* longer "safely fresh":                                                  *)
(*   last_claimed_at <= now - idle_threshold \div 2                        *)
(*   \/ expires_at   <= now + lease_ttl \div 2                             *)
(* while another process may take over a slot that is released, expired   *)
(* (expires_at <= now) or idle (last_claimed_at <= now - idle_threshold).  *)
(* The halves are what make this safe: a claimer that claimed in the last  *)
(* Min(idle \div 2, ttl \div 2) time units can never look idle or expired. *)
(* This spec checks exactly that, plus the write-rate bound it buys.      *)
(*                                                                         *)
(* Modelling choices:                                                      *)
(*   - Time is discrete, 0..T, advanced by Tick.                           *)
(*   - A claim and the refresh it may trigger are one atomic step, as in   *)
(*     World::apply(Command::Claim) and the Postgres claim statement.      *)
(*   - Only non-empty claims are modelled: an empty claim writes nothing   *)
(*     and decides nothing.                                                *)
(*   - A crashed or stalled claimer is one that stops taking steps; its    *)
(*     slot then goes idle / expires, which is what takeover is for.       *)
(***************************************************************************)
EXTENDS Integers, FiniteSets, TLC

CONSTANTS
    Procs,          \* claimer processes (model values)
    K,              \* max claimer slots per queue
    T,              \* time horizon: now \in 0..T
    LeaseTTL,       \* lease_ttl
    IdleThreshold,  \* idle_threshold
    MaxLeaseEpoch,  \* model bound (state constraint): keeps release/acquire
                    \* loops within one tick finite
    \* Deliberate bugs; each one must be caught by a named property.
    BUG_REFRESH_PREDICATE,   \* refresh only when last_claimed_at <= now - idle
                             \* or expires_at <= now (full thresholds, not halves)
    BUG_NEVER_REFRESHES,     \* the lease is never refreshed after a claim
    BUG_REFRESH_EVERY_CLAIM, \* refresh after every non-empty claim
    BUG_OPEN_SLOT_NO_LIMIT,  \* open a new slot without counting existing ones
    BUG_RELEASE_RESETS_EPOCH \* release deletes the row: lease_epoch back to 0

ASSUME K \in Nat \ {0} /\ T \in Nat
ASSUME LeaseTTL \in Nat \ {0, 1} /\ IdleThreshold \in Nat \ {0, 1}

None == "none"     \* no owner
NoClaim == -1      \* no claim within the busy window

\* Slot ids. Only K may ever be opened; one more id exists so that the
\* BUG_OPEN_SLOT_NO_LIMIT variant has somewhere to put the extra slot.
SlotIds == 1..(K + 1)

\* The busy window: a claimer that made a non-empty claim at most this long
\* ago must still own its slot.
BusyWindow == IF IdleThreshold \div 2 < LeaseTTL \div 2
              THEN IdleThreshold \div 2 ELSE LeaseTTL \div 2

\* The write-rate bound: two writes of the same lease row by its owner are
\* at least this far apart (derived from NeedsRefresh, see below).
MinRefreshGap == IF IdleThreshold \div 2 < LeaseTTL - LeaseTTL \div 2
                 THEN IdleThreshold \div 2 ELSE LeaseTTL - LeaseTTL \div 2

VARIABLES
    now,          \* the clock
    slots,        \* slots[s]: a lease row, or Absent if slot s was never opened
    lastClaim,    \* ghost: lastClaim[p] = time of p's last non-empty claim if
                  \*        within BusyWindow of now, else NoClaim
    claimSlot,    \* ghost: claimSlot[p] = the slot p made that claim under
    refreshTooSoon \* ghost: some refresh came sooner than MinRefreshGap after
                   \*        the previous write of the same lease (or with no claim)

vars == <<now, slots, lastClaim, claimSlot, refreshTooSoon>>

Absent == [owner |-> None, lease_epoch |-> 0, last_claimed_at |-> 0,
           expires_at |-> 0, open |-> FALSE]

Opened == {s \in SlotIds : slots[s].open}

-----------------------------------------------------------------------------
(* Predicates of the core (weir_core::claimer). *)

Expired(s) == slots[s].expires_at <= now
\* "last_claimed_at <= now - idle_threshold", written without subtraction
\* so that it stays in Nat.
Idle(s)    == slots[s].last_claimed_at + IdleThreshold <= now
Free(s)    == slots[s].owner = None

\* p owns an unexpired lease on s: the condition a claim is checked against.
Owns(p, s) == slots[s].open /\ slots[s].owner = p /\ ~Expired(s)

HasLease(p) == \E s \in SlotIds : Owns(p, s)

\* A slot another process may take over.
TakeoverOk(s) == slots[s].open /\ (Free(s) \/ Expired(s) \/ Idle(s))

\* ClaimerLease::needs_refresh, in Nat-friendly form:
\*   last_claimed_at <= now - idle \div 2  \/  expires_at <= now + ttl \div 2
NeedsRefresh(s) ==
    IF BUG_REFRESH_PREDICATE
    THEN \/ slots[s].last_claimed_at + IdleThreshold <= now
         \/ slots[s].expires_at <= now
    ELSE \/ slots[s].last_claimed_at + IdleThreshold \div 2 <= now
         \/ slots[s].expires_at <= now + LeaseTTL \div 2

\* The row p writes when it acquires a slot at epoch e.
Row(p, e) == [owner |-> p, lease_epoch |-> e, last_claimed_at |-> now,
              expires_at |-> now + LeaseTTL, open |-> TRUE]

-----------------------------------------------------------------------------

Init ==
    /\ now = 0
    /\ slots = [s \in SlotIds |-> Absent]
    /\ lastClaim = [p \in Procs |-> NoClaim]
    /\ claimSlot = [p \in Procs |-> 0]
    /\ refreshTooSoon = FALSE

\* Time passes. A claim that falls out of the busy window is forgotten by
\* the ghost (nothing is promised about it any more), which also keeps the
\* ghost from multiplying states.
Tick ==
    /\ now < T
    /\ now' = now + 1
    /\ lastClaim' = [p \in Procs |->
                       IF lastClaim[p] /= NoClaim /\ now + 1 - lastClaim[p] > BusyWindow
                       THEN NoClaim ELSE lastClaim[p]]
    /\ claimSlot' = [p \in Procs |-> IF lastClaim'[p] = NoClaim THEN 0 ELSE claimSlot[p]]
    /\ UNCHANGED <<slots, refreshTooSoon>>

\* ClaimerTable::acquire, takeover branch: p has no unexpired lease of its
\* own (otherwise acquire just reuses it and writes nothing) and takes a
\* released, expired or idle slot. The owner changes, so the epoch grows.
AcquireTakeover(p, s) ==
    /\ ~HasLease(p)
    /\ TakeoverOk(s)
    /\ slots' = [slots EXCEPT ![s] = Row(p, slots[s].lease_epoch + 1)]
    /\ UNCHANGED <<now, lastClaim, claimSlot, refreshTooSoon>>

\* ClaimerTable::acquire, open branch: nothing to take over, and fewer than
\* K slots exist. The new slot is the lowest unused id.
AcquireOpen(p) ==
    /\ ~HasLease(p)
    /\ ~\E s \in SlotIds : TakeoverOk(s)
    /\ Cardinality(Opened) < K \/ BUG_OPEN_SLOT_NO_LIMIT
    /\ Opened /= SlotIds
    /\ LET s == CHOOSE x \in SlotIds \ Opened : \A y \in SlotIds \ Opened : x <= y IN
       slots' = [slots EXCEPT ![s] = Row(p, 1)]
    /\ UNCHANGED <<now, lastClaim, claimSlot, refreshTooSoon>>

\* A non-empty claim under p's unexpired lease on s, followed (atomically)
\* by ClaimerTable::refresh_after_claim, which writes the row only when
\* NeedsRefresh. RefreshWritesBounded: a refresh only ever follows a claim
\* (by construction here) and comes at least MinRefreshGap after the last
\* write of the row (last_claimed_at is only written by acquire/refresh).
Claim(p, s) ==
    /\ Owns(p, s)
    /\ lastClaim' = [lastClaim EXCEPT ![p] = now]
    /\ claimSlot' = [claimSlot EXCEPT ![p] = s]
    /\ IF (NeedsRefresh(s) \/ BUG_REFRESH_EVERY_CLAIM) /\ ~BUG_NEVER_REFRESHES
       THEN /\ slots' = [slots EXCEPT ![s].last_claimed_at = now,
                                      ![s].expires_at = now + LeaseTTL]
            /\ refreshTooSoon' = (refreshTooSoon \/
                                  now < slots[s].last_claimed_at + MinRefreshGap)
       ELSE UNCHANGED <<slots, refreshTooSoon>>
    /\ UNCHANGED now

\* ClaimerTable::release: p gives its slot back. It stops claiming, so it is
\* no longer a busy claimer. The epoch stays (the next owner bumps it).
Release(p, s) ==
    /\ slots[s].open /\ slots[s].owner = p
    /\ slots' = [slots EXCEPT ![s].owner = None,
                              ![s].lease_epoch = IF BUG_RELEASE_RESETS_EPOCH THEN 0 ELSE @]
    /\ lastClaim' = [lastClaim EXCEPT ![p] = NoClaim]
    /\ claimSlot' = [claimSlot EXCEPT ![p] = 0]
    /\ UNCHANGED <<now, refreshTooSoon>>

\* The horizon is reached: stutter rather than report a deadlock.
Horizon == now = T /\ UNCHANGED vars

Next ==
    \/ Tick
    \/ \E p \in Procs :
          \/ AcquireOpen(p)
          \/ \E s \in SlotIds : AcquireTakeover(p, s) \/ Claim(p, s) \/ Release(p, s)
    \/ Horizon

Spec == Init /\ [][Next]_vars

\* Model bound (CONSTRAINT in the cfg).
EpochBound == \A s \in SlotIds : slots[s].lease_epoch <= MaxLeaseEpoch

-----------------------------------------------------------------------------
(* Invariants *)

TypeOK ==
    /\ now \in 0..T
    /\ \A s \in SlotIds :
          /\ slots[s].owner \in Procs \cup {None}
          /\ slots[s].lease_epoch \in Nat
          /\ slots[s].last_claimed_at \in 0..T
          /\ slots[s].expires_at \in 0..(T + LeaseTTL)
          /\ slots[s].open \in BOOLEAN
    /\ lastClaim \in [Procs -> (0..T) \cup {NoClaim}]
    /\ claimSlot \in [Procs -> {0} \cup SlotIds]
    /\ refreshTooSoon \in BOOLEAN

\* A process is an active claimer while its last non-empty claim is within
\* the busy window. At most K of them at any time.
Active == {p \in Procs : lastClaim[p] /= NoClaim}
AtMostKActiveClaimers == Cardinality(Active) <= K

\* A claimer that keeps claiming never has its slot taken over: whoever
\* claimed within the busy window still owns the slot it claimed under.
BusyClaimerKeepsSlot ==
    \A p \in Active : slots[claimSlot[p]].owner = p

\* The lease row is written a bounded number of times: each refresh follows
\* a claim and comes at least MinRefreshGap after the previous write.
RefreshWritesBounded == ~refreshTooSoon

\* Lease epochs only grow (action property).
LeaseEpochsOnlyGrow ==
    [][\A s \in SlotIds : slots'[s].lease_epoch >= slots[s].lease_epoch]_vars

Symmetry == Permutations(Procs)

=============================================================================
