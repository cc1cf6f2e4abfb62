------------------------------ MODULE Leader ------------------------------
(***************************************************************************)
(* Maintenance leadership (weir_core::leader).                             *)
(*                                                                         *)
(* One row holds [leader, term, lease]. A process becomes leader when      *)
(* there is none or the lease ran out, and the term goes up by one         *)
(* (Leadership::elect); the holder calling elect on its live lease renews  *)
(* it and keeps the term. The leader may resign, crash or stall, in which  *)
(* case the lease runs out. Maintenance writes (promote, rescue, prune)    *)
(* carry the writer's grant (process, term) and are accepted only from the *)
(* live leader of the current term (Leadership::check_term). A write may   *)
(* be delayed in the network or in a stalled process and arrive long after *)
(* it was issued: that late write of a deposed leader is exactly what the  *)
(* check must reject.                                                      *)
(*                                                                         *)
(* Modelling choices:                                                      *)
(*   - Time is relative: only what is left of the lease is kept, and Tick  *)
(*     counts it down. Local clocks are not modelled; a deposed leader may *)
(*     believe it still leads for as long as it likes (worst case).        *)
(*   - MaxTerm bounds elections (a model bound, not part of the core).     *)
(***************************************************************************)
EXTENDS Naturals, FiniteSets, TLC

CONSTANTS
    Procs,      \* processes (model values)
    LeaseTTL,   \* leadership lease length
    MaxTerm,    \* model bound: no election past this term
    \* Deliberate bugs; each one must be caught by a named property.
    BUG_NO_TERM_CHECK,        \* maintenance writes are accepted unchecked
    BUG_ELECT_NO_TERM_BUMP    \* a new leader (after the first) keeps the term

ASSUME LeaseTTL \in Nat \ {0} /\ MaxTerm \in Nat \ {0}

None  == "none"
Terms == 1..MaxTerm

VARIABLES
    leader,      \* the holder in the leadership row, or None
    term,        \* the current term (0: nobody was ever elected)
    leaseLeft,   \* ticks left of the holder's lease (0: ran out)
    myTerm,      \* myTerm[p]: the term p believes it leads (0: not leader)
    inflight,    \* inflight[p]: term carried by p's maintenance write in
                 \*              flight (0: none)
    elected,     \* ghost: elected[t] = processes elected in term t
    badWrite     \* ghost: a write was accepted that did not come from the
                 \*        live leader of the current term

vars == <<leader, term, leaseLeft, myTerm, inflight, elected, badWrite>>

Init ==
    /\ leader = None
    /\ term = 0
    /\ leaseLeft = 0
    /\ myTerm = [p \in Procs |-> 0]
    /\ inflight = [p \in Procs |-> 0]
    /\ elected = [t \in Terms |-> {}]
    /\ badWrite = FALSE

\* Time passes: the lease runs down.
Tick ==
    /\ leaseLeft' = IF leaseLeft > 0 THEN leaseLeft - 1 ELSE 0
    /\ UNCHANGED <<leader, term, myTerm, inflight, elected, badWrite>>

\* Leadership::elect when nobody leads or the lease ran out (the old holder
\* included): a new term, which is what lets every later check tell the
\* new leader from the old one.
Elect(p) ==
    /\ leader = None \/ leaseLeft = 0
    /\ term < MaxTerm
    /\ LET t == IF BUG_ELECT_NO_TERM_BUMP /\ term > 0 THEN term ELSE term + 1 IN
       /\ leader' = p
       /\ term' = t
       /\ leaseLeft' = LeaseTTL
       /\ myTerm' = [myTerm EXCEPT ![p] = t]
       /\ elected' = [elected EXCEPT ![t] = @ \cup {p}]
    /\ UNCHANGED <<inflight, badWrite>>

\* Leadership::elect by the holder of the live lease: renews it and keeps
\* the term (a restarted holder learns its term again this way).
Renew(p) ==
    /\ leader = p /\ leaseLeft > 0
    /\ leaseLeft' = LeaseTTL
    /\ myTerm' = [myTerm EXCEPT ![p] = term]
    /\ UNCHANGED <<leader, term, inflight, elected, badWrite>>

\* Leadership::resign: the leader steps down (guarded by holder and term);
\* the term stays, so the next election still moves it forward.
Resign(p) ==
    /\ leader = p /\ term = myTerm[p]
    /\ leader' = None
    /\ leaseLeft' = 0
    /\ myTerm' = [myTerm EXCEPT ![p] = 0]
    /\ UNCHANGED <<term, inflight, elected, badWrite>>

\* A crash: p forgets it was leader. The row is untouched (the lease runs
\* out), and a write it already sent may still arrive.
Crash(p) ==
    /\ myTerm[p] /= 0
    /\ myTerm' = [myTerm EXCEPT ![p] = 0]
    /\ UNCHANGED <<leader, term, leaseLeft, inflight, elected, badWrite>>

\* p, believing it leads term myTerm[p], sends a maintenance write. It may
\* have been deposed already: it has no way to know.
IssueWrite(p) ==
    /\ myTerm[p] /= 0
    /\ inflight[p] = 0
    /\ inflight' = [inflight EXCEPT ![p] = myTerm[p]]
    /\ UNCHANGED <<leader, term, leaseLeft, myTerm, elected, badWrite>>

\* The write arrives and Leadership::check_term decides: accepted only from
\* the live leader of the current term - the writer is the holder, its
\* lease has not run out, and the term it carries is the current one.
LiveLeaderOf(p, t) == leader = p /\ leaseLeft > 0 /\ t = term

DeliverWrite(p) ==
    /\ inflight[p] /= 0
    /\ LET t == inflight[p]
           accepted == LiveLeaderOf(p, t) \/ BUG_NO_TERM_CHECK
       IN badWrite' = (badWrite \/ (accepted /\ ~LiveLeaderOf(p, t)))
    /\ inflight' = [inflight EXCEPT ![p] = 0]
    /\ UNCHANGED <<leader, term, leaseLeft, myTerm, elected>>

Next ==
    \/ Tick
    \/ \E p \in Procs :
          Elect(p) \/ Renew(p) \/ Resign(p) \/ Crash(p)
          \/ IssueWrite(p) \/ DeliverWrite(p)

Spec == Init /\ [][Next]_vars

-----------------------------------------------------------------------------
(* Invariants *)

TypeOK ==
    /\ leader \in Procs \cup {None}
    /\ term \in 0..MaxTerm
    /\ leaseLeft \in 0..LeaseTTL
    /\ myTerm \in [Procs -> 0..MaxTerm]
    /\ inflight \in [Procs -> 0..MaxTerm]
    /\ elected \in [Terms -> SUBSET Procs]
    /\ badWrite \in BOOLEAN

\* Never two leaders in one term.
AtMostOneLeaderPerTerm == \A t \in Terms : Cardinality(elected[t]) <= 1

\* An accepted maintenance write always comes from the live leader of the
\* current term (so it carries the current term): a deposed leader's late
\* write is rejected.
DeposedLeaderWriteRejected == ~badWrite

\* Terms only grow (action property).
LeaderTermsOnlyGrow == [][term' >= term]_vars

Symmetry == Permutations(Procs)

=============================================================================
