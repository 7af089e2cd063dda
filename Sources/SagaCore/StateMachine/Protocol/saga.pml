/*
 * saga.pml: SagaKit's choreography protocol as a Promela model, checked with spin.
 *
 * One saga of NSTEPS = 3 steps (numbered 1..3 here; index 0..2 in Swift), step PIVOT (default 2)
 * is the pivot. It models what these files do, decision by decision:
 *   SagaStateMachine.swift  the pure transition function  (inline decide)
 *   SagaParticipant.swift   consume → load → current? → handler → commit+outbox → publish → ack
 *   SagaEngine.swift        commit = compare-and-swap on the saga's version; on a conflict reload
 *                           and decide again (a handler's outcome is re-decided, a reaper's
 *                           foundStalled is dropped when the version changed)
 *   OutboxRelay.swift       republishes committed-but-unsent outbox rows
 *   SagaReaper.swift        re-sends a non-terminal saga's current command (foundStalled),
 *                           needs-attention after MAXREAP re-sends without progress
 *
 * Abstractions (see Docs/Guarantees.md, "The protocol model"):
 *   - the store is linearizable: each commit (CAS + state + outbox row) is one atomic step;
 *   - the broker delivers at least once: an unacked message is redelivered when its consumer
 *     dies or nacks it; deliveries are taken in any order; a publish is confirmed or fails
 *     (it fails when the queue holds QN messages, as a broker that refuses it);
 *   - two identical unsent outbox rows are kept once; the reaper's claim and its commit are one
 *     step (a claim whose compare-and-swap fails changes nothing);
 *   - time is abstracted away: the relay's grace period, the reaper's stalled threshold and
 *     retry delays may elapse at any moment (this only adds behaviours);
 *   - bounded: MAXCRASH participant crashes (at crash points 1-5 below), MAXFAIL handler
 *     failures, MAXDUP duplicate publishes, REAPS reaper passes;
 *   - not modelled: deadlines, step timeouts, operator commands (retry/compensate), the dead
 *     letter path, several sagas, the relay crashing between publish and mark-sent (covered by
 *     duplicates), SentMarker batching beyond "the mark may be lost".
 *
 * The idempotency rule modelled (what Docs/WritingParticipants.md asks of handlers):
 *   I1  A handler applies its effect in ONE local transaction with its key <saga>:<step>:<phase>
 *       (the same for every attempt of that step's phase): if the key is there it applies
 *       nothing and reports the recorded outcome (success, or a business refusal, which is
 *       recorded under the key too); a technical failure commits nothing and records no key.
 *   I2  A run whose action outcome is discarded (outcomeDiscarded: its commit was ignored)
 *       undoes the action's effect by its key only when the saga no longer runs that step and
 *       never recorded it completed, i.e. the saga is compensating or compensated and its
 *       history has no completion of this step. (Undoing on every discard, as the example in
 *       WritingParticipants.md does, is the variant BROKEN_UNDO_ON_ANY_DISCARD.)
 *
 * Run it with scripts/model-check.sh: it checks safety (assertions) and progress (ltl terminates,
 * weak fairness) of this model in several bounded scenarios, and that each variant below fails.
 *
 * Switches (-D...):
 *   NO_REAPER                    no reaper: participants and relay alone must finish the saga
 *   BROKEN_ACK_BEFORE_COMMIT     the delivery is acked right after the handler, before the commit
 *   BROKEN_NO_CAS                commits overwrite the saga without comparing its version
 *   BROKEN_NO_IDEMPOTENCY        handlers ignore the idempotency key (I1 off)
 *   BROKEN_NO_RELAY              no outbox relay
 *   BROKEN_UNDO_ON_ANY_DISCARD   I2 replaced by "undo on every discarded outcome"
 *   CHECK_NO_LEAK                also check that a compensated saga leaves no effect behind (a
 *                                known gap of the protocol: this check fails, see Monitor)
 */

#ifndef PIVOT
#define PIVOT     2     /* the pivot step (1-based); steps >= PIVOT only go forward */
#endif
#define NSTEPS    3
#ifndef MAXATT
#define MAXATT    2     /* retry.maxAttempts of a step before the pivot */
#endif
#ifndef COMPMAX
#define COMPMAX   2     /* the definition's compensationRetry.maxAttempts */
#endif
#ifndef MAXREAP
#define MAXREAP   1     /* ReaperConfiguration.maxReapAttempts */
#endif
#ifndef MAXCRASH
#define MAXCRASH  2     /* participant crashes in one run */
#endif
#ifndef MAXFAIL
#define MAXFAIL   2     /* handler failures (technical or business) in one run */
#endif
#ifndef MAXDUP
#define MAXDUP    1     /* extra copies of a publish (broker reconnect re-sends) */
#endif
#ifndef REAPS
#define REAPS     2     /* reaper passes that find the saga unfinished, in one run */
#endif
#ifndef QN
#define QN        2     /* messages the queue holds (ready or unacked); beyond, a publish is refused */
#endif

/* saga status (SagaState.status) */
#define RUNNING       0
#define COMPENSATING  1
#define COMPLETED     2
#define COMPENSATED   3
#define ATTENTION     4     /* needsAttention */
#define TERMINAL(s)   ((s) >= COMPLETED)
#define PH(s)         ((s) == COMPENSATING -> 1 : 0)   /* SagaState.phase: 0 action, 1 compensation */

/* a command (SagaCommand): step 1..3, phase 0 (action) or 1 (compensation), attempt 1..3,
   numbered 1..18; 0 = none. Attempts stay <= 3: MAXATT, COMPMAX <= 3 and MAXFAIL <= 2. */
#define MK(s, p, a)   ((s) + 3 * (p) + 6 * ((a) - 1))
#define STEP(c)       (((c) - 1) % 3 + 1)
#define PHASE(c)      ((((c) - 1) / 3) % 2)
#define ATT(c)        (((c) - 1) / 6 + 1)
#define BIT(c)        (1 << (c))
#define FOR_EACH_COMMAND(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) \
                            X(13) X(14) X(15) X(16) X(17) X(18)

/* events (SagaEvent) */
#define EV_DONE       1     /* stepCompleted */
#define EV_FAIL       2     /* stepFailed(retryable: true): the handler threw */
#define EV_REFUSE     3     /* stepFailed(retryable: false): failAndCompensate */
#define EV_CDONE      4     /* compensationCompleted */
#define EV_CFAIL      5     /* compensationFailed */
#define EV_STALLED    6     /* foundStalled(maxReapAttempts: MAXREAP) */

/* ---- the saga store (linearizable) ---- */
byte st = RUNNING;      /* status */
byte cur = 1;           /* currentStep */
byte att = 1;           /* attempt */
byte reap = 0;          /* reapAttempts */
/* The saga's version. Every transition changes (st, cur, att, reap) and no such tuple comes back
   (attempts and re-sends only grow until the step changes; steps go forward while running and
   backward while compensating), so the tuple identifies the version; a counter would only split
   otherwise identical states. The compare-and-swap compares it with the loaded one. */
#define VERSION_CHANGED (st != b_st || cur != b_cur || att != b_att || reap != b_reap)
int ob;                 /* the unsent outbox rows: bit c = a row with command c, not marked sent
                           (identical unsent rows are kept once: a second one would only add a
                           duplicate publish, which the model produces anyway) */

/* ---- the broker: one queue. qc[c] = ready copies of command c; qn = messages in the queue,
   ready or delivered and not yet acked. A delivered message is held by its participant until it
   is acked (gone) or nacked or its consumer dies (ready again). Ready messages are a multiset:
   deliveries may be taken in any order, so orderings of the same messages are one state. */
byte qc[19];
byte qn;

/* ---- the participants' own databases (effects and idempotency keys, per step) ---- */
#define KEY_DONE    1
#define KEY_REFUSED 2
byte actKey[NSTEPS + 1];        /* key <saga>:<step>:action and its recorded outcome */
bool compKey[NSTEPS + 1];       /* key <saga>:<step>:compensation */
bool live[NSTEPS + 1];          /* the action's effect exists (applied and not undone) */
byte actApplied[NSTEPS + 1];    /* how many times the action's effect was applied */
byte compApplied[NSTEPS + 1];   /* how many times the compensation's effect was applied */

/* ---- ghosts: what the saga's history recorded ---- */
bool actDone[NSTEPS + 1];       /* stepCompleted(step) committed */
bool compDone[NSTEPS + 1];      /* compensationCompleted(step) committed */
bool everCompleted, everCompensated;
byte busy;                      /* participants between "current?" and the end of their delivery */

/* ---- budgets ---- */
byte crashes, fails, dups;
bool ok0;                       /* init's publish */
byte mj;                        /* Monitor's loop index */

/* ------------------------------------------------------------------------------------------ */

/* Publishes command c: ok when confirmed, !ok when the broker refuses it (queue full). */
inline publish(c, ok) {
    if
    :: qn < QN -> qc[c]++; qn++; ok = true
    :: else -> ok = false
    fi
}

/* Stores an outbox row in the same atomic step as the state it belongs to. */
inline outbox_add(c) {
    ob = ob | BIT(c)
}

/* Marks the row of command c sent (a no-op when the relay marked it already). */
inline mark_sent(c) {
    ob = ob & ~BIT(c)
}

/* compensate(from: i): every step has a compensation in the model (the pivot and the steps
   after it may declare one; the machine must still never run it). */
inline compensate_from(i) {
    n_reap = 0;
    if
    :: (i) == 0 -> n_st = COMPENSATED
    :: else -> n_st = COMPENSATING; n_cur = (i); n_att = 1; out = MK((i), 1, 1)
    fi
}

/* SagaStateMachine.apply(event, to: b_*): next state in n_*, the command to send in out,
   ign = the event is ignored (stale, duplicate, or the saga is terminal). */
inline decide(ev, es, ea) {
    ign = false; out = 0;
    n_st = b_st; n_cur = b_cur; n_att = b_att; n_reap = b_reap;
    if
    :: ev == EV_STALLED ->
        if
        :: TERMINAL(b_st) -> ign = true
        :: !TERMINAL(b_st) && b_reap >= MAXREAP -> n_st = ATTENTION
        :: !TERMINAL(b_st) && b_reap < MAXREAP -> n_reap = b_reap + 1; out = MK(b_cur, PH(b_st), b_att)
        fi
    :: ev != EV_STALLED ->
        /* staleness(_:step:phase:attempt:) */
        if
        :: TERMINAL(b_st) || b_cur != (es) || b_att != (ea) ||
           PH(b_st) != ((ev == EV_CDONE || ev == EV_CFAIL) -> 1 : 0) -> ign = true
        :: else ->
            n_reap = 0;     /* record(...) resets reapAttempts */
            if
            :: ev == EV_DONE ->
                if
                :: (es) == NSTEPS -> n_st = COMPLETED
                :: else -> n_cur = (es) + 1; n_att = 1; out = MK((es) + 1, 0, 1)
                fi
            :: ev == EV_FAIL && ((es) >= PIVOT || (ea) < MAXATT) ->
                n_att = (ea) + 1; out = MK((es), 0, (ea) + 1)      /* retried */
            :: ev == EV_REFUSE || (ev == EV_FAIL && (es) < PIVOT && (ea) >= MAXATT) ->
                if
                :: (es) >= PIVOT -> n_st = ATTENTION                /* cannot be compensated */
                :: else -> compensate_from((es) - 1)                /* the failed step is not */
                fi
            :: ev == EV_CDONE -> compensate_from((es) - 1)
            :: ev == EV_CFAIL && (ea) < COMPMAX -> n_att = (ea) + 1; out = MK((es), 1, (ea) + 1)
            :: ev == EV_CFAIL && (ea) >= COMPMAX -> n_st = ATTENTION
            fi
        fi
    fi
}

/* The safety properties, checked on every committed transition (before it is written). */
inline check_transition(ev, es) {
    if
    :: ev == EV_DONE ->
        assert(!actDone[es]);                    /* a step's outcome is recorded once */
        actDone[es] = true
    :: ev == EV_CDONE ->
        assert((es) < PIVOT);                    /* the pivot and later steps: never compensated */
        assert(actDone[es]);                     /* only completed steps are compensated */
        assert(!compDone[es]);                   /* once */
        for (j : 1 .. NSTEPS) {                  /* newest first: later completed steps are undone */
            assert(j <= (es) || !actDone[j] || compDone[j])
        }
        compDone[es] = true
    :: else -> skip
    fi;
    assert(n_st != COMPENSATING || n_cur < PIVOT);   /* no compensation command for the pivot+ */
    if
    :: n_st == COMPLETED ->
        assert(!everCompensated);                /* never both completed and compensated */
        everCompleted = true
    :: n_st == COMPENSATED ->
        assert(!everCompleted);
        for (j : 1 .. NSTEPS) {                  /* every completed step was compensated */
            assert(!actDone[j] || compDone[j])
        }
        everCompensated = true
    :: else -> skip
    fi
}

inline write_store() {
    assert(n_att <= 3);     /* the command encoding holds 3 attempts */
    st = n_st; cur = n_cur; att = n_att; reap = n_reap;
    if
    :: out != 0 -> outbox_add(out)
    :: else -> skip
    fi
}

inline load() {
    b_st = st; b_cur = cur; b_att = att; b_reap = reap
}

/* a ready message with command c can be delivered */
#define TAKE(c) :: qc[c] > 0 -> m = c;
/* an unsent outbox row with command c can be relayed */
#define UNSENT(c) :: (ob & BIT(c)) != 0 -> r = c;

/* settles the delivery: ack (the message is gone) or nack(requeue: true) (ready again) */
inline ack() {
    if
    :: held -> qn--; held = false
    :: else -> skip
    fi
}
inline requeue() {
    if
    :: held -> qc[m]++; held = false
    :: else -> skip
    fi
}

/* ------------------------------------------------------------------------------------------ */

proctype Participant(byte me) {
    byte m, k, ev, out;
    byte b_st, b_cur, b_att, b_reap, n_st, n_cur, n_att, n_reap;
    byte j;
    bool ign, ok, held, counted;

idle:
    /* a restarted process has no memory of what it was doing */
    atomic {
        m = 0; k = 0; ev = 0; out = 0; ign = false; ok = false; held = false;
        b_st = 0; b_cur = 0; b_att = 0; b_reap = 0; n_st = 0; n_cur = 0; n_att = 0;
        n_reap = 0; j = 0;
        if
        :: counted -> busy--; counted = false
        :: else -> skip
        fi
    }
end_wait:
    /* receive a delivery (any ready message: redeliveries reorder) and load the saga */
    atomic {
        if
        FOR_EACH_COMMAND(TAKE)
        fi;
        qc[m]--; held = true; k = STEP(m);
        load();
        /* isCurrent(command, of: state); a stale or duplicate command is acked and ignored */
        if
        :: TERMINAL(b_st) || PH(b_st) != PHASE(m) || b_cur != k || b_att != ATT(m) ->
            ack(); goto idle
        :: else -> busy++; counted = true
        fi
    }
    /* crash point 1: before the handler */
    if
    :: atomic { crashes < MAXCRASH -> crashes++ }; goto crash
    :: skip
    fi;

    /* the handler: the local effect, under the idempotency rule I1 */
    atomic {
        if
        :: PHASE(m) == 0 ->
#ifndef BROKEN_NO_IDEMPOTENCY
            if
            :: actKey[k] == KEY_DONE -> ev = EV_DONE          /* done before: report success */
            :: actKey[k] == KEY_REFUSED -> ev = EV_REFUSE     /* refused before: refuse again */
            :: actKey[k] == 0 ->
#endif
                if
                :: ev = EV_DONE; actKey[k] = KEY_DONE; live[k] = true; actApplied[k]++;
                   assert(actApplied[k] <= 1)                 /* each effect applied at most once */
                :: fails < MAXFAIL -> fails++; ev = EV_FAIL   /* threw: nothing committed */
                :: fails < MAXFAIL -> fails++; ev = EV_REFUSE; actKey[k] = KEY_REFUSED
                fi
#ifndef BROKEN_NO_IDEMPOTENCY
            fi
#endif
        :: PHASE(m) == 1 ->
#ifndef BROKEN_NO_IDEMPOTENCY
            if
            :: compKey[k] -> ev = EV_CDONE
            :: !compKey[k] ->
#endif
                if
                :: ev = EV_CDONE; compKey[k] = true; live[k] = false; compApplied[k]++;
                   assert(compApplied[k] <= 1)
                :: fails < MAXFAIL -> fails++; ev = EV_CFAIL
                fi
#ifndef BROKEN_NO_IDEMPOTENCY
            fi
#endif
        fi
    }
#ifdef BROKEN_ACK_BEFORE_COMMIT
    ack()
#endif
    /* crash point 2: after the local effect, before the commit */
    if
    :: atomic { crashes < MAXCRASH -> crashes++ }; goto crash
    :: skip
    fi;

    /* SagaEngine.advance: decide, then commit state + outbox row with a CAS on the version; on a
       conflict reload and decide again (the event is then ignored if it no longer fits) */
    atomic {
#ifndef BROKEN_NO_CAS
        if
        :: VERSION_CHANGED -> load()      /* version conflict: reload, decide again */
        :: else -> skip
        fi;
#endif
        decide(ev, k, ATT(m));
        if
        :: ign -> skip
        :: else -> check_transition(ev, k); write_store()
        fi
    }
    if
    :: ign ->
        /* outcomeDiscarded: the handler learns its outcome did not count (rule I2) */
        /* crash point 5: after the discarded outcome, before the undo */
        if
        :: atomic { crashes < MAXCRASH -> crashes++ }; goto crash
        :: skip
        fi;
        atomic {
            if
#ifdef BROKEN_UNDO_ON_ANY_DISCARD
            :: ev == EV_DONE -> live[k] = false
#else
            :: ev == EV_DONE && (st == COMPENSATING || st == COMPENSATED) && !actDone[k] ->
                live[k] = false
#endif
            :: else -> skip
            fi;
            ack(); goto idle
        }
    :: else -> skip
    fi;

    /* crash point 3: after the commit, before the publish */
    if
    :: atomic { crashes < MAXCRASH -> crashes++ }; goto crash
    :: skip
    fi;

    /* publish the outgoing command and wait for its confirm */
    if
    :: out != 0 ->
        atomic {
            publish(out, ok);
            if
            :: !ok ->
                /* the publish failed: the row stays for the relay; nack(requeue: true) */
                requeue(); goto idle
            :: else -> skip
            fi
        }
        /* the broker may deliver a publish twice (a reconnect re-sends unconfirmed publishes) */
        if
        :: atomic { dups < MAXDUP -> dups++; publish(out, ok) }
        :: skip
        fi
    :: else -> skip
    fi;

    /* crash point 4: after the publish, before the ack */
    if
    :: atomic { crashes < MAXCRASH -> crashes++ }; goto crash
    :: skip
    fi;

    /* mark sent (batched by SentMarker: the mark may be lost, then the relay sends it again),
       then ack */
    atomic {
        if
        :: out != 0 -> mark_sent(out)
        :: true -> skip
        fi;
        ack(); goto idle
    }

crash:
    /* the process dies: its unacked delivery is redelivered, its memory is gone; it restarts */
    atomic {
        requeue(); goto idle
    }
}

#ifndef BROKEN_NO_RELAY
/* OutboxRelay: publishes committed rows that are not marked sent (the grace period may pass at
   any moment), then marks them sent; a refused publish leaves the row for the next pass. */
active proctype Relay() {
    byte r;
    bool ok;
end_relay:
    do
    :: atomic {
        if
        FOR_EACH_COMMAND(UNSENT)
        fi;
        publish(r, ok);
        if
        :: ok -> mark_sent(r)
        :: else -> skip
        fi;
        r = 0; ok = false
       }
    od
}
#endif

#ifndef NO_REAPER
/* SagaReaper: claims a non-terminal saga (the stalled threshold may pass at any moment, so it
   may claim a saga that is moving) and applies foundStalled; the commit is dropped when the
   saga's version changed since the claim. In the correct model claim and commit are one step: a
   claim whose commit is dropped changes nothing. REAPS bounds the reaper's passes in a run.
   Its re-sent command is published at once, or left to the relay (the reaper died, the
   publish failed). */
active proctype Reaper() {
    byte ev, out, j, passes;
    byte b_st, b_cur, b_att, b_reap, n_st, n_cur, n_att, n_reap;
    bool ign, ok;
end_reaper:
    do
    :: atomic {
           !TERMINAL(st) && passes < REAPS -> passes++; load();
#ifdef BROKEN_NO_CAS
       }
       atomic {
           /* without the compare-and-swap: decided on the claimed state, written over the
              current one */
#endif
           decide(EV_STALLED, 0, 0);
           if
           :: !ign -> ev = EV_STALLED; check_transition(ev, 0); write_store();
               if
               :: out != 0 -> publish(out, ok);
                  if
                  :: ok -> mark_sent(out)
                  :: else -> skip
                  fi
               :: true -> skip
               fi
           :: else -> skip
           fi;
           ev = 0; out = 0; ign = false; ok = false; j = 0;
           b_st = 0; b_cur = 0; b_att = 0; b_reap = 0;
           n_st = 0; n_cur = 0; n_att = 0; n_reap = 0
       }
    od
}
#endif

/* SagaManager.start: the saga row and its first command, then the publish. */
init {
    atomic {
        outbox_add(MK(1, 0, 1));
        publish(MK(1, 0, 1), ok0);
        if
        :: ok0 -> mark_sent(MK(1, 0, 1))
        :: else -> skip
        fi;
        run Participant(0);     /* two instances consuming the commands */
        run Participant(1)
    }
}

/* Once the saga has ended and no participant is inside a delivery that was current, the
   participants' effects must match the saga's outcome (nothing can change them afterwards: every
   later delivery is stale).
   - completed: every step's effect is there, nothing was undone (I2 must not undo an effect
     that a twin's recorded completion counts on);
   - compensated (only with -DCHECK_NO_LEAK, a known gap, see Docs/Guarantees.md): no effect is
     left. It fails: an earlier or duplicate delivery of the failed step can apply the step's
     effect and die before its commit; the saga's last attempt fails, the failed step is not
     compensated, and the redelivery is stale. */
active proctype Monitor() {
end_monitor:
    atomic {
        TERMINAL(st) && busy == 0 ->
        if
        :: st == COMPLETED ->
            for (mj : 1 .. NSTEPS) {
                assert(live[mj] && compApplied[mj] == 0)
            }
#ifdef CHECK_NO_LEAK
        :: st == COMPENSATED ->
            for (mj : 1 .. NSTEPS) {
                assert(!live[mj])
            }
#endif
        :: else -> skip
        fi
    }
}

/* progress: the saga ends (completed, compensated or needs attention) */
ltl terminates { <> (st >= COMPLETED) }
