#!/usr/bin/env python3
"""Side-by-side figures: pyABC by hand against abc-operator, in one run (`make bench`).

A. Ledger cost: sampling throughput of plain `abc-redis-worker` against the operator's
   worker entrypoint (src/protocol/abc_worker.py), same redis-server, same master.
B. Throughput of pyABC by hand (redis-server + abc-redis-worker + master) against
   `abc-operator run` of a generated manifest with the same master and model.
C. Lost-worker recovery: SIGKILL of a worker in the middle of an evaluation, at the end of
   a calibration generation, and the time until the run gets past the point where it
   would otherwise wait forever.
D. Many workers: 10,000 simulated workers (bench/swarm.py) against one redis-server
   configured like a managed Redis, one real master: connections, Redis CPU with the
   ledger's scripts against pyABC's plain commands, and the repair of 100 killed workers.
E. One machine: `abc-operator run` against pyABC's MulticoreEvalParallelSampler with as
   many processes.
F. A lost master and a lost Redis: `abc-operator run` of the Gaussian example (6
   generations); SIGKILL of the master, then in another run of redis-server, while
   generation 3 is sampled; generations sampled again and the time from the kill until
   sampling goes on. By hand the run is lost: everything is sampled again.
G. Generation records: what the `abc_operator` module's record of each stored generation
   (computing it, RPUSH) costs a master, population 4,000 with 2 and 32 parameters, against
   the generation's wall time and pyABC's own append_population in the same run.

Variants are alternated (ABBA...), every figure is the median of its runs; see
bench/README.md for what each figure means. Runs with ABC_PYTHON (a python with pyabc
0.13.0 and redis-py < 8), else the python running this script.

Environment:
  BENCH_QUICK=1        a smoke version of a few minutes (small sizes, one run per variant)
  BENCH_SECTIONS=A,B,C,D,E,F,G  which sections to run (default all)
  BENCH_SWARM_WORKERS=N  simulated workers in D (default 10000, quick 1000)
  BENCH_SWARM_KILLS=N    workers killed and repaired in D (default 100)
  BENCH_REPEATS=N      runs per variant in A and B (default 4, quick 1)
  BENCH_KILLS=N        kills in C for abc-operator run (default 5, quick 2; at most 4 per worker)
  BENCH_GIVE_UP_S=S    how long C waits for pyABC by hand (default 30, quick 10)
  BENCH_WORKERS=N      workers (default 2)
  ABC_OPERATOR_BIN     the binary (default target/release/abc-operator)
  BENCH_KEEP=1         keep the scratch folder (logs of every process) at the end
"""

import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

from common import T0, BenchError, Children, RedisServer, pct, say, table, verdict
from shipped import ENTRYPOINT, KEYS, REDIS_SERVER, lua_script

ROOT = Path(__file__).resolve().parent.parent
MASTER = ROOT / "bench" / "master.py"
PYTHON = os.environ.get("ABC_PYTHON") or sys.executable
BIN = Path(os.environ.get("ABC_OPERATOR_BIN") or ROOT / "target" / "release" / "abc-operator")
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
SECTIONS = {s.strip().upper() for s in os.environ.get("BENCH_SECTIONS", "A,B,C,D,E,F,G").split(",")}
# The runner's restart policy gives up on a worker slot after 5 quick failures in a row, and
# every SIGKILL here is one; kills alternate between slots, so 4 per slot at most.
KILLS = min(int(os.environ.get("BENCH_KILLS", "2" if QUICK else "5")), 4 * WORKERS)
GIVE_UP_S = float(os.environ.get("BENCH_GIVE_UP_S", "10" if QUICK else "30"))
MASTER_TIMEOUT_S = 300.0

# (model sleep ms, population, generations after calibration); in A one run of a variant
# (one set of workers) samples every case, so the workers' start-up is paid once per run
if QUICK:
    A_CASES, A_REPEATS = [(0, 200, 2), (10, 60, 2)], 1
    B_CASE, B_REPEATS = (10, 60, 2), 1
else:
    A_CASES, A_REPEATS = [(0, 400, 3), (10, 120, 3)], 4
    B_CASE, B_REPEATS = (10, 120, 3), 4
if "BENCH_REPEATS" in os.environ:
    A_REPEATS = B_REPEATS = int(os.environ["BENCH_REPEATS"])
C_SLEEP_MS, C_POP = 200, 16
# E: (model ms, population, generations) of `abc-operator run` against pyABC's multicore
# sampler with as many processes; target: the least acceptable ratio
E_CASES = [(0, 200, 2), (10, 100, 2)] if QUICK else [(0, 400, 3), (10, 400, 3)]
E_REPEATS = int(os.environ.get("BENCH_REPEATS", "1" if QUICK else "2"))
E_TARGETS = {0: 0.6, 10: 0.95}
SWARM = ROOT / "bench" / "swarm.py"
D_WORKERS = int(os.environ.get("BENCH_SWARM_WORKERS", "1000" if QUICK else "10000"))
D_PROCESSES = 2 if QUICK else 4
D_VARIANTS = os.environ.get("BENCH_SWARM_VARIANTS", "ledger,plain").split(",")
D_POP, D_GENS = (200, 1) if QUICK else (4000, 2)
D_KILLS = min(int(os.environ.get("BENCH_SWARM_KILLS", "100")), D_WORKERS // 10)
D_MODEL_S, D_IDLE_S, D_REPAIR_TARGET_S = 1.0, 10.0 if not QUICK else 5.0, 2.0
A_TARGETS = {0: 0.15, 10: 0.02}  # highest acceptable cost per model time
B_TARGET = 0.98
C_TARGET_S = 2.0
F_GENERATIONS, F_KILL_AT, F_MODEL_S = 6, 3, 0.005
F_TARGET_REDONE = 1
# G: parameters of each case; population and generations after calibration (quick: a smoke
# run at a quarter of the population); the record's share of a generation's wall time
G_PARAMETERS = (2, 32)
G_POP, G_GENS = (1000, 1) if QUICK else (4000, 2)
G_TARGET = 0.01

# ---------------------------------------------------------------------------------------
# The variants.


def master_env(sleep_ms, pop, gens, **extra):
    """The master's BENCH_* settings for one case."""
    env = {
        "BENCH_SLEEP_MS": str(sleep_ms),
        "BENCH_POP": str(pop),
        "BENCH_GENERATIONS": str(gens),
        "BENCH_WORKERS": str(WORKERS),
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


class ServedMaster:
    """One master process (BENCH_SERVE) for many runs on one Redis: pyabc is imported once."""

    def __init__(self, children: Children, server: RedisServer, tag: str):
        self.children = children
        self.dir = Path(tempfile.mkdtemp(prefix=f"{tag}-master-", dir=children.scratch))
        env = server.env()
        env.update({"ABC_RESULTS_DIR": str(self.dir), "BENCH_SERVE": "1"})
        self.proc = children.spawn([PYTHON, MASTER], self.dir / "master.log", env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._expect("BENCH_READY", 120)
        self.n = 0

    def _read(self):
        with open(self.dir / "master.stdout.log", "w") as keep:
            for line in self.proc.stdout:
                line = line.decode(errors="replace")
                keep.write(line)
                keep.flush()
                self.lines.put(line.strip())
        self.lines.put(None)

    def _expect(self, prefix, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"the master did not answer within {timeout:.0f}s; see {self.dir}")
            if line is None:
                raise BenchError(f"the master exited; see {self.dir / 'master.log'}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def run(self, settings: dict, timeout=MASTER_TIMEOUT_S):
        self.n += 1
        settings = dict(settings, BENCH_RESULT=f"result-{self.n}.json")
        self.proc.stdin.write((json.dumps(settings) + "\n").encode())
        self.proc.stdin.flush()
        return json.loads(Path(self._expect("BENCH_DONE", timeout)).read_text())

    def stop(self):
        self.children.stop(self.proc)


class ByHand:
    """pyABC by hand: workers (plain or the entrypoint) and the master, on a given Redis."""

    def __init__(self, children: Children, server: RedisServer, kind: str, tag: str,
                 workers=WORKERS):
        self.children, self.server, self.kind = children, server, kind
        self.dir = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=children.scratch))
        self.workers = []
        self.master = None
        for i in range(workers):
            log = self.dir / f"worker-{i}.log"
            if kind == "plain":
                # pyABC's own CLI; it takes the password only on its command line.
                worker = Path(PYTHON).parent / "abc-redis-worker"
                argv = [worker] if worker.exists() else [shutil.which("abc-redis-worker")]
                argv += ["--host", server.host, "--port", server.port,
                         "--password", server.password, "--runtime", "2h"]
                proc = children.spawn(argv, log)
            else:
                env = server.env()
                env.update({
                    "ABC_WORKER_ID": f"{self.dir.name}-{i}",
                    "ABC_WORKER_RUNTIME": "2h",
                    "ABC_WORKER_PROCESSES": "1",
                    "ABC_HEARTBEAT_SECONDS": "15",  # what abc-operator run uses by default
                })
                proc = children.spawn([PYTHON, ENTRYPOINT], log, env=env)
            self.workers.append(proc)

    def start_master(self, menv):
        env = self.server.env()
        env["ABC_RESULTS_DIR"] = str(self.dir / "results")
        env.update(menv)
        self.master = self.children.spawn([PYTHON, MASTER], self.dir / "master.log", env=env)
        return self.master

    def finish(self, timeout=MASTER_TIMEOUT_S):
        try:
            code = self.master.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"master still running after {timeout:.0f}s; see {self.dir}")
        if code != 0:
            raise BenchError(f"master failed ({code}); see {self.dir / 'master.log'}")
        return json.loads((self.dir / "results" / "bench-result.json").read_text())

    def stop(self):
        procs = [p for p in [self.master] + self.workers if p is not None]
        for proc in procs:
            self.children.signal(proc, signal.SIGTERM)
        for proc in procs:
            self.children.stop(proc)


class OperatorRun:
    """`abc-operator run` of a generated manifest, read through its --json events."""

    def __init__(self, children: Children, menv: dict, tag: str):
        self.children = children
        self.dir = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=children.scratch))
        shutil.copy(MASTER, self.dir / "master.py")
        manifest = {
            "apiVersion": "abc-operator.dev/v1alpha1",
            "kind": "AbcRun",
            "metadata": {"name": "bench"},
            "spec": {
                "image": "abc-bench:local",
                "workers": {"replicas": WORKERS, "runtime": "2h",
                            "terminationGracePeriodSeconds": 10},
                "master": {
                    "command": ["python", "master.py"],
                    "env": [{"name": k, "value": v} for k, v in menv.items()],
                },
            },
        }
        path = self.dir / "abcrun.yaml"
        path.write_text(json.dumps(manifest, indent=2) + "\n")  # JSON is YAML
        self.events = queue.Queue()
        self.proc = children.spawn(
            [BIN, "run", path, "--workers", WORKERS, "--python", PYTHON, "--json",
             "--run-dir", self.dir / "run"],
            self.dir / "runner.stderr.log",
            stdout=subprocess.PIPE,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        with open(self.dir / "runner.events.jsonl", "w") as keep:
            for line in self.proc.stdout:
                now = time.monotonic()
                keep.write(line.decode(errors="replace"))
                keep.flush()
                try:
                    self.events.put((now, json.loads(line)))
                except ValueError:
                    pass
        self.events.put((time.monotonic(), {"event": "eof"}))

    def drain(self):
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def finish(self, timeout=MASTER_TIMEOUT_S):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"abc-operator run still running after {timeout:.0f}s; see {self.dir}")
        if code != 0:
            raise BenchError(
                f"abc-operator run failed ({code}); see {self.dir / 'runner.stderr.log'} "
                f"and {self.dir / 'run' / 'logs'}"
            )
        return json.loads((self.dir / "run" / "results" / "bench-result.json").read_text())

    def stop(self):
        self.children.stop(self.proc, grace=20)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    """user + system CPU time of these processes so far (from /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def wait_subscribed(client, n, timeout=300):
    deadline = time.monotonic() + timeout
    while dict(client.pubsub_numsub("abc_msg_pubsub")).get(b"abc_msg_pubsub", 0) < n:
        if time.monotonic() > deadline:
            raise BenchError(f"workers did not subscribe within {timeout:.0f}s")
        time.sleep(0.05)


def run_by_hand(children, kind, case, tag):
    """One run by hand: a fresh redis-server, workers of `kind` and a fresh master."""
    server = RedisServer(children, tag)
    run = ByHand(children, server, kind, tag)
    try:
        run.start_master(master_env(*case))
        return [(case, run.finish())]
    finally:
        run.stop()
        server.stop()


def run_ledger_cost(children, server, master, kind, tag):
    """One run of section A: workers of `kind` on the shared server, every A case in turn
    through the shared master. Each result also has the CPU time the workers and
    redis-server spent per evaluation (measured while the master sampled that case)."""
    server.client().flushall()
    run = ByHand(children, server, kind, tag)
    out = []
    try:
        # A small analysis first, not counted: the first one in a worker's life pays for
        # lazy imports and first calls, which would otherwise land on the first case.
        wait_subscribed(server.client(), WORKERS)
        master.run(master_env(0, 20, 1))
        for case in A_CASES:
            # workers idle and subscribed: from here on their CPU time is sampling's
            wait_subscribed(server.client(), WORKERS)
            pids = [p.pid for p in run.workers]
            before = cpu_seconds(pids), cpu_seconds([server.proc.pid])
            res = master.run(master_env(*case))
            after = cpu_seconds(pids), cpu_seconds([server.proc.pid])
            per_eval = [(a - b) * 1000 / res["evaluations"] for a, b in zip(after, before)]
            res["cpu_workers_ms_per_eval"], res["cpu_redis_ms_per_eval"] = per_eval
            res["cpu_ms_per_eval"] = sum(per_eval)
            out.append((case, res))
        return out
    finally:
        run.stop()


def run_multicore(children, case, tag):
    """pyABC's MulticoreEvalParallelSampler with WORKERS processes: no Redis at all. The
    result has the workers' time (worker_time)."""
    out = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=children.scratch))
    (out / "evaluations").mkdir()
    env = master_env(*case, BENCH_SAMPLER="multicore", BENCH_PROCESSES=WORKERS,
                     BENCH_WORKERS=0, BENCH_EVAL_LOG_DIR=out / "evaluations")
    env["ABC_RESULTS_DIR"] = str(out)
    proc = children.spawn([PYTHON, MASTER], out / "master.log", env=env)
    try:
        code = proc.wait(MASTER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BenchError(f"multicore master still running after {MASTER_TIMEOUT_S:.0f}s; see {out}")
    finally:
        children.stop(proc)
    if code != 0:
        raise BenchError(f"multicore master failed ({code}); see {out / 'master.log'}")
    result = json.loads((out / "bench-result.json").read_text())
    result["worker_time"] = worker_time(result, out / "evaluations")
    return [(case, result)]


def run_operator(children, case, tag, eval_log=False):
    """`abc-operator run` of the bench master; with `eval_log` the result has the workers'
    time (worker_time)."""
    extra = {}
    if eval_log:
        log_dir = extra["BENCH_EVAL_LOG_DIR"] = Path(
            tempfile.mkdtemp(prefix=f"{tag}-evaluations-", dir=children.scratch))
    run = OperatorRun(children, master_env(*case, **extra), tag)
    try:
        result = run.finish()
    finally:
        run.stop()
    if eval_log:
        result["worker_time"] = worker_time(result, log_dir)
    return [(case, result)]


def worker_time(result, log_dir):
    """Where the sampling time of WORKERS worker processes went, from the evaluations the
    model logged (master.py's BENCH_EVAL_LOG_DIR), as shares: in the model; between one
    evaluation's end and the same process' next start (pyABC's work per evaluation outside
    the model, and the sampler's: proposing, accepting, pickling, Redis or a queue); the
    rest, outside evaluations at a generation's start and end. Also the median gap."""
    spans = []
    for path in Path(log_dir).iterdir():
        lines = [line.split() for line in path.read_text().splitlines() if line]
        spans.append(sorted((float(a), float(b)) for a, b in lines))
    total = model = between = 0.0
    gaps = []
    for g in (g for a in result["analyses"] for g in a["generations"]):
        start, end = g["started_at"], g["ended_at"]
        total += WORKERS * (end - start)
        for process in spans:
            inside = [(a, min(b, end)) for a, b in process if start <= a <= end]
            model += sum(b - a for a, b in inside)
            g_gaps = [b[0] - a[1] for a, b in zip(inside, inside[1:])]
            between += sum(g_gaps)
            gaps += g_gaps
    return {"model": model / total, "between": between / total,
            "edges": 1 - (model + between) / total,
            "gap_ms": 1000 * statistics.median(gaps) if gaps else 0.0}


def alternate(variants, repeats, label):
    """Runs each variant `repeats` times, alternating ABBA...; a run returns [(case,
    result)]. Returns {case: {variant: [results]}}."""
    results = {}
    for r in range(repeats):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for name, fn in order:
            for case, res in fn(f"{label}-{name}-{r}"):
                results.setdefault(case, {n: [] for n, _ in variants})[name].append(res)
                cpu = res.get("cpu_ms_per_eval")
                say(f"{label} {case[0]} ms model, {name} run {r + 1}/{repeats}: "
                    f"{res['evaluations']} evaluations, {res['sampling_s']:.2f}s sampling, "
                    f"{res['throughput']:.1f}/s"
                    + (f", {cpu:.2f} ms CPU/evaluation (workers {res['cpu_workers_ms_per_eval']:.2f}"
                       f" + redis {res['cpu_redis_ms_per_eval']:.2f})" if cpu is not None else ""))
    return results


def median_tp(results):
    return statistics.median(r["throughput"] for r in results)


def runs_text(results):
    return " ".join(f"{r['throughput']:.0f}" for r in results)


def ratio_text(base, other):
    """Ratio of the medians, then (with several runs) the ratio within each alternated pair."""
    ratio = median_tp(other) / median_tp(base)
    text = f"{ratio:.3f}"
    if len(base) > 1:
        pairs = " ".join(f"{o['throughput'] / b['throughput']:.2f}" for b, o in zip(base, other))
        text += f" (pairs {pairs})"
    return ratio, text


def spread_text(*variants):
    """The largest (max - min) / median among the variants' runs: how noisy they were."""
    spreads = []
    for runs in variants:
        tps = [r["throughput"] for r in runs]
        if len(tps) > 1:
            spreads.append((max(tps) - min(tps)) / statistics.median(tps))
    return f"{max(spreads) * 100:.0f}%" if spreads else "-"


# ---------------------------------------------------------------------------------------
# C: lost-worker recovery.


def recovery_run(children, kind, kills, give_up_s, tag):
    """One run of `kills` analyses (each with a calibration); in each calibration, once
    every particle is claimed, SIGKILLs a worker in the middle of an evaluation and times
    how long until n_acc reaches n_req (or the generation/analysis moves on).

    kind: 'hand' (redis-server + abc-redis-worker + master) or 'operator'."""
    trace = Path(tempfile.mkdtemp(prefix=f"{tag}-trace-", dir=children.scratch))
    conn_file = children.scratch / f"{tag}-conn.json"
    menv = master_env(C_SLEEP_MS, C_POP, 1, BENCH_ANALYSES=kills, BENCH_TRACE_DIR=trace,
                      BENCH_CONN_FILE=conn_file)
    server = run = None
    worker_slot = {}  # pid -> slot
    alive = set()
    repaired_at = []
    samples = []
    kills_per_slot = {}

    def pump():
        if kind != "operator":
            return
        for at, ev in run.drain():
            e = ev.get("event")
            if e == "worker_started":
                worker_slot[ev["pid"]] = ev["slot"]
                alive.add(ev["pid"])
            elif e == "worker_exited":
                alive.discard(ev.get("pid"))
            elif e == "repaired":
                repaired_at.append(at)

    try:
        if kind == "hand":
            server = RedisServer(children, tag)
            run = ByHand(children, server, "plain", tag)
            run.start_master(menv)
            client = server.client()
            for i, w in enumerate(run.workers):
                worker_slot[w.pid] = i + 1
                alive.add(w.pid)
            runner = run.master
        else:
            run = OperatorRun(children, menv, tag)
            runner = run.proc
            deadline = time.monotonic() + 120
            while not conn_file.exists():
                if runner.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"abc-operator run did not start its master; see {run.dir}")
                time.sleep(0.1)
            conn = json.loads(conn_file.read_text())
            client = redis.StrictRedis(host=conn["host"], port=conn["port"],
                                       password=conn["password"], socket_timeout=30)
        seen = set()
        while len(seen) < kills:
            pump()
            if runner.poll() is not None:
                break
            ana = client.get("analysis_id")
            if ana is None or ana in seen:
                time.sleep(0.005)
                continue
            a = ana.decode()
            t = client.get(f"generation_{a}")
            if t is None:
                time.sleep(0.005)
                continue
            t = t.decode()
            k = f"{a}_{t}"
            n_eval, n_req, all_acc = client.mget(f"n_eval_{k}", f"n_req_{k}", f"all_accepted_{k}")
            if all_acc != b"1":  # past the calibration: this analysis is missed
                say(f"C {kind}: missed the calibration of analysis {len(seen) + 1}")
                seen.add(ana)
                continue
            if n_eval is None or n_req is None or int(n_eval) < int(n_req):
                time.sleep(0.005)
                continue
            # Every particle is claimed: live workers leave the generation after their
            # current evaluation. Kill one that is in the middle of one (started < 150 ms
            # ago, of 200 ms): what it claimed is then owed to the master forever.
            victim = None
            wait_until = time.monotonic() + 0.1
            while victim is None and time.monotonic() < wait_until:
                pump()
                now = time.time()
                cands = []
                for f in trace.iterdir():
                    try:
                        pid, started = int(f.name), float(f.read_text() or "0")
                    except (ValueError, OSError):
                        continue
                    if pid in alive and now - started < 0.15:
                        slot = worker_slot.get(pid)
                        cands.append((kills_per_slot.get(slot, 0), -started, pid, slot))
                if cands:
                    _, _, victim, slot = min(cands)
                else:
                    time.sleep(0.005)
            seen.add(ana)
            if victim is None:
                say(f"C {kind}: no worker in the middle of an evaluation; analysis skipped")
                continue
            n_acc_before = int(client.get(f"n_acc_{k}") or 0)
            start = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            kills_per_slot[slot] = kills_per_slot.get(slot, 0) + 1
            alive.discard(victim)
            repaired_at.clear()
            progressed = None
            while time.monotonic() - start < give_up_s:
                cur, gen, n_acc = client.get("analysis_id"), client.get(f"generation_{a}"), \
                    client.get(f"n_acc_{k}")
                if cur != ana or gen is None or gen.decode() != t or int(n_acc or 0) >= int(n_req):
                    progressed = time.monotonic() - start
                    break
                time.sleep(0.005)
            pump()
            repair = repaired_at[0] - start if repaired_at else None
            samples.append({"progress_s": progressed, "repair_s": repair,
                            "n_acc_at_kill": n_acc_before, "n_req": int(n_req)})
            say(f"C {kind}: kill {len(samples)}/{kills} (worker slot {slot}, n_acc "
                f"{n_acc_before}/{int(n_req)}): "
                + (f"progress after {progressed:.2f}s" if progressed is not None
                   else f"no progress after {give_up_s:.0f}s")
                + (f", repaired after {repair:.2f}s" if repair is not None else ""))
            if progressed is None:
                break  # the run is stuck for good: nothing more to measure
        if kind == "operator" and len(samples) == kills:
            run.finish()
    finally:
        run and run.stop()
        server and server.stop()
    return samples


def resume_run(children, victim, tag):
    """`abc-operator run` of the Gaussian example with F_GENERATIONS generations; SIGKILLs
    the master or the redis-server (`victim`) while generation F_KILL_AT is sampled, and
    measures what the resume costs: generations sampled again (the one in progress at the
    kill, unless it was stored just before) and the time from the kill until the resumed
    master's first accepted particle."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=children.scratch))
    env = {"GAUSSIAN_GENERATIONS": str(F_GENERATIONS), "GAUSSIAN_MINIMUM_EPSILON": "0",
           "GAUSSIAN_MODEL_SECONDS": str(F_MODEL_S)}
    proc = children.spawn(
        [BIN, "run", ROOT / "examples" / "gaussian" / "abcrun.yaml", "--workers", WORKERS,
         "--python", PYTHON, "--json", "--run-dir", run_dir / "run"],
        run_dir / "runner.stderr.log", env=env, stdout=subprocess.PIPE,
    )
    events = queue.Queue()

    def read():
        for line in proc.stdout:
            try:
                events.put((time.monotonic(), json.loads(line)))
            except ValueError:
                pass
        events.put((time.monotonic(), {"event": "eof"}))

    threading.Thread(target=read, daemon=True).start()
    pids = {}
    killed_at = killed_in = resumed_from = sampling_at = None
    try:
        while True:
            try:
                at, ev = events.get(timeout=MASTER_TIMEOUT_S)
            except queue.Empty:
                raise BenchError(f"F {victim}: no event for {MASTER_TIMEOUT_S:.0f} s; see {run_dir}")
            e = ev.get("event")
            if e == "eof":
                break
            if e == "started":
                pids["redis"] = ev["redis"]["pid"]
            elif e == "master_started":
                pids.setdefault("master", ev["pid"])
            elif e == "master_resumed":
                resumed_from = ev["from_generation"]
            elif (e == "progress" and killed_at is None and ev.get("generation") == F_KILL_AT
                  and ev.get("accepted", 0) > 0):
                killed_at, killed_in = time.monotonic(), F_KILL_AT
                os.kill(pids[victim], signal.SIGKILL)
                say(f"F {victim}: SIGKILL in generation {F_KILL_AT} "
                    f"({ev['accepted']}/{ev['required']} accepted)")
            elif (e == "progress" and resumed_from is not None and sampling_at is None
                  and ev.get("generation") is not None and ev["generation"] >= resumed_from
                  and ev.get("accepted", 0) > 0):
                sampling_at = at
        code = proc.wait(MASTER_TIMEOUT_S)
    finally:
        children.stop(proc)
    if code != 0 or killed_at is None or resumed_from is None:
        raise BenchError(f"F {victim}: the run failed ({code}), no kill or no resume; see {run_dir}")
    return {"redone": max(0, killed_in - resumed_from + 1),
            "to_sampling_s": sampling_at - killed_at if sampling_at else None,
            "hand_redone": killed_in + 1}


# ---------------------------------------------------------------------------------------
# D: thousands of simulated workers (bench/swarm.py) on one redis-server configured like a
# managed Redis.


def managed_redis_config():
    """The managed Redis' client settings, computed like src/protocol/server_config.rs
    does from its constants (which constants.json holds, so the two cannot drift apart)."""
    max_clients = (REDIS_SERVER["max_worker_processes"]
                   * REDIS_SERVER["worker_connections_per_process"]
                   + REDIS_SERVER["reserved_clients"])
    return (f"maxclients {max_clients}\ntcp-backlog {REDIS_SERVER['tcp_backlog']}\ntimeout 0\n",
            max_clients, REDIS_SERVER["worker_connections_per_process"])


def redis_cpu_s(client):
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


class Swarm:
    """SWARM_PROCESSES processes of bench/swarm.py, `workers` simulated workers in all."""

    def __init__(self, children, server, workers, ledger, tag):
        self.dir = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=children.scratch))
        self.children = children
        self.procs, self.lines = [], queue.Queue()
        per = [workers // D_PROCESSES + (1 if i < workers % D_PROCESSES else 0)
               for i in range(D_PROCESSES)]
        for i, n in enumerate(per):
            env = server.env()
            env.update({"SWARM_WORKERS": str(n), "SWARM_PREFIX": f"{tag}-{i}",
                        "BENCH_LEDGER": "1" if ledger else "0",
                        "BENCH_MODEL_S": str(D_MODEL_S), "ABC_HEARTBEAT_SECONDS": "5"})
            proc = children.spawn([PYTHON, SWARM], self.dir / f"swarm-{i}.log", env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()
            self.procs.append(proc)
        for _ in self.procs:
            self.expect("READY", 600)

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.put(line.decode(errors="replace").strip())
        self.lines.put(None)

    def expect(self, prefix, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"the simulated workers did not answer; see {self.dir}")
            if line is None:
                raise BenchError(f"a simulator exited; see {self.dir}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def tell(self, command):
        for proc in self.procs:
            proc.stdin.write((command + "\n").encode())
            proc.stdin.flush()

    def in_claim(self):
        self.tell("STATS")
        return sum(json.loads(self.expect("STATS", 30))["in_claim"] for _ in self.procs)

    def kill(self, n):
        """Aborts n workers holding a claim (fewer if fewer hold one); returns their ledger
        ids."""
        ids = []
        for attempt in range(5):  # a process may have fewer in a claim than its share
            left = n - len(ids)
            if left == 0:
                break
            # the remainder goes to a different process each attempt: one with none in a
            # claim must not be asked for it every time
            per = [left // len(self.procs) + (1 if (i + attempt) % len(self.procs)
                                              < left % len(self.procs) else 0)
                   for i in range(len(self.procs))]
            for proc, k in zip(self.procs, per):
                proc.stdin.write(f"KILL {k}\n".encode())
                proc.stdin.flush()
            for _ in self.procs:
                ids += self.expect("KILLED", 30).split()
        return ids

    def stop(self):
        for proc in self.procs:
            self.children.stop(proc)


def repair_script():
    """The repair script the entrypoint ships: what the operator's
    `protocol::repair_lost_worker` runs (src/protocol/repair.rs includes the same file)."""
    return lua_script("repair.lua")


def swarm_run(children, server, workers, ledger, tag):
    """One analysis of the real master with `workers` simulated workers. With the ledger,
    also kills D_KILLS workers in the middle of their model runs during the first
    generation after the calibration, and repairs them."""
    client = server.client()
    client.flushall()
    base_clients = client.info("clients")["connected_clients"]
    swarm = Swarm(children, server, workers, ledger, tag)
    out = {}
    try:
        wait_subscribed(client, workers, 600)
        clients = client.info("clients")["connected_clients"] - base_clients
        out["connections_per_worker"] = clients / workers
        cpu0, t0 = redis_cpu_s(client), time.monotonic()
        time.sleep(D_IDLE_S)
        out["idle_redis_cpu"] = (redis_cpu_s(client) - cpu0) / (time.monotonic() - t0)
        memory = client.info("memory")
        out["used_memory_mb"] = memory["used_memory"] / 2**20
        out["rss_mb"] = memory["used_memory_rss"] / 2**20
        run = ByHand(children, server, "master only", tag, workers=0)
        cpu0, t0 = redis_cpu_s(client), time.monotonic()
        run.start_master(master_env(0, D_POP, D_GENS, BENCH_WORKERS=workers, BENCH_WAIT_S=600))
        if ledger:
            out["repairs"] = kill_and_repair(client, swarm)
        out["result"] = run.finish(MASTER_TIMEOUT_S * 2)
        # all of it: heartbeats and Redis' own cron too (the idle figure shows those alone;
        # subtracting them would assume the simulator beats as often while it simulates)
        out["analysis_s"] = time.monotonic() - t0
        out["redis_cpu_s"] = redis_cpu_s(client) - cpu0
        out["redis_cpu_ms_per_eval"] = out["redis_cpu_s"] * 1000 / out["result"]["evaluations"]
        out["peak_memory_mb"] = client.info("memory")["used_memory_peak"] / 2**20
        return out
    finally:
        swarm.stop()


def kill_and_repair(client, swarm):
    """Waits for the first generation after the calibration with D_KILLS workers in a
    claim, kills that many, and repairs each with the repair script (one pipeline, as fast
    as one connection allows). Returns the kill-to-repaired time and what was corrected."""
    deadline = time.monotonic() + MASTER_TIMEOUT_S
    while True:
        t = client.get("generation_" + (client.get("analysis_id") or b"-").decode())
        if t is not None and int(t) >= 0 and swarm.in_claim() >= D_KILLS:
            break
        if time.monotonic() > deadline:
            raise BenchError("no generation with enough workers in a claim")
        time.sleep(0.05)
    sha = client.script_load(repair_script())
    ids = swarm.kill(D_KILLS)
    # from the moment the kills are confirmed: what the operator does once it knows (its
    # pod watch tells it at once), not how fast the busy simulator answers
    killed_at = time.monotonic()
    pipe = client.pipeline(transaction=False)
    for ledger_id in ids:
        pipe.evalsha(sha, 3, KEYS["ledger_prefix"] + ledger_id, KEYS["ledger_set"],
                     KEYS["lost_workers"], ledger_id)
    replies = pipe.execute()
    repaired_s = time.monotonic() - killed_at
    corrected = 0
    for reply in replies:
        fields = dict(zip(reply[::2], reply[1::2])) if reply else {}
        corrected += 1 if fields.get(b"last_index", 0) else 0
    again = client.pipeline(transaction=False)
    for ledger_id in ids:
        again.evalsha(sha, 3, KEYS["ledger_prefix"] + ledger_id, KEYS["ledger_set"],
                      KEYS["lost_workers"], ledger_id)
    return {"killed": len(ids), "corrected": corrected, "all_repaired_s": repaired_s,
            "second_repairs": sum(1 for r in again.execute() if r)}


def section_d(children, rows, notes):
    extra, max_clients, per_worker = managed_redis_config()
    server = RedisServer(children, "D", extra)
    try:
        effective = server.client().info("clients")["maxclients"]
        workers = D_WORKERS
        if effective < max_clients:
            notes.append(f"D: redis-server lowered maxclients from {max_clients} to {effective} "
                         "(its open-files limit); see docs/scaling.md, Many workers on one Redis")
            workers = min(workers, (effective - 100) // per_worker)
        say(f"D: {workers} simulated workers in {D_PROCESSES} processes, {D_MODEL_S:.0f} s "
            f"model, pop {D_POP}, {D_GENS} gen; ledger then plain pyABC commands")
        res = {}
        for name, ledger in (("ledger", True), ("plain", False)):
            if name not in D_VARIANTS:
                continue
            res[name] = swarm_run(children, server, workers, ledger, f"D-{name}")
            r = res[name]
            say(f"D {name}: {json.dumps({k: v for k, v in r.items() if k != 'result'})}")
            say(f"D {name}: {r['result']['evaluations']} evaluations, "
                f"{r['result']['throughput']:.0f}/s, redis {r['redis_cpu_ms_per_eval']:.3f} ms "
                f"CPU/evaluation, idle {r['idle_redis_cpu'] * 100:.1f}% CPU, "
                f"{r['connections_per_worker']:.2f} connections/worker, "
                f"{r['rss_mb']:.0f} MiB RSS")
        if len(res) < 2:
            return
        led, plain = res["ledger"], res["plain"]
        rep = led["repairs"]
        rows.append([
            "D. many workers", f"{workers} simulated workers: connections per worker",
            f"{plain['connections_per_worker']:.2f}", f"{led['connections_per_worker']:.2f}",
            "", "", f"<= {per_worker}", verdict(led["connections_per_worker"] <= per_worker),
        ])
        rows.append([
            "", "  redis CPU ms/evaluation (whole analysis: heartbeats, cron included)",
            f"{plain['redis_cpu_ms_per_eval']:.3f} plain pyABC commands",
            f"{led['redis_cpu_ms_per_eval']:.3f} ledger scripts",
            f"{led['redis_cpu_ms_per_eval'] / plain['redis_cpu_ms_per_eval']:.2f}x",
            "", "", "",
        ])
        rows.append([
            "", "  redis CPU while idle (all connected), memory, RSS",
            f"{plain['idle_redis_cpu'] * 100:.1f}%, {plain['used_memory_mb']:.0f} MiB, "
            f"{plain['rss_mb']:.0f} MiB",
            f"{led['idle_redis_cpu'] * 100:.1f}%, {led['used_memory_mb']:.0f} MiB, "
            f"{led['rss_mb']:.0f} MiB (heartbeats every 5 s)",
            "", "", "", "",
        ])
        rows.append([
            "", f"  sampling throughput, sim/s ({D_MODEL_S:.0f} s model)",
            f"{plain['result']['throughput']:.0f}", f"{led['result']['throughput']:.0f}",
            "", "", "", "",
        ])
        ok = (rep["killed"] == D_KILLS and rep["corrected"] == rep["killed"]
              and rep["second_repairs"] == 0 and rep["all_repaired_s"] <= D_REPAIR_TARGET_S)
        rows.append([
            "", f"  {D_KILLS} workers killed mid-evaluation -> all repaired", "-",
            f"{rep['all_repaired_s'] * 1000:.0f} ms for {rep['killed']} "
            f"({rep['corrected']} corrected, {rep['second_repairs']} repaired twice); "
            "the run finished",
            "", "", f"<= {D_REPAIR_TARGET_S:.0f} s", verdict(ok),
        ])
    finally:
        server.stop()


def section_g(children, rows):
    """G: a master through `abc_operator.run` (bench/master.py, BENCH_RECORDS) on one
    redis-server with 2 entrypoint workers, 0 ms model, G_POP particles, once per parameter
    count; per stored generation the module's record against the generation."""
    server = RedisServer(children, "G")
    master = ServedMaster(children, server, "G")
    workers = ByHand(children, server, "ledger", "G")
    client = server.client()
    by_k = {k: [] for k in G_PARAMETERS}
    rewrites = {k: [] for k in G_PARAMETERS}  # seconds per stored generation
    try:
        # one run each: the 32-parameter one takes minutes (pyABC's own weights and storage
        # in 32 dimensions), and the figures are per generation of the same run
        for k in G_PARAMETERS:
            say(f"G: pop {G_POP}, {k} parameters, {G_GENS} generation(s)")
            res = master.run(master_env(0, G_POP, G_GENS, BENCH_PARAMETERS=k, BENCH_RECORDS=1),
                             timeout=2 * MASTER_TIMEOUT_S)
            gens = [g for a in res["analyses"] for g in a["records"]]
            pushed = client.llen(KEYS["generations"])
            if len(gens) != G_GENS or pushed != G_GENS:
                raise BenchError(f"G: {len(gens)} generations timed, {pushed} records in "
                                 f"Redis, {G_GENS} expected; see {master.dir}")
            by_k[k] += gens
            rewrites[k] += [a["records_from_database_s"] / G_GENS for a in res["analyses"]]
            for g in gens:
                say(f"G: t={g['t']}: generation {g['pyabc_wall_time_s']:.2f} s sampling + "
                    f"{g['append_s']:.2f} s append_population, record {1000 * g['record_s']:.1f}"
                    f" ms ({1000 * g['record_cpu_s']:.1f} ms CPU)")
    finally:
        workers.stop()
        master.stop()
        server.stop()
    for k in G_PARAMETERS:
        gens = by_k[k]
        # the generation as the master spends it: pyABC's sampling wall time (what it logs
        # and stores), its append_population, then the record
        total = [g["pyabc_wall_time_s"] + g["append_s"] + g["record_s"] for g in gens]
        shares = [g["record_s"] / t for g, t in zip(gens, total)]
        # the record is the master's CPU (and one round trip): by CPU time, a share that
        # other tenants of the machine cannot inflate; the verdict is on that
        cpu_shares = [g["record_cpu_s"] / t for g, t in zip(gens, total)]
        med = statistics.median
        rows.append([
            "G. generation records" if k == G_PARAMETERS[0] else "",
            f"pop {G_POP}, {k} parameters, 0 ms model: per generation (n={len(gens)})",
            f"{med(total):.2f} s generation, of which {med(g['append_s'] for g in gens):.2f} s "
            f"append_population ({1000 * med(g['append_cpu_s'] for g in gens):.0f} ms CPU)",
            f"record + RPUSH {1000 * med(g['record_s'] for g in gens):.1f} ms "
            f"({1000 * med(g['record_cpu_s'] for g in gens):.1f} ms CPU)",
            f"{100 * med(shares):.2f}% of the generation (max {100 * max(shares):.2f}%; by CPU "
            f"{100 * med(cpu_shares):.2f}%, max {100 * max(cpu_shares):.2f}%), "
            f"{100 * med(g['record_s'] / g['append_s'] for g in gens):.1f}% of append_population",
            "", f"< {G_TARGET * 100:.0f}%", verdict(max(cpu_shares) < G_TARGET),
        ])
        rows.append([
            "", "  a master's start: the records again, from the database", "-",
            f"{1000 * statistics.median(rewrites[k]):.0f} ms per stored generation",
            "", "", "", "",
        ])


def main():
    scratch = Path(tempfile.mkdtemp(prefix="abc-bench-"))
    children = Children(scratch)
    rows = [["", "case", "pyABC by hand", "abc-operator", "ratio", "spread", "target", ""]]
    notes = []
    failed = False
    load_before = os.getloadavg()

    def stop_on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop_on_signal)
    try:
        say(f"scratch folder (logs): {scratch}")
        if "A" in SECTIONS:
            server = RedisServer(children, "A")
            master = ServedMaster(children, server, "A")
            try:
                say(f"A: {len(A_CASES)} models, {A_REPEATS} run(s) per variant")
                by_case = alternate(
                    [("plain", lambda tag: run_ledger_cost(children, server, master, "plain", tag)),
                     ("ledger", lambda tag: run_ledger_cost(children, server, master, "ledger", tag))],
                    A_REPEATS, "A")
                for case in A_CASES:
                    sleep_ms, pop, gens = case
                    res = by_case[case]
                    plain, ledger = median_tp(res["plain"]), median_tp(res["ledger"])
                    ratio, rtext = ratio_text(res["plain"], res["ledger"])
                    cost = 1 - ratio
                    # wall time a worker spends per evaluation, entrypoint minus plain
                    extra_ms = WORKERS * (1 / ledger - 1 / plain) * 1000
                    target = A_TARGETS.get(sleep_ms, 0.02)
                    rows.append([
                        "A. ledger cost" if case == A_CASES[0] else "",
                        f"{sleep_ms} ms model, pop {pop}, {gens} gen, sim/s",
                        f"{plain:.0f} ({runs_text(res['plain'])}) plain abc-redis-worker",
                        f"{ledger:.0f} ({runs_text(res['ledger'])}) entrypoint",
                        f"cost {cost * 100:+.1f}%, {extra_ms:+.2f} ms/evaluation: {rtext}",
                        spread_text(res["plain"], res["ledger"]),
                        f"cost <= {target * 100:.0f}%",
                        verdict(cost <= target),
                    ])
                    def cpu(runs, key="cpu_ms_per_eval"):
                        return statistics.median(r[key] for r in runs)

                    def cpu_text(runs):
                        each = " ".join(f"{r['cpu_ms_per_eval']:.2f}" for r in runs)
                        return (f"{cpu(runs):.2f} ({each}), redis "
                                f"{cpu(runs, 'cpu_redis_ms_per_eval'):.2f}")

                    more = cpu(res["ledger"]) / cpu(res["plain"]) - 1
                    more_redis = (cpu(res["ledger"], "cpu_redis_ms_per_eval")
                                  / cpu(res["plain"], "cpu_redis_ms_per_eval") - 1)
                    rows.append([
                        "", "  CPU ms/evaluation, workers + redis",
                        cpu_text(res["plain"]), cpu_text(res["ledger"]),
                        f"CPU {more * 100:+.1f}%, redis {more_redis * 100:+.0f}%",
                        "", "", "",
                    ])
            finally:
                master.stop()
                server.stop()
        binary = BIN.exists()
        if not binary and SECTIONS & {"B", "C", "E", "F"}:
            notes.append(f"B, C, E and F skipped: {BIN.relative_to(ROOT) if BIN.is_relative_to(ROOT) else BIN}"
                         " not built (cargo build --release --bin abc-operator)")
        if "B" in SECTIONS and binary:
            case = B_CASE
            sleep_ms, pop, gens = case
            say(f"B: {sleep_ms} ms model, pop {pop}, {gens} generations, {B_REPEATS} run(s) per variant")
            res = alternate(
                [("hand", lambda tag: run_by_hand(children, "plain", case, tag)),
                 ("operator", lambda tag: run_operator(children, case, tag))],
                B_REPEATS, "B")[case]
            hand, op = median_tp(res["hand"]), median_tp(res["operator"])
            ratio, rtext = ratio_text(res["hand"], res["operator"])
            rows.append([
                "B. throughput",
                f"{sleep_ms} ms model, pop {pop}, {gens} gen, sim/s",
                f"{hand:.0f} ({runs_text(res['hand'])})",
                f"{op:.0f} ({runs_text(res['operator'])}) abc-operator run",
                rtext,
                spread_text(res["hand"], res["operator"]),
                f">= {B_TARGET}",
                verdict(ratio >= B_TARGET),
            ])
        if "C" in SECTIONS and binary:
            say(f"C: {C_SLEEP_MS} ms model, pop {C_POP}; pyABC by hand, 1 kill")
            hand = recovery_run(children, "hand", 1, GIVE_UP_S, "C-hand")
            say(f"C: abc-operator run, {KILLS} kills")
            op = recovery_run(children, "operator", KILLS, GIVE_UP_S, "C-operator")
            hand_text = "no kill landed"
            if hand:
                h = hand[0]["progress_s"]
                hand_text = (f"never (gave up after {GIVE_UP_S:.0f} s)" if h is None
                             else f"progressed after {h:.2f} s (?)")
            prog = [s["progress_s"] for s in op if s["progress_s"] is not None]
            stuck = sum(1 for s in op if s["progress_s"] is None)
            rep = [s["repair_s"] for s in op if s["repair_s"] is not None]
            if prog:
                p50, p95 = pct(prog, 0.5), pct(prog, 0.95)
                op_text = f"p50 {p50:.2f} s, p95 {p95:.2f} s (n={len(prog)})"
                if stuck:
                    op_text += f", {stuck} never"
                ok = stuck == 0 and p95 < C_TARGET_S
            else:
                op_text, ok = "no kill landed" if not op else "never", False
            rows.append([
                "C. lost worker",
                f"SIGKILL mid-evaluation ({C_SLEEP_MS} ms model) -> run progresses",
                hand_text, op_text, "", "", f"p95 < {C_TARGET_S:.0f} s", verdict(ok),
            ])
            if rep:
                rows.append([
                    "", "  of which: SIGKILL -> runner's `repaired` event", "-",
                    f"p50 {pct(rep, 0.5):.2f} s, p95 {pct(rep, 0.95):.2f} s", "", "", "", "",
                ])
        if "E" in SECTIONS and binary:
            say(f"E: {len(E_CASES)} models, {E_REPEATS} run(s) per variant, {WORKERS} processes")
            by_case = alternate(
                [("multicore", lambda tag: [r for case in E_CASES
                                            for r in run_multicore(children, case, tag)]),
                 ("operator", lambda tag: [r for case in E_CASES
                                           for r in run_operator(children, case, tag,
                                                                 eval_log=True)])],
                E_REPEATS, "E")
            for case in E_CASES:
                sleep_ms, pop, gens = case
                res = by_case[case]
                ratio, rtext = ratio_text(res["multicore"], res["operator"])
                target = E_TARGETS[sleep_ms]
                rows.append([
                    "E. one machine" if case == E_CASES[0] else "",
                    f"{sleep_ms} ms model, pop {pop}, {gens} gen, sim/s",
                    f"{median_tp(res['multicore']):.0f} ({runs_text(res['multicore'])}) "
                    "MulticoreEvalParallelSampler",
                    f"{median_tp(res['operator']):.0f} ({runs_text(res['operator'])}) "
                    "abc-operator run",
                    rtext,
                    spread_text(res["multicore"], res["operator"]),
                    f">= {target}",
                    verdict(ratio >= target),
                ])
                # what pyABC's master adds on its own (bench/master.py's MasterWaits)
                waits = [r["master_wait_s"] / r["sampling_s"] for r in res["operator"]]
                without = statistics.median(
                    r["evaluations"] / (r["sampling_s"] - r["master_wait_s"])
                    for r in res["operator"]) / median_tp(res["multicore"])
                rows.append([
                    "", "  of which pyABC's master sleeping (100 ms steps)", "-",
                    f"{100 * statistics.median(waits):.0f}% of sampled time ("
                    + " ".join(f"{100 * w:.0f}" for w in waits) + ")",
                    f"{without:.3f} without", "", "", "",
                ])
                # where the workers' time went: what is left once the master does not sleep
                shares = {v: {k: statistics.median(r["worker_time"][k] for r in res[v])
                              for k in ("model", "between", "edges", "gap_ms")}
                          for v in ("multicore", "operator")}
                rows.append([
                    "", "  workers' time: model / between evaluations (median gap) / rest",
                    *(f"{100 * w['model']:.1f}% / {100 * w['between']:.1f}% "
                      f"({w['gap_ms']:.2f} ms) / {100 * w['edges']:.1f}%"
                      for w in (shares["multicore"], shares["operator"])),
                    "", "", "", "",
                ])
        if "D" in SECTIONS:
            section_d(children, rows, notes)
        if "G" in SECTIONS:
            section_g(children, rows)
        if "F" in SECTIONS and binary:
            for victim, label in (("master", "F. master lost"), ("redis", "F. Redis lost")):
                say(f"F: abc-operator run of the Gaussian example, {victim} killed")
                r = resume_run(children, victim, f"F-{victim}")
                to_sampling = ("never" if r["to_sampling_s"] is None
                               else f"{r['to_sampling_s']:.1f} s")
                rows.append([
                    label,
                    f"SIGKILL of the {'master' if victim == 'master' else 'redis-server'} "
                    f"in generation {F_KILL_AT} of {F_GENERATIONS}: generations sampled again",
                    f"{r['hand_redone']} (the run is lost: all again)",
                    f"{r['redone']}; sampling again {to_sampling} after the kill",
                    "", "", f"<= {F_TARGET_REDONE}",
                    verdict(r["redone"] <= F_TARGET_REDONE and r["to_sampling_s"] is not None),
                ])
    except BenchError as err:
        failed = True
        notes.append(f"error: {err}")
    except KeyboardInterrupt:
        failed = True
        notes.append("interrupted")
    finally:
        say("stopping everything that was started")
        children.stop_all()
        if children.procs:
            notes.append(f"{len(children.procs)} process(es) could not be stopped")
    load_after = os.getloadavg()
    try:
        redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                       text=True).stdout.split()[2]
    except (OSError, IndexError):
        redis_version = "?"
    try:
        pyabc_version = subprocess.run(
            [PYTHON, "-c", "import importlib.metadata as m; print(m.version('pyabc'), m.version('redis'))"],
            capture_output=True, text=True).stdout.split()
    except OSError:
        pyabc_version = []
    print()
    print(f"abc-operator bench{' (BENCH_QUICK)' if QUICK else ''}: pyabc "
          f"{pyabc_version[0] if pyabc_version else '?'}, redis-py "
          f"{pyabc_version[1] if len(pyabc_version) > 1 else '?'}, redis-server {redis_version}, "
          f"{os.cpu_count()} CPU(s), {WORKERS} workers; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after")
    print("A/B: sampling throughput (evaluations / sampling wall time, from the master), "
          "median of alternated runs (each run in parentheses)")
    if len(rows) > 1:
        print(table(rows))
    for note in notes:
        print(f"note: {note}")
    print(f"took {time.monotonic() - T0:.0f} s")
    if failed or os.environ.get("BENCH_KEEP"):
        print(f"logs kept in {scratch}", file=sys.stderr)
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
