#!/usr/bin/env python3
"""abc-operator's worker entrypoint: pyABC's own Redis worker, plus a ledger.

pyABC's workers change shared counters (n_worker, n_eval, n_fail, n_job) and keep no record
of what they owe. A worker killed inside a generation (SIGKILL, OOM, node loss) leaves the
master waiting forever. This entrypoint runs pyABC's unchanged worker loop
(`pyabc.sampler.redis_eps.cli._work`) with a Redis client subclass that records, in the same
atomic Lua script as each counter change, what the worker owes: the generation it joined,
the evaluation indices it claimed and has not yet reported, the failures already counted
against them, the static jobs and the static lock it holds. The repair script
(repair.lua, which the operator runs too) gives exactly that back, once, for a worker known
dead. The Lua scripts ship beside this file.

Ledger: hash `abc_operator:ledger:{id}`, listed in the set `abc_operator:ledgers`.
Deleting the hash is part of every repair, so the hash is the token that makes a repair
happen at most once; a repair that corrects something also counts it in
`abc_operator:lost_workers`, in the same step. Every ledger-keeping script refuses to touch a
counter once its ledger is gone (a worker declared lost that was only hung), and the worker
then exits 3.

Environment:
  ABC_REDIS_HOST, ABC_REDIS_PORT, ABC_REDIS_PASSWORD   the run's Redis
  ABC_REDIS_SOCKET        its Unix socket, used instead of host and port where set (local runs)
  ABC_WORKER_ID           identity (default: the host name, which is the pod name);
                          with several processes each one is `{id}-{i}`
  ABC_WORKER_RUNTIME      runtime limit in pyABC's syntax (default 2h)
  ABC_WORKER_PROCESSES    worker processes (default 1), each with its own ledger, started by
                          this process, which beats for their ledgers (supervise)
  ABC_WORKER_CATCH        pyABC's --catch: "true" (default) counts a model's exception as a
                          failed evaluation, "false" makes the worker stop on it
  ABC_HEARTBEAT_SECONDS   ledger heartbeat period (default 5): the supervisor beats for a
                          worker process while that process exists and is not stopped,
                          whatever its model does (a model may hold Python's GIL for hours)
  ABC_SEND_AHEAD_BELOW_SECONDS  after evaluations shorter than this (default 0.05), start the
                          next one before the result's reply arrives; 0: never (LedgerRedis)

Exit codes: 0 normal end (runtime over, SIGTERM, stop message), 1 error, 2 bad
configuration, 3 the ledger was repaired by someone else (this worker was declared lost),
128 + N a worker process killed by signal N (e.g. 137: SIGKILL, the OOM killer).
"""

import os
import signal
import sys

# Until the supervisor forwards signals to its worker processes, a SIGTERM (a scale-down, or a
# replacement right after the start) or SIGINT ends this process at once: nothing is owed yet.
# With os._exit, not sys.exit: a SystemExit raised in the middle of an import came out of a C
# extension's initialisation as an exception that matplotlib catches, and the worker went on
# as if nothing had been asked, until the kubelet's SIGKILL hit it inside a generation (seen on
# the real node, about one SIGTERM in 200 in the second after a start). Where this process is
# PID 1 (a container of its own PID namespace) a handler is also what makes the kernel deliver
# the signal at all.
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
signal.signal(signal.SIGINT, lambda *_: os._exit(0))

import logging  # noqa: E402
import mmap  # noqa: E402
import multiprocessing  # noqa: E402
import multiprocessing.connection  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import redis  # noqa: E402
from pyabc.sampler.redis_eps import cli  # noqa: E402
from pyabc.sampler.redis_eps.work import work_on_population_dynamic  # noqa: E402
from pyabc.sampler.redis_eps.work_static import work_on_population_static  # noqa: E402
from redis.lock import Lock  # noqa: E402

LEDGER_SET = 'abc_operator:ledgers'
LEDGER_PREFIX = 'abc_operator:ledger:'
LOST_WORKERS = 'abc_operator:lost_workers'
# The analysis whose master waits only for the evaluations that can change its sample (the
# abc_operator module's sampler writes it: EARLY_RELEASE_KEY there); results.lua reads it.
EARLY_RELEASE = 'abc_operator:early_release'
EXIT_ERROR, EXIT_CONFIG, EXIT_LOST = 1, 2, 3
# What a worker process tells its supervisor (one shared byte): registering its ledger, the
# ledger registered (the supervisor beats for it), settling it at exit, settled.
STARTING, REGISTERED, LEAVING, LEFT = 0, 1, 2, 3
# Redis connections a worker process holds (see Config.pool), and a worker's supervisor
# (Config.heartbeat_client); docs/scaling.md states the same figures.
CONNECTIONS_PER_PROCESS = 2
CONNECTIONS_PER_SUPERVISOR = 1
# A dead peer is noticed after about 30 + 3 * 10 s of silence (Linux names).
KEEPALIVE = {
    getattr(socket, name): value
    for name, value in (('TCP_KEEPIDLE', 30), ('TCP_KEEPINTVL', 10), ('TCP_KEEPCNT', 3))
    if hasattr(socket, name)
}
GONE = 'ABC_LEDGER_GONE'
# A result script is sent ahead (the next simulation starts before its reply: see
# LedgerRedis) only after an evaluation shorter than this (ABC_SEND_AHEAD_BELOW_SECONDS; 0:
# never). Slower models gain less than 1% from it, and at a generation's end one simulation
# started ahead may be wasted.
SEND_AHEAD_BELOW_S = 0.05

log = logging.getLogger('abc_worker')

# ---------------------------------------------------------------------------------------
# Lua scripts. Each one runs atomically in Redis, so a ledger and the counter it shadows
# can never disagree, whenever the process dies. They ship beside this file, one a file (in
# the operator's ConfigMap, the local runner's folder, the source tree); what each one takes
# and returns is written at its top.

LUA_DIR = os.path.dirname(os.path.abspath(__file__))
LUA_INCLUDE = '-- include: '


def lua_script(name: str) -> str:
    """The text of the Lua script `name` in LUA_DIR, where a line `-- include: other.lua`
    stands for the text of that file (the fragments two scripts share)."""
    with open(os.path.join(LUA_DIR, name), encoding='utf-8') as file:
        lines = file.read().splitlines(keepends=True)
    return ''.join(
        lua_script(line[len(LUA_INCLUDE) :].strip()) if line.startswith(LUA_INCLUDE) else line
        for line in lines
    )


REGISTER_LUA = lua_script('register.lua')
HEARTBEAT_LUA = lua_script('heartbeat.lua')
COUNTER_LUA = lua_script('counter.lua')
RESULTS_LUA = lua_script('results.lua')
LOCK_ACQUIRE_LUA = lua_script('lock_acquire.lua')
LOCK_RELEASE_LUA = lua_script('lock_release.lua')
# The operator runs this same script (src/protocol/repair.rs includes the file).
REPAIR_LUA = lua_script('repair.lua')


# ---------------------------------------------------------------------------------------
# The Redis client pyABC's worker loop gets.


class Reply:
    """The reply of a command sent and not read yet (LedgerConnection.pending)."""

    def __init__(self):
        self.done = False
        self.value = None
        self.error = None


class PendingReply:
    """For a connection that may carry one reply nobody has read yet: a result script sent
    ahead (LedgerRedis). Whoever takes the connection from the pool next, or sends on it,
    reads that reply first, into its Reply; so the runtime limit's thread keeps sharing the
    process' one command connection while pyABC simulates, instead of waiting for the
    simulation or opening a connection of its own."""

    pending = None

    def read_pending(self):
        reply, self.pending = self.pending, None
        if reply is not None:
            try:
                reply.value = self.read_response()
            except Exception as err:  # the script's error, or a lost connection: its sender's
                reply.error = err
            reply.done = True

    def can_read(self, timeout=0):
        # the pool asks this before it hands the connection out, and reconnects one with
        # data waiting: the pending reply must not count as such
        self.read_pending()
        return super().can_read(timeout)

    def send_packed_command(self, command, check_health=True):
        self.read_pending()
        super().send_packed_command(command, check_health)

    def disconnect(self, *args, **kwargs):
        reply, self.pending = self.pending, None
        if reply is not None:
            reply.error = redis.exceptions.ConnectionError(
                'the connection closed before the result script answered'
            )
            reply.done = True
        super().disconnect(*args, **kwargs)


class LedgerConnection(PendingReply, redis.Connection):
    """TCP, with a reply that may be pending (PendingReply)."""


class LedgerUnixConnection(PendingReply, redis.UnixDomainSocketConnection):
    """A Unix socket (ABC_REDIS_SOCKET), with a reply that may be pending (PendingReply)."""


class ClaimIndex:
    """The highest index of the claim a result script sent ahead makes: what pyABC's INCRBY
    n_eval gets then. pyABC computes with it only once the evaluation is done (the indices
    it reports), and that first use reads the script's reply (LedgerRedis._receive)."""

    def __init__(self, client):
        self._client = client
        self.value = None
        self.taken = False  # pyABC's loop got it and simulates the evaluation

    def _int(self):
        if self.value is None:
            self._client._receive()
        return self.value

    def __index__(self):
        return self._int()

    __int__ = __index__

    def __add__(self, other):
        return self._int() + other

    __radd__ = __add__

    def __sub__(self, other):
        return self._int() - other

    def __rsub__(self, other):
        return other - self._int()


class Sent:
    """A result script sent ahead, its reply unread."""

    def __init__(self, reply, args, index):
        self.reply, self.args, self.index = reply, args, index


class LedgerGone(Exception):
    """Our ledger was repaired: we were declared lost and must not touch counters again."""


class GenerationCleared(Exception):
    """A value of the generation pyABC's dynamic loop works on is gone: the master cleared
    the generation under the worker (leaving_a_cleared_generation)."""


# The generation's values pyABC's dynamic loop decodes without looking (its get_int, and
# the model it reloads when look-ahead sampling ends): missing, they mean a cleared generation.
GENERATION_READS = (
    'n_acc_',
    'n_req_',
    'n_eval_',
    'n_fail_',
    'is_look_ahead_',
    'sample_simulate_accept_',
)


class Status:
    """A worker process' status (STARTING, REGISTERED, LEAVING, LEFT), which its supervisor
    reads: one byte of anonymous memory shared across the fork (no file: /dev/shm and the
    temporary folder may be read-only)."""

    def __init__(self):
        self._byte = mmap.mmap(-1, 1)  # MAP_SHARED | MAP_ANONYMOUS

    @property
    def value(self) -> int:
        return self._byte[0]

    @value.setter
    def value(self, status: int):
        self._byte[0] = status


class State:
    """What the main thread and the runtime thread share in one worker process."""

    def __init__(self, ledger_id: str, status=None):
        self.ledger_id = ledger_id
        self.ledger_key = LEDGER_PREFIX + ledger_id
        # what the supervisor reads: whether there is a ledger to beat for (run_worker)
        self.status = status if status is not None else Status()
        self.runtime = ''  # pyABC's syntax, for messages
        # held around joining/leaving a generation, so that the runtime deadline cannot
        # make the process exit between a join and its bookkeeping
        self.lock = threading.Lock()
        self.in_generation = False
        self.stopping = threading.Event()
        self.pool = None  # the process' connections (Config.pool), once it works
        # what tells that pyABC's loop leaves at its next check (see leaving)
        self.kill_handler = None
        self.deadline = float('inf')
        self.send_ahead_below_s = SEND_AHEAD_BELOW_S
        self.in_dynamic_loop = False  # pyABC's dynamic loop runs (GenerationCleared)

    def leaving(self) -> bool:
        """pyABC's loop leaves the generation at its next check: it received SIGTERM, or its
        runtime is over (pyABC counts it from a moment after we do, so ours ends first)."""
        killed = self.kill_handler is not None and self.kill_handler.killed
        return killed or time.monotonic() >= self.deadline


STATE: State = None  # set per process before pyABC's loop starts

# pyABC counter key prefix -> ledger operation for INCRBY (amount > 0) and DECRBY
COUNTER_OPS = (
    ('n_worker_', 'join', 'leave'),
    ('n_eval_', 'claim', 'claim'),
    ('n_fail_', 'fail', 'fail'),
    ('n_job_', 'job', 'job'),
    ('n_lookahead_eval_', 'count', 'count'),
    ('n_acc_', 'count', 'count'),
)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _gone(err: redis.exceptions.ResponseError) -> bool:
    return str(err).startswith(GONE)


class LedgerLock(Lock):
    """pyABC's static `redis.lock('worker')`, recorded in the ledger while held."""

    def do_acquire(self, token) -> bool:
        expiry = '' if not self.timeout else str(int(self.timeout * 1000))
        return bool(self.redis.ledger_script('lock_acquire', [self.name], [token, expiry]))

    def do_release(self, expected_token) -> None:
        if not self.redis.ledger_script('lock_release', [self.name], [expected_token]):
            raise redis.exceptions.LockNotOwnedError(
                "Cannot release a lock that's no longer owned", lock_name=self.name
            )


class Ahead:
    """What the last result script read, and claimed, for pyABC's next loop iteration."""

    def __init__(self, reads, claim, left, analysis, generation):
        self.reads = reads  # key -> value, for pyABC's GETs
        self.claim = claim  # (n_eval key, batch size, highest index) or None
        self.left = left  # (n_worker key, its value after leaving) or None
        self.analysis, self.generation = analysis, generation


class LedgerRedis(redis.StrictRedis):
    """StrictRedis whose counter changes and result pipelines also keep the ledger.

    Round trips per dynamic evaluation: pyABC's plain client makes 5 (GET n_acc, GET n_req,
    GET analysis_id, INCRBY n_eval, the result MULTI/EXEC; 8 in the calibration sample), this
    one 1: the result script reports an evaluation, reads what pyABC's loop checks next and,
    where that loop is about to claim its next evaluation, claims it too, in one atomic step
    (in look-ahead sampling pyABC's loop claims by itself: 2). pyABC's next GETs and its
    INCRBY n_eval are then answered from that: the claim it would have made a moment later,
    on the values it would have read (other workers change them between its own GETs
    anyway). Where those values end pyABC's loop, the script also leaves the generation
    (pyABC's DECR n_worker, answered from it): the master, which sleeps 100 ms whenever it
    finds a worker still in a generation that has its acceptances, finds none a round trip
    sooner; the result that completes the generation also releases the other workers whose
    running evaluations can no longer change the sample (RESULTS_LUA), so the master need
    not wait for them. Without a claim or a leave each read is served once, and only until a command of
    any other kind. Nothing is claimed ahead once pyABC's loop is leaving (SIGTERM, runtime
    over: see State.leaving), so a worker scaled down reports all it claimed. A claim the
    loop does not take all the same (a SIGTERM during the result script) is given back
    before the next command, as a failed evaluation (COUNTER_LUA).

    After an evaluation shorter than SEND_AHEAD_BELOW_S the worker does not even wait for
    that round trip: the result script is sent ahead (_send_ahead) and its reply read once
    the next simulation is done; not within a few acceptances of a generation's end
    (_far_from_the_end).
    """

    def __init__(self, *args, **kwargs):
        # pyABC passes host, port and password; the process' one pool (Config.pool, whose
        # connections a result script can be sent ahead on) already has them.
        kwargs['connection_pool'] = STATE.pool
        super().__init__(*args, **kwargs)
        self._scripts = {
            'counter': self.register_script(COUNTER_LUA),
            'results': self.register_script(RESULTS_LUA),
            'lock_acquire': self.register_script(LOCK_ACQUIRE_LUA),
            'lock_release': self.register_script(LOCK_RELEASE_LUA),
        }
        self._ahead = None  # Ahead, from the last dynamic result
        self._sent = None  # Sent: a result script sent ahead, its reply unread
        # (analysis, generation, batch size, reads) of the last reply that made a claim: what
        # pyABC's checks get while the next result script's reply is unread
        self._claiming = None
        self._claimed_at = float('-inf')  # when pyABC's loop got its last claim
        # pyABC finishes an evaluation that the script sent ahead did not claim (its
        # generation was over): its report and failures are dropped, then this Ahead serves
        self._unclaimed = None

    def ledger_script(self, name, keys, args):
        """EVALSHA of a ledger script, straight to the connection (no wrapper on the hot
        path); loads the script once if the server does not know it yet."""
        script = self._scripts[name]
        command = ('EVALSHA', script.sha, len(keys) + 1, STATE.ledger_key, *keys, *args)
        try:
            try:
                return super().execute_command(*command)
            except redis.exceptions.NoScriptError:
                script.sha = super().execute_command('SCRIPT LOAD', script.script)
                return super().execute_command('EVALSHA', script.sha, *command[2:])
        except redis.exceptions.ResponseError as err:
            if _gone(err):
                raise LedgerGone(str(err)) from None
            raise

    def execute_command(self, *args, **options):
        if self._ahead is not None:
            served, value = self._from_ahead(args)
            if served:
                return _generation_value(args, value)
        self._receive()
        op = self._ledger_op(args)
        if op is None:
            return _generation_value(args, super().execute_command(*args, **options))
        op, key, amount, analysis, generation = op
        if op == 'fail' and self._unclaimed is not None:
            return 0  # a failure of the evaluation nobody claimed
        if op == 'claim':
            self._claimed_at = time.monotonic()
        with STATE.lock:
            value = self.ledger_script('counter', [key], [op, amount, analysis, generation])
            if op == 'join':
                # 0: the generation was over (COUNTER_LUA), nothing joined
                STATE.in_generation = value > 0
            elif op == 'leave':
                STATE.in_generation = False
        return value

    def leave_cleared(self, analysis, generation):
        """Leaves a generation the master cleared: a claim a result script made ahead is given
        back and pyABC's DECR n_worker only drops 'joined' (neither creates a key of the
        generation again: COUNTER_LUA)."""
        self._drop_ahead()
        self._claiming = self._unclaimed = None
        with STATE.lock:
            self.ledger_script(
                'counter',
                [f'n_worker_{analysis}_{generation}'],
                ['leave', -1, analysis, generation],
            )
            STATE.in_generation = False

    def _from_ahead(self, args):
        """(True, reply) where the last result script answers `args`, else (False, None),
        having dropped what it read unless `args` is a GET while a claim waits for pyABC."""
        ahead = self._ahead
        is_get = args[0] == 'GET' and len(args) == 2
        if is_get and args[1] in ahead.reads:
            # with a claim or a leave waiting, until pyABC takes it (its calibration loop reads
            # n_req twice); without one, once each
            waiting = ahead.claim or ahead.left
            return True, ahead.reads[args[1]] if waiting else ahead.reads.pop(args[1])
        if ahead.left is not None:
            self._ahead = None
            key, value = ahead.left
            if args == ('DECRBY', key, 1):
                return True, value
            # anything else first: the DECR that follows finds the ledger not joined and
            # changes nothing (COUNTER_LUA)
            return False, None
        if ahead.claim is not None:
            key, batch, highest = ahead.claim
            if args == ('INCRBY', key, batch):
                self._ahead = None
                self._claimed_at = time.monotonic()
                if isinstance(highest, ClaimIndex):
                    highest.taken = True
                return True, highest
        if self._sent is not None:
            # the claim is the unread reply's: that reply decides the rest
            self._receive()
            return self._from_ahead(args) if self._ahead is not None else (False, None)
        if ahead.claim is not None and is_get:
            # e.g. pyABC reloading its simulation when look-ahead ends
            return False, None
        self._drop_ahead()
        return False, None

    def _drop_ahead(self):
        self._receive()
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.claim is not None:
            self.ledger_script(
                'counter', [ahead.claim[0]], ['unclaim', 0, ahead.analysis, ahead.generation]
            )

    @staticmethod
    def _ledger_op(args):
        """(op, key, amount, analysis, generation) for a pyABC counter change, else None."""
        if len(args) != 3:
            return None
        command = _text(args[0]).upper()
        if command != 'INCRBY' and command != 'DECRBY':
            return None
        key = _text(args[1])
        amount = int(args[2]) * (1 if command == 'INCRBY' else -1)
        for prefix, up, down in COUNTER_OPS:
            if key.startswith(prefix):
                analysis, _, generation = key[len(prefix):].rpartition('_')
                return (up if amount > 0 else down), key, amount, analysis, generation
        return None

    def pipeline(self, transaction=True, shard_hint=None):
        """pyABC reports results with a pipeline: run it as one ledger-keeping script."""
        self._drop_ahead()
        pipe = super().pipeline(transaction, shard_hint)
        plain_execute = pipe.execute

        def execute(raise_on_error=True):
            commands = [args for args, _options in pipe.command_stack]
            kind, analysis, generation = _results_kind(commands)
            if kind is None:  # e.g. the worker's initial multi-GET: left untouched
                return plain_execute(raise_on_error)
            pipe.reset()
            self._receive()
            if self._unclaimed is not None:
                # the report of the evaluation nobody claimed: dropped (pyABC ignores the
                # replies); pyABC's next checks get what the script read instead
                self._ahead, self._unclaimed = self._unclaimed, None
                return []
            flat = [kind, analysis, generation, '0' if STATE.leaving() else '1']
            for args in commands:
                flat += [len(args), *args]
            claiming = self._claiming
            if (
                kind == 'dynamic'
                and flat[3] == '1'
                and claiming is not None
                and claiming[:2] == (analysis, generation)
                and time.monotonic() - self._claimed_at < STATE.send_ahead_below_s
                and _far_from_the_end(claiming[3], f'{analysis}_{generation}')
            ):
                return self._send_ahead(flat)
            with STATE.lock:  # the script may leave the generation
                return self._result(flat, self.ledger_script('results', [], flat), None)

        pipe.execute = execute
        return pipe

    def _send_ahead(self, args):
        """Sends the result script without reading its reply, so that pyABC starts its next
        simulation at once: its checks get what the last claiming reply read (it claimed, so
        they let the loop go on), and its INCRBY n_eval a ClaimIndex, the claim this script
        makes where pyABC's loop would. The claim's index is fixed by a command sent before
        the simulation starts, never by the simulation, so the sampling stays as unbiased as
        pyABC's own order. Where the script claims nothing (the generation is over), that
        simulation is wasted: its report and failures are dropped."""
        analysis, generation, batch, reads = self._claiming
        pool = self.connection_pool
        conn = pool.get_connection()
        try:
            script = self._scripts['results']
            conn.send_command('EVALSHA', script.sha, 1, STATE.ledger_key, *args)
            reply = conn.pending = Reply()
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        index = ClaimIndex(self)
        self._sent = Sent(reply, args, index)
        key = f'n_eval_{analysis}_{generation}'
        self._ahead = Ahead(reads, (key, batch, index), None, analysis, generation)
        return []

    def _receive(self):
        """Reads the reply of the result script sent ahead, if any."""
        sent, self._sent = self._sent, None
        if sent is None:
            return
        reply = sent.reply
        if not reply.done:
            # the process' one command connection, whose checkout reads the reply
            self.connection_pool.release(self.connection_pool.get_connection())
        try:
            if not reply.done:
                raise redis.exceptions.ConnectionError('the result script\'s reply was lost')
            if reply.error is not None:
                raise reply.error
            value = reply.value
        except redis.exceptions.NoScriptError:
            # Redis lost its scripts (a restart): the script did not run. Run it now, as one
            # that may not claim: a claim made after the simulation started could depend on it.
            args = list(sent.args)
            args[3] = '0'
            value = self.ledger_script('results', [], args)
        except redis.exceptions.ResponseError as err:
            if _gone(err):
                raise LedgerGone(str(err)) from None
            raise
        with STATE.lock:
            self._result(sent.args, value, sent.index)

    def _result(self, args, reply, index):
        """Takes in the reply of a result script (sent ahead with `index`, else None);
        returns pyABC's pipeline replies."""
        replies, reads, claim, left = reply
        if left:
            STATE.in_generation = False
        kind, analysis, generation = args[:3]
        if kind != 'dynamic':
            return replies
        g = f'{analysis}_{generation}'
        keys = _read_keys(g)
        reads = dict(zip(keys, reads))
        ahead = Ahead(
            reads,
            (keys[4], claim[1], claim[0]) if claim else None,
            ('n_worker_' + g, left[0]) if left else None,
            analysis,
            generation,
        )
        self._claiming = (analysis, generation, claim[1], reads) if claim else None
        if index is None or not index.taken:
            if index is not None:
                index.value = claim[0] if claim else 0
            self._ahead = ahead
        elif claim:
            index.value = claim[0]  # pyABC simulates it
        else:
            index.value = 0
            self._unclaimed = ahead
        return replies

    def lock(self, name, *args, **kwargs):
        kwargs['lock_class'] = LedgerLock
        return super().lock(name, *args, **kwargs)

    def pubsub(self, **kwargs):
        """pyABC's subscription, whose `listen` takes a run of `start` messages that are
        already waiting as one (see `coalesced_starts`)."""
        pubsub = super().pubsub(**kwargs)
        listen = pubsub.listen
        pubsub.listen = lambda: coalesced_starts(listen(), pubsub.get_message)
        return pubsub


def _generation_value(args, value):
    """`value`, the reply to `args`; raises GenerationCleared where pyABC's dynamic loop
    would fail on it (a GET of its generation's values that finds nothing)."""
    if (
        value is None
        and STATE.in_dynamic_loop
        and args[0] == 'GET'
        and _text(args[1]).startswith(GENERATION_READS)
    ):
        raise GenerationCleared(_text(args[1]))
    return value


def _is_start(message) -> bool:
    return message['type'] == 'message' and _text(message['data']) == 'start'


def coalesced_starts(messages, waiting):
    """`messages`, where a `start` followed by `start`s already received (`waiting()`
    returns them without blocking) is one `start`.

    pyABC's worker handles each `start` by reading the generation's state afresh, so a run of
    them asks nothing that the last one does not; but every repair publishes one (to bring
    back workers that left a generation), and with thousands of workers, each busy in the
    generation while a hundred lost ones are repaired, every worker would otherwise re-enter
    the finished generation a hundred times afterwards, fetching its pickled simulation each
    time.
    """
    for message in messages:
        while _is_start(message):
            following = waiting(timeout=0)
            if following is None:
                break
            if not _is_start(following):
                yield message
                message = following
                break
            message = following
        yield message


def _far_from_the_end(reads, generation):
    """Whether the generation still needs more than a few acceptances (by what a result
    script read): near its end the worker waits for each reply again, so that its last one,
    which leaves the generation, reaches Redis as soon as possible, and no simulation started
    ahead competes with the master for a core while it looks whether every worker left."""
    try:
        n_acc = int(reads['n_acc_' + generation])
        n_req = int(reads['n_req_' + generation])
    except (KeyError, TypeError, ValueError):
        return False
    return n_req - n_acc > max(2, n_req // 50)


def _read_keys(generation):
    """The keys RESULTS_LUA reads for `{ana}_{t}`, in its order."""
    # n_eval and n_fail come last, and only with a claim: they bound the evaluations of the
    # calibration sample and of look-ahead sampling. Read apart from a claim, they would let a
    # worker claim more often past that bound than pyABC's own client does; read in the same
    # step as the claim, they are exact.
    return ['analysis_id'] + [
        name + generation
        for name in ('n_acc_', 'n_req_', 'is_look_ahead_', 'n_eval_', 'n_fail_')
    ]


def _results_kind(commands):
    """('dynamic', analysis, generation) for a pipeline reporting done indices, ('static', '',
    '') for a static result, (None, '', '') for any other pipeline."""
    pushes = [_text(args[1]) for args in commands if _text(args[0]).upper() == 'RPUSH']
    for key in pushes:
        if key.startswith('done_ixs_'):
            return ('dynamic', *key[len('done_ixs_'):].rpartition('_')[::2])
    if any(key.startswith('queue_') for key in pushes):
        return 'static', '', ''
    return None, '', ''


# ---------------------------------------------------------------------------------------
# One worker process.


class Config:
    def __init__(self, env):
        self.host = env.get('ABC_REDIS_HOST', 'localhost')
        self.port = int(env.get('ABC_REDIS_PORT', '6379'))
        self.socket = env.get('ABC_REDIS_SOCKET') or None
        self.password = env.get('ABC_REDIS_PASSWORD') or None
        self.worker_id = env.get('ABC_WORKER_ID') or socket.gethostname()
        self.runtime = env.get('ABC_WORKER_RUNTIME', '2h')
        self.runtime_s = cli.runtime_parse(self.runtime)
        self.processes = int(env.get('ABC_WORKER_PROCESSES', '1'))
        self.heartbeat_s = float(env.get('ABC_HEARTBEAT_SECONDS', '5'))
        self.send_ahead_below_s = float(
            env.get('ABC_SEND_AHEAD_BELOW_SECONDS', str(SEND_AHEAD_BELOW_S))
        )
        catch = env.get('ABC_WORKER_CATCH', 'true').lower()
        if catch not in ('true', 'false'):
            raise ValueError(f'ABC_WORKER_CATCH must be true or false, not {catch!r}')
        self.catch = catch == 'true'
        if self.processes < 1 or self.heartbeat_s <= 0 or self.runtime_s <= 0:
            raise ValueError('processes, heartbeat and runtime must be positive')
        if self.send_ahead_below_s < 0:
            raise ValueError('ABC_SEND_AHEAD_BELOW_SECONDS must not be negative')

    def pool(self):
        """The connections of one worker process: at most CONNECTIONS_PER_PROCESS.

        pyABC's worker loop holds one for its pub/sub subscription (a subscribed connection
        can run no other command) and needs one for its commands; the ledger's registration,
        its runtime limit and settling share that second one rather than opening their own (a
        blocking pool makes them wait for a command in flight instead of connecting again).
        The heartbeat is the supervisor's (supervise). With 10,000 worker processes on one
        Redis, every connection per process is 10,000 client connections and file
        descriptors of redis-server.
        """
        return redis.BlockingConnectionPool(
            max_connections=CONNECTIONS_PER_PROCESS,
            # one wait longer than any single command of the worker takes
            timeout=30,
            password=self.password,
            # Workers wait indefinitely for messages between generations (redis-py's default
            # socket timeout would turn that wait into an error).
            socket_timeout=None,
            socket_connect_timeout=30,
            **self._address(),
        )

    def _address(self):
        """Where the pools connect, as redis-py's connection settings."""
        if self.socket:
            # a Unix socket (the local runner's): each round trip costs the worker and Redis
            # less CPU than loopback TCP; a dead server closes it
            return {'connection_class': LedgerUnixConnection, 'path': self.socket}
        # TCP keepalive detects a Redis that vanished without closing the connection
        return {
            'connection_class': LedgerConnection,
            'host': self.host,
            'port': self.port,
            'socket_keepalive': True,
            'socket_keepalive_options': KEEPALIVE,
        }

    def redis_text(self):
        """Where Redis is, for messages."""
        return self.socket or f'{self.host}:{self.port}'

    def client(self):
        """A client of its own, for a worker process settling its ledger at exit."""
        return redis.StrictRedis(connection_pool=self.pool())

    def heartbeat_client(self):
        """The supervisor's one connection: heartbeats, and settling a process that died.
        Its replies are awaited no longer than a heartbeat period (at least a second), so that
        a Redis that stops answering delays neither the next beat nor reaping a process."""
        timeout = max(self.heartbeat_s, 1.0)
        pool = redis.ConnectionPool(
            max_connections=1,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            **self._address(),
        )
        return redis.StrictRedis(connection_pool=pool)


def settle(admin, state: State, why: str):
    """Run the repair script on our own ledger.

    Normally the ledger owes nothing and this just deletes it. After an unexpected error
    inside a generation, or for a predecessor with our id that died (a restarted
    container), it gives the obligations back exactly like the operator would.
    """
    script = admin.register_script(REPAIR_LUA)
    reply = script(keys=[state.ledger_key, LEDGER_SET, LOST_WORKERS], args=[state.ledger_id])
    if reply is None:
        return
    repair = {_text(name): value for name, value in zip(reply[::2], reply[1::2])}
    left, last = repair['left_generation'], repair['last_index']
    jobs, unlocked = repair['jobs_returned'], repair['lock_released']
    if left or last or jobs or unlocked:
        log.warning(
            f'{why}: repaired ledger {state.ledger_id} '
            f'(generation {_text(repair["generation"])}): '
            f'left={left} indices={repair["first_index"]}..{last} '
            f'n_fail+={repair["failures_added"]} jobs+={jobs} lock_released={unlocked}'
        )


def enforce_runtime(admin, state: State, deadline: float):
    """The runtime limit while idle, in a background thread.

    pyABC checks its runtime only inside a generation and after a pub/sub message, so an
    idle worker would outlive it; here the limit holds in every state.
    """
    while True:
        remaining = deadline - time.monotonic()
        if state.stopping.wait(remaining if remaining > 0 else 0.5):
            return
        with state.lock:
            if not state.in_generation and not state.stopping.is_set():
                # idle: leave now; inside a generation pyABC leaves at its next check
                log.info(f'runtime {state.runtime} over while idle: exiting')
                state.stopping.set()
                settle_own(admin, state, 'runtime over')
                logging.shutdown()
                os._exit(0)


def settle_own(admin, state: State, why: str):
    """A worker process' own settling of its ledger as it exits; the supervisor stops beating
    for the ledger first (it would take the ledger's end for a repair)."""
    state.status.value = LEAVING
    settle(admin, state, why)
    state.status.value = LEFT


def leaving_a_cleared_generation(work):
    """pyABC's dynamic loop fails (AttributeError on None) where a value of its generation is
    gone: the master cleared the generation while the worker was still in it, e.g. a master
    with wait_for_all_samples once it saw n_worker 0, or one that was restarted. The worker
    leaves that generation instead, as pyABC would at its next check, and waits for the next
    one."""

    def work_until_cleared(**kwargs):
        STATE.in_dynamic_loop = True
        try:
            return work(**kwargs)
        except GenerationCleared as cleared:
            analysis, t = kwargs['analysis_id'], kwargs['t']
            log.info(
                f'generation {t} of analysis {analysis} was cleared while this worker was in '
                f'it ({cleared} is gone): leaving it'
            )
            kwargs['redis'].leave_cleared(analysis, t)
            kwargs['kill_handler'].exit = True
            return None
        finally:
            STATE.in_dynamic_loop = False

    return work_until_cleared


def leaving_after_a_kill(work):
    """pyABC's KillHandler only records a SIGTERM that arrives inside a generation, and its
    loop looks at the record before each evaluation: a SIGTERM during the generation's last
    evaluations is forgotten when the generation ends, the worker joins the next one, and the
    kubelet's SIGKILL hits it there at the end of the grace period. Leave after the
    generation instead (pyABC has already taken the worker out of it)."""

    def work_then_leave_if_killed(*args, **kwargs):
        kill_handler = STATE.kill_handler = kwargs.get('kill_handler')
        result = work(*args, **kwargs)
        if kill_handler is not None and kill_handler.killed:
            log.info('SIGTERM during the generation: leaving after it')
            sys.exit(0)
        return result

    return work_then_leave_if_killed


def run_worker(config: Config, ledger_id: str, process: int, status) -> int:
    """One worker process: pyABC's worker loop with the ledger `ledger_id`; tells its
    supervisor through `status` (a shared byte: STARTING, REGISTERED, LEAVING, LEFT) whether
    there is a ledger to beat for."""
    global STATE
    STATE = state = State(ledger_id, status)
    state.runtime = config.runtime
    deadline = state.deadline = time.monotonic() + config.runtime_s
    state.send_ahead_below_s = config.send_ahead_below_s
    state.pool = config.pool()
    admin = redis.StrictRedis(connection_pool=state.pool)
    try:
        settle(admin, state, 'a previous process with this id left obligations')
        registered = admin.register_script(REGISTER_LUA)(
            keys=[state.ledger_key, LEDGER_SET],
            args=[ledger_id, config.worker_id, process, socket.gethostname(), os.getpid()],
        )
    except redis.RedisError as err:
        log.error(f'cannot use Redis at {config.redis_text()}: {err}')
        return EXIT_ERROR
    if not registered:
        log.error(f'another worker registered the ledger id {ledger_id} meanwhile')
        return EXIT_CONFIG
    status.value = REGISTERED
    keeper = threading.Thread(target=enforce_runtime, args=(admin, state, deadline), daemon=True)
    keeper.start()
    log.info(f'worker {ledger_id} ready (runtime {config.runtime})')
    code = 0
    try:
        # The only changes to pyABC's worker: its Redis client keeps the ledger, a SIGTERM
        # inside a generation is not forgotten, and a generation cleared under the worker is
        # left quietly.
        cli.StrictRedis = LedgerRedis
        cli.work_on_population_dynamic = leaving_after_a_kill(
            leaving_a_cleared_generation(work_on_population_dynamic)
        )
        cli.work_on_population_static = leaving_after_a_kill(work_on_population_static)
        cli._work(config.host, config.port, config.runtime, config.password, config.catch)
    except SystemExit as exit_:  # pyABC's KillHandler exits on SIGTERM/SIGINT
        code = exit_.code if isinstance(exit_.code, int) else 0
    except LedgerGone:
        log.error('ledger repaired by the operator: this worker was declared lost')
        return EXIT_LOST
    except Exception:
        log.exception('worker failed')
        code = EXIT_ERROR
    finally:
        with state.lock:
            state.stopping.set()
    try:
        # A connection of its own: pyABC's subscription still holds one of the process' two,
        # and the other may be held by whatever the exit interrupted; waiting for the pool
        # could outlast the pod's grace period.
        settle_own(config.client(), state, 'exit')
    except redis.RedisError as err:
        log.error(f'could not remove the ledger at exit: {err}')
        code = code or EXIT_ERROR
    log.info(f'worker {ledger_id} exits with {code}')
    return code


# ---------------------------------------------------------------------------------------
# The supervisor: the worker processes, and the heartbeat of their ledgers.


class Supervised:
    """A worker process, as its supervisor sees it."""

    def __init__(self, process, status):
        self.process = process
        self.ledger_id = process.name
        self.status = status  # the byte run_worker writes
        self.fenced = False  # killed by us: its ledger was repaired


def supervise(config: Config) -> int:
    """Starts the worker processes, beats for their ledgers, and settles the ledger of one
    that dies; returns the first failure's exit code (0 if none failed).

    The heartbeat is the supervisor's, not the worker process': a model that holds Python's
    GIL (a compiled simulator bound without releasing it) for longer than the heartbeat
    timeout would starve a thread of that process, and a busy worker would be declared lost,
    killed and repaired. The supervisor beats for a process as long as that process exists
    and is not stopped (SIGSTOP, a debugger), and only while its ledger is registered and
    not being settled; so a process that is stopped, dead or cut off from Redis together
    with its supervisor (the pod's network) still goes stale. A model that loops forever
    while running is busy as far as anyone can tell: the runtime limit ends it (on a
    cluster the operator replaces an expired worker, SIGKILL after the grace period).
    """
    ctx = multiprocessing.get_context('fork')  # pyabc is imported once, in the parent
    ledger_ids = (
        [config.worker_id]
        if config.processes == 1
        else [f'{config.worker_id}-{i}' for i in range(config.processes)]
    )
    children = {}
    supervisor = os.getpid()
    received = []

    def forward(signum, _frame):
        if os.getpid() != supervisor:
            # a worker process just forked, before _child set its own handler: nothing owed
            os._exit(0)
        received.append(signum)
        for child in children.values():
            if child.process.pid and child.process.exitcode is None:
                os.kill(child.process.pid, signum)

    # Before the first fork, so that no signal falls between a fork and the forwarding.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for i, ledger_id in enumerate(ledger_ids):
        status = Status()
        child = ctx.Process(
            target=_child, args=(config, ledger_id, i, status, supervisor), name=ledger_id
        )
        child.start()
        children[child.sentinel] = Supervised(child, status)
        if received:  # the signal came before this child was in `children`
            os.kill(child.pid, received[0])
    admin = config.heartbeat_client()
    heartbeat = admin.register_script(HEARTBEAT_LUA)
    code = 0
    next_beat = time.monotonic() + config.heartbeat_s
    while children:
        wait = max(0.0, next_beat - time.monotonic())
        for sentinel in multiprocessing.connection.wait(list(children), wait):
            ended = _ended(children.pop(sentinel), admin)
            code = code or ended
        if time.monotonic() >= next_beat:
            next_beat = time.monotonic() + config.heartbeat_s
            _beat(heartbeat, children.values())
    return code


def _beat(heartbeat, children):
    """One heartbeat for the ledgers of every registered worker process that runs; a process
    whose ledger was repaired (it was declared lost while it was stopped or cut off) is
    killed: it must not touch the counters again."""
    beating = [c for c in children if c.status.value == REGISTERED and _running(c.process.pid)]
    if not beating:
        return
    try:
        alive = heartbeat(keys=[LEDGER_PREFIX + c.ledger_id for c in beating])
    except redis.RedisError as err:
        log.warning(f'heartbeat failed: {err}')
        return
    for child, beaten in zip(beating, alive):
        # a process settling its own ledger set LEAVING first: the ledger's end is its own
        if not beaten and child.status.value == REGISTERED:
            log.error(
                f'ledger {child.ledger_id} repaired by the operator: worker process '
                f'{child.process.pid} was declared lost; ending it'
            )
            child.fenced = True
            os.kill(child.process.pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether process `pid` runs or waits, as opposed to stopped (SIGSTOP, a debugger) or
    dead; from its state in /proc (where there is no /proc, every process counts as running)."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as stat:
            state = stat.read().rpartition(b')')[2].split()[0]
    except FileNotFoundError:
        return not os.path.isdir('/proc/self')
    except (OSError, IndexError):
        return True
    return state not in (b'T', b't', b'Z', b'X', b'x')


def _ended(child: Supervised, admin) -> int:
    """Settles the ledger of a worker process that ended without settling it itself (killed,
    e.g. OOM, or failed); returns the process' exit code, 128 + the signal that killed it,
    or EXIT_LOST where it was fenced."""
    process = child.process
    process.join()
    exitcode = process.exitcode
    if exitcode != 0:
        log.warning(f'worker process {child.ledger_id} ended with {exitcode}')
    if child.status.value != LEFT:
        try:
            settle(admin, State(child.ledger_id), f'process {child.ledger_id} ended')
        except redis.RedisError as err:
            log.error(f'could not repair the ledger of {child.ledger_id}: {err}')
            exitcode = exitcode or EXIT_ERROR
    if child.fenced:
        return EXIT_LOST
    return 128 - exitcode if exitcode < 0 else exitcode


def _child(config: Config, ledger_id: str, process: int, status, supervisor_pid: int):
    # A SIGTERM before pyABC installs its own handler ends the process at once (nothing is owed
    # yet, or the supervisor settles its ledger); everything it imports is imported already.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    _die_with_parent(supervisor_pid)
    sys.exit(run_worker(config, ledger_id, process, status))


def _die_with_parent(parent_pid: int):
    """Without its supervisor nobody beats for a worker process' ledger: the kernel kills it
    when the supervisor dies (Linux' PR_SET_PDEATHSIG; elsewhere it is declared lost)."""
    try:
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the supervisor died before the prctl
        os._exit(EXIT_ERROR)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s'
    )
    try:
        config = Config(os.environ)
    except (ValueError, KeyError) as err:
        log.error(f'bad worker configuration: {err}')
        return EXIT_CONFIG
    return supervise(config)


if __name__ == '__main__':
    sys.exit(main())
