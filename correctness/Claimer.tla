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
(*   - A process remembers the grant (slot, lease_epoch) of each lease it *)
(*     holds, and of the one it last released: a claim sent under that    *)
(*     grant may still arrive, within the same tick, after the process    *)
(*     released and acquired again (a slow request). A claim               *)
(*     is checked against the grant it carries, as ClaimerTable::check     *)
(*     does: owner, unexpired, and the same lease epoch.                   *)
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
    LATE_CLAIMS,    \* a claim under the grant a process just released may
                    \* still arrive (after it acquired again)
    \* Deliberate bugs; each one must be caught by a named property.
    BUG_REFRESH_PREDICATE,   \* refresh only when last_claimed_at <= now - idle
                             \* or expires_at <= now (full thresholds, not halves)
    BUG_NEVER_REFRESHES,     \* the lease is never refreshed after a claim
    BUG_REFRESH_EVERY_CLAIM, \* refresh after every non-empty claim
    BUG_OPEN_SLOT_NO_LIMIT,  \* open a new slot without counting existing ones
    BUG_RELEASE_RESETS_EPOCH, \* release deletes the row: lease_epoch back to 0
    BUG_OWNS_IGNORES_EPOCH   \* a claim is checked by owner only, not by the
                             \* grant's lease epoch

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
    refreshTooSoon, \* ghost: some refresh came sooner than MinRefreshGap after
                    \*        the previous write of the same lease (or with no claim)
    prev,         \* prev[p]: the grant p last released, while a claim
                  \*          under it may still arrive; or NoGrant
    staleClaim    \* ghost: a claim was accepted under a grant whose lease
                  \*        epoch is not the slot's

vars == <<now, slots, lastClaim, claimSlot, refreshTooSoon, prev, staleClaim>>

NoGrant == <<0, 0>>

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

\* p owns an unexpired lease on s (what acquire looks for to reuse a lease).
OwnsSlot(p, s) == slots[s].open /\ slots[s].owner = p /\ ~Expired(s)
HasLease(p) == \E s \in SlotIds : OwnsSlot(p, s)

\* The grants p holds: one per slot storage says it owns (p keeps the grant
\* acquire gave it, and only an acquire by p writes p as owner).
Grants(p) == {<<s, slots[s].lease_epoch>> : s \in {x \in SlotIds : slots[x].open /\ slots[x].owner = p}}

\* The grant g = <<s, e>> that p presents is its unexpired lease on s: the
\* condition a claim is checked against (ClaimerTable::check).
Owns(p, g) ==
    /\ g /= NoGrant
    /\ OwnsSlot(p, g[1])
    /\ slots[g[1]].lease_epoch = g[2] \/ BUG_OWNS_IGNORES_EPOCH

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
    /\ prev = [p \in Procs |-> NoGrant]
    /\ staleClaim = FALSE

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
    \* a late request arrives within the tick it was sent in, or never: this
    \* keeps the state space small, and a re-acquire within one tick (release,
    \* then take the slot over again) is enough to need the epoch check
    /\ prev' = [p \in Procs |-> NoGrant]
    /\ UNCHANGED <<slots, refreshTooSoon, staleClaim>>

\* ClaimerTable::acquire, takeover branch: p has no unexpired lease of its
\* own (otherwise acquire just reuses it and writes nothing) and takes a
\* released, expired or idle slot. The owner changes, so the epoch grows.
AcquireTakeover(p, s) ==
    /\ ~HasLease(p)
    /\ TakeoverOk(s)
    /\ slots' = [slots EXCEPT ![s] = Row(p, slots[s].lease_epoch + 1)]
    /\ UNCHANGED <<now, lastClaim, claimSlot, refreshTooSoon, prev, staleClaim>>

\* ClaimerTable::acquire, open branch: nothing to take over, and fewer than
\* K slots exist. The new slot is the lowest unused id.
AcquireOpen(p) ==
    /\ ~HasLease(p)
    /\ ~\E s \in SlotIds : TakeoverOk(s)
    /\ Cardinality(Opened) < K \/ BUG_OPEN_SLOT_NO_LIMIT
    /\ Opened /= SlotIds
    /\ LET s == CHOOSE x \in SlotIds \ Opened : \A y \in SlotIds \ Opened : x <= y IN
       /\ slots' = [slots EXCEPT ![s] = Row(p, 1)]
       /\ UNCHANGED <<now, lastClaim, claimSlot, refreshTooSoon, prev, staleClaim>>

\* A non-empty claim under p's unexpired lease on s, followed (atomically)
\* by ClaimerTable::refresh_after_claim, which writes the row only when
\* NeedsRefresh. RefreshWritesBounded: a refresh only ever follows a claim
\* (by construction here) and comes at least MinRefreshGap after the last
\* write of the row (last_claimed_at is only written by acquire/refresh).
\* The claim carries grant g: one p holds, or (a late request) the one
\* before, which then has arrived and is forgotten. A claim the check
\* rejects changes nothing, so it is no step here.
Claim(p, g) ==
    LET s == g[1] IN
    /\ g \in Grants(p) \cup {prev[p]}
    /\ Owns(p, g)
    /\ staleClaim' = (staleClaim \/ slots[s].lease_epoch /= g[2])
    /\ prev' = IF g = prev[p] THEN [prev EXCEPT ![p] = NoGrant] ELSE prev
    /\ lastClaim' = [lastClaim EXCEPT ![p] = now]
    /\ claimSlot' = [claimSlot EXCEPT ![p] = s]
    /\ IF (NeedsRefresh(s) \/ BUG_REFRESH_EVERY_CLAIM) /\ ~BUG_NEVER_REFRESHES
       THEN /\ slots' = [slots EXCEPT ![s].last_claimed_at = now,
                                      ![s].expires_at = now + LeaseTTL]
            /\ refreshTooSoon' = (refreshTooSoon \/
                                  now < slots[s].last_claimed_at + MinRefreshGap)
       ELSE UNCHANGED <<slots, refreshTooSoon>>
    /\ UNCHANGED now

\* ClaimerTable::release: p gives its slot back, with its grant (owner and
\* lease epoch checked). It stops claiming, so it is no longer a busy
\* claimer. The epoch stays (the next owner bumps it).
Release(p, s) ==
    /\ <<s, slots[s].lease_epoch>> \in Grants(p)
    /\ slots' = [slots EXCEPT ![s].owner = None,
                              ![s].lease_epoch = IF BUG_RELEASE_RESETS_EPOCH THEN 0 ELSE @]
    /\ lastClaim' = [lastClaim EXCEPT ![p] = NoClaim]
    /\ claimSlot' = [claimSlot EXCEPT ![p] = 0]
    /\ prev' = IF LATE_CLAIMS THEN [prev EXCEPT ![p] = <<s, slots[s].lease_epoch>>] ELSE prev
    /\ UNCHANGED <<now, refreshTooSoon, staleClaim>>

\* The horizon is reached: stutter rather than report a deadlock.
Horizon == now = T /\ UNCHANGED vars

Next ==
    \/ Tick
    \/ \E p \in Procs :
          \/ AcquireOpen(p)
          \/ \E s \in SlotIds : AcquireTakeover(p, s) \/ Release(p, s)
          \/ \E g \in Grants(p) \cup {prev[p]} : Claim(p, g)
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
    /\ prev \in [Procs -> ({0} \cup SlotIds) \X Nat]
    /\ staleClaim \in BOOLEAN
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

\* A claim is accepted only under the slot's current lease: a request
\* carrying an earlier grant of the same owner (sent before it acquired
\* again) is refused, as ClaimerTable::check refuses it.
ClaimsOnlyUnderCurrentLease == ~staleClaim

\* Lease epochs only grow (action property).
LeaseEpochsOnlyGrow ==
    [][\A s \in SlotIds : slots'[s].lease_epoch >= slots[s].lease_epoch]_vars

Symmetry == Permutations(Procs)

=============================================================================
