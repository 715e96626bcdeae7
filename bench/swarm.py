#!/usr/bin/env python3
"""Thousands of simulated pyABC workers in one process, for section D of bench.py.

Each simulated worker does what one process of the worker entrypoint
(src/protocol/abc_worker.py) does on the wire, with two connections: one subscribed to
pyABC's channel, one for commands, which the heartbeat shares here (the entrypoint beats
from its supervisor, over a third connection per worker pod: the same scripts, one idle
connection more, whose cost docs/scaling.md gives). Per dynamic generation it reads the generation's settings, joins, and loops: claim
one evaluation, run the model (an asyncio sleep of BENCH_MODEL_S, then pyABC's real
`simulate_one` from the master, whose own model does not sleep), report the result; then it
leaves. With BENCH_LEDGER=1 every counter change and result goes through the entrypoint's
Lua scripts, read from the files the entrypoint loads (not copied: shipped.py), and the worker
registers a ledger and beats every ABC_HEARTBEAT_SECONDS; with 0 it sends pyABC's plain commands
(GET, INCRBY, MULTI/EXEC), as `abc-redis-worker` does.

A raw RESP client on asyncio streams: redis-py's per-command overhead would make the
simulator, not Redis, the limit.

stdin, one command a line:
  KILL n   abort n workers that hold a claim (in the middle of a model run): both
           connections reset, no clean-up; prints `KILLED id id ...`
  STATS    prints `STATS {json}`: evaluations, workers in a claim
stdout: `READY n` once every worker is subscribed.

Environment: ABC_REDIS_HOST, ABC_REDIS_PORT, ABC_REDIS_PASSWORD, SWARM_WORKERS,
SWARM_PREFIX (ledger ids `{prefix}-{i}`), BENCH_LEDGER, BENCH_MODEL_S (default 1),
ABC_HEARTBEAT_SECONDS (default 5).
"""

import asyncio
import importlib
import json
import os
import pickle
import random
import resource
import socket
import sys
import traceback

from shipped import KEYS, lua_script

HOST = os.environ.get("ABC_REDIS_HOST", "127.0.0.1")
PORT = int(os.environ.get("ABC_REDIS_PORT", "6379"))
PASSWORD = os.environ.get("ABC_REDIS_PASSWORD") or None
WORKERS = int(os.environ.get("SWARM_WORKERS", "100"))
PREFIX = os.environ.get("SWARM_PREFIX", "swarm")
LEDGER = os.environ.get("BENCH_LEDGER", "1") == "1"
MODEL_S = float(os.environ.get("BENCH_MODEL_S", "1"))
HEARTBEAT_S = float(os.environ.get("ABC_HEARTBEAT_SECONDS", "5"))
CHANNEL = b"abc_msg_pubsub"


# the entrypoint's scripts, by the names of its constants
SCRIPTS = {"REGISTER_LUA": lua_script("register.lua"), "HEARTBEAT_LUA": lua_script("heartbeat.lua"),
           "COUNTER_LUA": lua_script("counter.lua"), "RESULTS_LUA": lua_script("results.lua"),
           "REPAIR_LUA": lua_script("repair.lua")}
SHA = {}


class ReplyError(Exception):
    pass


def encode(args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """One RESP2 connection; `lock` serialises the coroutines that share it."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer
        self.lock = asyncio.Lock()

    @classmethod
    async def open(cls):
        for attempt in range(20):
            try:
                reader, writer = await asyncio.open_connection(HOST, PORT, limit=1 << 24)
                break
            except OSError:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.2 + random.random())
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = cls(reader, writer)
        if PASSWORD:
            await conn.call("AUTH", PASSWORD)
        return conn

    async def read(self):
        line = await self.r.readline()
        if not line:
            raise ConnectionError("closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise ReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else (await self.r.readexactly(n + 2))[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [await self.read() for _ in range(n)]
        raise ReplyError(f"unexpected reply {line!r}")

    async def call(self, *args):
        self.w.write(encode(args))
        return await self.read()

    async def locked(self, *args):
        async with self.lock:
            return await self.call(*args)

    async def pipeline(self, commands):
        async with self.lock:
            self.w.write(b"".join(encode(c) for c in commands))
            return [await self.read() for _ in commands]

    def abort(self):
        self.w.transport.abort()


def idfy(name, ana, t):
    return f"{name}_{ana}_{t}"


class Stats:
    evaluations = 0
    in_claim = {}  # worker index -> True while its model runs (it holds a claim)


SSA_CACHE = {}


def simulation(ssa: bytes):
    """(simulate_one, sample_factory) of a generation, unpickled once per process."""
    key = hash(ssa)
    if key not in SSA_CACHE:
        SSA_CACHE.clear()
        SSA_CACHE[key] = pickle.loads(ssa)
    return SSA_CACHE[key]


class Worker:
    def __init__(self, index: int):
        self.index = index
        self.id = f"{PREFIX}-{index}"
        self.ledger = KEYS["ledger_prefix"] + self.id
        self.reads = {}
        self.claim = None  # (n_eval key, batch size, highest index) from the result script
        self.left = False  # the result script left the generation (pyABC's loop ends next)

    async def script(self, name, keys, args):
        return await self.cmd.locked("EVALSHA", SHA[name], len(keys) + 1, self.ledger, *keys, *args)

    async def start(self):
        self.cmd = await Conn.open()
        self.sub = await Conn.open()
        if LEDGER:
            await self.cmd.call("EVALSHA", SHA["REPAIR_LUA"], 3, self.ledger, KEYS["ledger_set"],
                                KEYS["lost_workers"], self.id)
            await self.script("REGISTER_LUA", [KEYS["ledger_set"]],
                              [self.id, self.id, 0, socket.gethostname(), os.getpid()])
        await self.sub.call("SUBSCRIBE", CHANNEL)

    async def heartbeat(self):
        await asyncio.sleep(random.random() * HEARTBEAT_S)
        while True:
            await self.script("HEARTBEAT_LUA", [], [])
            await asyncio.sleep(HEARTBEAT_S)

    async def run(self):
        beats = asyncio.create_task(self.heartbeat()) if LEDGER else None
        try:
            while True:
                message = await self.sub.read()
                if message[0] == b"message" and message[2] == b"start":
                    # the entrypoint takes `start`s already received behind it as one (its
                    # coalesced_starts); only `start` is published here
                    while LEDGER and self.sub.r._buffer:
                        await self.sub.read()
                    await self.generation()
        except Exception:
            traceback.print_exc()
            raise
        finally:
            if beats:
                beats.cancel()

    # As the entrypoint's LedgerRedis: reads and a claim the result script made ahead answer
    # the loop's next GETs and its claim; a claim the loop does not take is given back.
    async def get(self, key):
        if key in self.reads:
            return self.reads[key] if self.claim or self.left else self.reads.pop(key)
        if not self.claim and not self.left:
            self.reads = {}
        return await self.cmd.locked("GET", key)

    async def counter(self, op, key, amount, ana, t):
        claim, self.claim, self.reads = self.claim, None, {}
        if claim is not None:
            if op == "claim" and claim[:2] == (key, amount):
                return claim[2]
            await self.script("COUNTER_LUA", [claim[0]], ["unclaim", 0, ana, t])
        if LEDGER:
            return await self.script("COUNTER_LUA", [key], [op, amount, ana, t])
        return await self.cmd.locked("INCRBY", key, amount)

    async def generation(self):
        ana = await self.cmd.locked("GET", "analysis_id")
        if ana is None:
            return
        ana = ana.decode()
        t = await self.cmd.locked("GET", f"generation_{ana}")
        if t is None:
            return
        t = int(t)
        if await self.cmd.locked("GET", idfy("mode", ana, t)) != b"dynamic":
            return
        ssa, _batch, all_acc, _look_ahead, _max_eval = await self.cmd.pipeline(
            [("GET", idfy(k, ana, t)) for k in
             ("sample_simulate_accept", "batch_size", "all_accepted", "is_look_ahead",
              "max_n_eval_look_ahead")])
        if ssa is None:
            return
        await self.counter("join", idfy("n_worker", ana, t), 1, ana, t)
        simulate_one, sample_factory = simulation(ssa)
        all_accepted = bool(int(all_acc))
        sample = sample_factory(is_look_ahead=False)
        g = f"{ana}_{t}"

        async def number(name):
            return int(await self.get(idfy(name, ana, t)))

        while await number("n_acc") < await number("n_req") and (
            not all_accepted or await number("n_eval") - await number("n_fail")
            < await number("n_req")
        ):
            current = await self.get("analysis_id")
            if current is None or current.decode() != ana:
                break
            particle_id = await self.counter("claim", idfy("n_eval", ana, t), 1, ana, t)
            Stats.in_claim[self.index] = True
            try:
                await asyncio.sleep(MODEL_S)
            finally:
                del Stats.in_claim[self.index]
            new_sim = simulate_one()
            sample.append(new_sim)
            commands = []
            if new_sim.accepted:
                commands.append(("INCRBY", idfy("n_acc", ana, t), 1))
                commands.append(("RPUSH", idfy("queue", ana, t),
                                 pickle.dumps((particle_id, sample))))
                sample = sample_factory(is_look_ahead=False)
            commands.append(("RPUSH", idfy("done_ixs", ana, t), particle_id))
            if LEDGER:
                flat = ["dynamic", ana, t, "1"]
                for c in commands:
                    flat += [len(c), *c]
                _replies, reads, claim, left = await self.script("RESULTS_LUA", [], flat)
                keys = ["analysis_id"] + [
                    f"{n}_{g}" for n in ("n_acc", "n_req", "is_look_ahead", "n_eval", "n_fail")]
                self.reads = dict(zip(keys, reads))
                self.claim = (idfy("n_eval", ana, t), claim[1], claim[0]) if claim else None
                self.left = bool(left)
            else:
                await self.cmd.pipeline([("MULTI",), *commands, ("EXEC",)])
            Stats.evaluations += 1
        if self.left:
            self.left, self.reads = False, {}
        else:
            await self.counter("leave", idfy("n_worker", ana, t), -1, ana, t)

    def kill(self):
        self.cmd.abort()
        self.sub.abort()


async def control(workers, tasks):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while raw := await reader.readline():
        line = raw.decode().split() or [""]
        if line[0] == "KILL":
            chosen = list(Stats.in_claim)[: int(line[1])]
            for i in chosen:
                tasks[i].cancel()
                workers[i].kill()
            print("KILLED " + " ".join(workers[i].id for i in chosen), flush=True)
        elif line[0] == "STATS":
            print("STATS " + json.dumps({"evaluations": Stats.evaluations,
                                         "in_claim": len(Stats.in_claim)}), flush=True)


async def main():
    importlib.import_module("pyabc")  # what unpickling the master's simulation needs, now

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if 2 * WORKERS + 50 > hard:
        sys.exit(f"{WORKERS} simulated workers need {2 * WORKERS + 50} open files; the limit is {hard}")
    admin = await Conn.open()
    for name, source in SCRIPTS.items():
        SHA[name] = (await admin.call("SCRIPT", "LOAD", source)).decode()
    admin.w.close()  # only the workers' connections stay: they are what is counted
    workers = [Worker(i) for i in range(WORKERS)]
    # in waves: 10,000 connects at once would only measure the accept queue
    for s in range(0, WORKERS, 200):
        await asyncio.gather(*(w.start() for w in workers[s:s + 200]))
    tasks = [asyncio.create_task(w.run()) for w in workers]
    print(f"READY {WORKERS}", flush=True)
    await control(workers, tasks)


if __name__ == "__main__":
    asyncio.run(main())
