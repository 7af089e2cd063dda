/*
 * parallel.pml: the protocol of a parallel group (SagaBuilder.parallel, issue 14), as
 * SagaStateMachine+Parallel.swift implements it. scripts/model-check.sh checks it in its own rows.
 *
 * The saga: step 1, then a group of two members A and B that run at once, then step 3, the pivot.
 * Rules: the group completes when both members complete. When a member fails, the group WAITS
 * for the outcome of every member still running, then compensates the completed members one at
 * a time, the later-declared first (B, then A), then step 1. So a member that completes after
 * its sibling failed is compensated too. BROKEN_COMPENSATE_AT_ONCE is the alternative: compensate
 * at once, including the running member (its compensation tolerates an action that never ran),
 * and ignore its late outcome; it must FAIL, which shows why the group waits.
 *
 * Environment (smaller than saga.pml, which checks the single-step protocol underneath): the
 * commit and its publish are one step (saga.pml shows the outbox and relay deliver committed
 * commands); two participants take deliveries in any order; a participant may die after its
 * handler's effect and before the commit (the delivery is redelivered); a command may be
 * delivered twice. Failures are business refusals recorded under the idempotency key (so twins
 * agree; technical failures on a last attempt are saga.pml's known gap). Handlers follow I1 and
 * I2 of saga.pml.
 */

#ifndef MAXCRASH
#define MAXCRASH 2
#endif
#ifndef MAXDUP
#define MAXDUP   2
#endif
#ifndef MAXFAIL
#define MAXFAIL  2
#endif

/* units: 1 = step 1, 2 = member A, 3 = member B, 4 = step 3 (the pivot) */
#define NU 4
/* a command: unit + 4 * phase (0 action, 1 compensation); 1..8 */
#define CMD(u, p) ((u) + 4 * (p))
#define UNIT(c)   (((c) - 1) % 4 + 1)
#define PHASE(c)  (((c) - 1) / 4)

#define RUNNING      0
#define COMPENSATING 1
#define COMPLETED    2
#define COMPENSATED  3

/* member states */
#define PENDING  0
#define DONE     1
#define FAILED   2
#define UNDONE   3

/* the store */
byte st = RUNNING;
byte cur = 1;           /* 1: step 1, 2: the group, 3: step 3 */
byte mem[4];            /* mem[2], mem[3]: the members' states while cur == 2 */
bool failing;           /* a member failed; the group waits for the others (WAIT) */

/* the broker: ready copies per command; sent: bit c = command c was sent (for duplicates) */
byte qc[9];
int sent;

/* the participants' databases */
byte key[NU + 1];       /* action key: 0 none, 1 done, 2 refused */
bool ckey[NU + 1];
bool live[NU + 1];
byte applied[NU + 1];
byte capplied[NU + 1];

/* ghosts */
bool done[NU + 1], cdone[NU + 1], everCompleted, everCompensated;
byte busy, crashes, dups, fails;

inline send(c) { qc[c]++; sent = sent | (1 << (c)) }

/* compensates the last DONE member (B before A); with none, step 1 */
inline compensate_next() {
    if
    :: mem[3] == DONE -> send(CMD(3, 1))
    :: mem[3] != DONE && mem[2] == DONE -> send(CMD(2, 1))
    :: mem[2] != DONE && mem[3] != DONE -> cur = 1; send(CMD(1, 1))
    fi
}

inline start_compensation() {
    st = COMPENSATING;
    compensate_next()
}

/* the group's outcome once no member is pending */
inline group_settled() {
    if
    :: mem[2] == PENDING || mem[3] == PENDING -> skip
    :: else ->
        if
        :: !failing -> cur = 3; send(CMD(4, 0))
        :: else -> start_compensation()
        fi
    fi
}

/* whether command c is the saga's current business (isCurrent) */
#define CURRENT(c) \
    (PHASE(c) == 0 && st == RUNNING && \
        ((UNIT(c) == 1 && cur == 1) || (UNIT(c) == 4 && cur == 3) || \
         ((UNIT(c) == 2 || UNIT(c) == 3) && cur == 2 && mem[UNIT(c)] == PENDING)) \
     || PHASE(c) == 1 && st == COMPENSATING && \
        ((UNIT(c) == 1 && cur == 1) || (UNIT(c) == 3 && cur == 2 && mem[3] == DONE) || \
         (UNIT(c) == 2 && cur == 2 && mem[2] == DONE && mem[3] != DONE)))

#define TAKE(c) :: qc[c] > 0 -> m = c;

proctype Participant() {
    byte m, u;
    bool ok, counted, held;
idle:
    atomic {
        m = 0; u = 0; ok = false; held = false;
        if :: counted -> busy--; counted = false :: else -> skip fi
    }
end_wait:
    atomic {
        if TAKE(1) TAKE(2) TAKE(3) TAKE(4) TAKE(5) TAKE(6) TAKE(7) TAKE(8) fi;
        qc[m]--; held = true; u = UNIT(m);
        if
        :: !CURRENT(m) -> held = false; goto idle      /* stale: acked, ignored */
        :: else -> busy++; counted = true
        fi
    }
    /* the handler (I1); ok = it reports success */
    atomic {
        if
        :: PHASE(m) == 0 ->
            if
            :: key[u] == 1 -> ok = true
            :: key[u] == 2 -> ok = false
            :: key[u] == 0 ->
                if
                :: key[u] = 1; live[u] = true; applied[u]++; assert(applied[u] <= 1); ok = true
                :: fails < MAXFAIL && u != 4 -> fails++; key[u] = 2; ok = false
                fi
            fi
        :: PHASE(m) == 1 ->
            if
            :: !ckey[u] -> ckey[u] = true; live[u] = false; capplied[u]++; assert(capplied[u] <= 1)
            :: else -> skip
            fi;
            ok = true
        fi
    }
    /* dies after the effect, before the commit: redelivered */
    if
    :: atomic { crashes < MAXCRASH -> crashes++; qc[m]++; held = false }; goto idle
    :: skip
    fi;
    /* commit (decided on the current state: the compare-and-swap and re-decision of SagaEngine) */
    atomic {
        if
        :: !CURRENT(m) ->
            /* discarded (I2): undo an action nobody will compensate */
            if
            :: PHASE(m) == 0 && ok && (st == COMPENSATING || st == COMPENSATED) && !done[u] -> live[u] = false
            :: else -> skip
            fi
        :: CURRENT(m) && PHASE(m) == 0 && ok ->
            assert(!done[u]); done[u] = true;
            if
            :: u == 1 -> cur = 2; mem[2] = PENDING; mem[3] = PENDING; send(CMD(2, 0)); send(CMD(3, 0))
            :: u == 4 -> st = COMPLETED; assert(!everCompensated); everCompleted = true
            :: u == 2 || u == 3 -> mem[u] = DONE; group_settled()
            fi
        :: CURRENT(m) && PHASE(m) == 0 && !ok ->
            if
            :: u == 1 -> st = COMPENSATED; assert(!everCompleted); everCompensated = true
            :: u == 2 || u == 3 ->
                mem[u] = FAILED; failing = true;
#ifdef BROKEN_COMPENSATE_AT_ONCE
                /* compensate the running sibling too; its late outcome is ignored */
                if
                :: mem[5 - u] == PENDING -> mem[5 - u] = DONE
                :: else -> skip
                fi;
#endif
                group_settled()
            fi
        :: CURRENT(m) && PHASE(m) == 1 ->
            assert(u != 4);                                 /* the pivot is never compensated */
            assert(!cdone[u]); cdone[u] = true;
#ifndef BROKEN_COMPENSATE_AT_ONCE
            assert(done[u]);                                /* only completed units */
#endif
            if
            :: u == 1 -> assert(!done[2] || cdone[2]); assert(!done[3] || cdone[3]);   /* newest first */
                st = COMPENSATED; assert(!everCompleted); everCompensated = true
            :: else -> mem[u] = UNDONE; compensate_next()
            fi
        fi;
        held = false;
        goto idle
    }
}

/* a duplicate delivery of any command sent so far (a re-send, a late redelivery) */
#define DUP(c) :: (sent & (1 << (c))) != 0 -> d = c;
active proctype Duplicator() {
    byte d;
end_dup:
    atomic {
        dups < MAXDUP;
        if DUP(1) DUP(2) DUP(3) DUP(4) DUP(5) DUP(6) DUP(7) DUP(8) fi;
        dups++; qc[d]++; d = 0
    }
}

init {
    atomic { send(CMD(1, 0)); run Participant(); run Participant() }
}

active proctype Monitor() {
end_monitor:
    atomic {
        st >= COMPLETED && busy == 0 ->
        if
        :: st == COMPLETED -> assert(live[1] && live[2] && live[3] && live[4])
        :: st == COMPENSATED -> assert(!live[1] && !live[2] && !live[3] && !live[4])
        fi
    }
}

ltl terminates { <> (st >= COMPLETED) }
