#!/usr/bin/env python3
"""The benchmark's pyABC master: one model, one timing, used by every variant of bench.py.

The same script runs by hand (bench.py starts it next to its own redis-server and workers)
and under `abc-operator run` (bench.py copies it next to a generated manifest). It finds
Redis where both put it: ABC_REDIS_HOST, ABC_REDIS_PORT, ABC_REDIS_PASSWORD; it writes its
databases and its result to ABC_RESULTS_DIR.

Model: y ~ N(mu, 0.5^2) after sleeping BENCH_SLEEP_MS (no sleep at all for 0); prior
mu ~ U(-5, 5); observed y = 2; distance |y - y0|; pyABC's default (median) epsilon, so
each generation accepts fewer and evaluates more.

Timing: only sampling. Every call of the sampler's `sample_until_n_accepted` (one per
generation, calibration included) is timed; evaluations are the sampler's own count for
that generation (pyABC's `nr_evaluations_`, what the history records). Throughput is the
sum of evaluations over the sum of those wall times: start-up (imports, workers
connecting), the master's work between generations and database writes are left out. The
Redis master's 100 ms sleeps inside sampling are counted apart (master_wait_s).
Before each analysis the master waits until BENCH_WORKERS workers listen on pyABC's
channel, so worker start-up is not sampled time either.

Environment (all optional):
  BENCH_SLEEP_MS       model time in ms (default 0)
  BENCH_POP            population size (default 200)
  BENCH_GENERATIONS    generations after calibration, pyABC's max_nr_populations (default 3)
  BENCH_SAMPLER        dynamic (RedisEvalParallelSampler, default), static, or multicore
                       (pyABC's MulticoreEvalParallelSampler, no Redis: what one machine
                       offers without it)
  BENCH_PROCESSES      processes of the multicore sampler (default 2)
  BENCH_WORKERS        wait for this many subscribed workers before each analysis (default 0)
  BENCH_WAIT_S         how long to wait for them (default 300)
  BENCH_ANALYSES       analyses run one after another (default 1); each has a calibration
  BENCH_RESULT         result file name in ABC_RESULTS_DIR (default bench-result.json)
  BENCH_CONN_FILE      if set, the Redis connection is written there (mode 0600) for the
                       benchmark, which has no other way to learn the password of a run
                       started by `abc-operator run`
  BENCH_TRACE_DIR      if set, the model writes the wall time of each evaluation's start to
                       BENCH_TRACE_DIR/<pid>, so the benchmark can tell which worker is in
                       the middle of an evaluation (section C)
  BENCH_EVAL_LOG_DIR   if set, each worker process appends the wall times of every
                       evaluation's start and end to BENCH_EVAL_LOG_DIR/<pid>, so the
                       benchmark can tell where the workers' time went (section E)
  BENCH_PARAMETERS     parameters of the prior (default 1: mu alone); the others, p1, p2, ...
                       ~ N(0, 1), are sampled and stored but not used by the model
  BENCH_RECORDS        if 1, run through `abc_operator.run` (which records every generation
                       in Redis, src/protocol/inference.rs) instead of pyABC's new + run, and
                       time per stored generation pyABC's own append_population and the
                       module's record (computing it, RPUSH) that follows it (section G)
  BENCH_SERVE          if set, import pyabc once and run once per line on stdin (a JSON
                       object of the BENCH_* settings above), printing `BENCH_DONE <result
                       file>` after each: section A's runs then do not pay the master's
                       start-up each time
"""

import json
import os
import sys
import tempfile
import time

results_dir = os.path.abspath(os.environ.get("ABC_RESULTS_DIR", "."))
if "MPLCONFIGDIR" not in os.environ:  # pyabc imports matplotlib
    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="bench-mpl-")

try:
    import abc_operator  # noqa: E402  (on PYTHONPATH under abc-operator run)
except ImportError:  # run by hand from the checkout
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import abc_operator  # noqa: E402
import numpy as np  # noqa: E402
import pyabc  # noqa: E402
import redis  # noqa: E402
from pyabc.sampler import MulticoreEvalParallelSampler  # noqa: E402
from pyabc.sampler.redis_eps import sampler as redis_sampler  # noqa: E402

SLEEP_S = 0.0
TRACE_DIR = None
EVAL_LOG_DIR = None
OBSERVED = {"y": 2.0}


def model(parameter):
    # Defined in __main__, so pyABC's cloudpickle sends it to the workers by value, with
    # the values SLEEP_S, TRACE_DIR and EVAL_LOG_DIR have then: the workers need nothing
    # but pyabc.
    start = time.time()
    if TRACE_DIR is not None:
        with open(os.path.join(TRACE_DIR, str(os.getpid())), "w") as f:
            f.write(repr(time.time()))
    if SLEEP_S > 0:
        time.sleep(SLEEP_S)
    y = {"y": parameter["mu"] + 0.5 * np.random.randn()}
    if EVAL_LOG_DIR is not None:
        # one line-buffered file per process, kept on a module: this function is unpickled
        # afresh every generation (a write of about 5 us per evaluation)
        log = getattr(time, "bench_eval_log", None)
        if log is None:
            path = os.path.join(EVAL_LOG_DIR, str(os.getpid()))
            log = time.bench_eval_log = open(path, "a", buffering=1)
        log.write(f"{start!r} {time.time()!r}\n")
    return y


def distance(x, x0):
    return abs(x["y"] - x0["y"])


class MasterWaits:
    """The sleeps of pyABC's Redis master (`SLEEP_TIME`, 100 ms), counted, not changed: it
    sleeps once a generation has its n acceptances whenever a worker is still in it, and
    that fixed cost is part of what limits a fast model (bench/README.md, section E)."""

    count = 0
    seconds = 0.0
    _sleep = staticmethod(redis_sampler.sleep)

    @classmethod
    def sleep(cls, seconds):
        start = time.perf_counter()
        cls._sleep(seconds)
        cls.count += 1
        cls.seconds += time.perf_counter() - start


redis_sampler.sleep = MasterWaits.sleep


class RecordTiming:
    """Per stored generation: pyABC's own `History.append_population` and the
    `abc_operator` module's record after it (`_record_appended_populations` wraps the
    History's method: the record is that wrapper's time minus pyABC's), in wall and CPU time
    of this process, with pyABC's wall time of the generation (sampling included)."""

    generations = []
    _stored = (0.0, 0.0)
    installed = False

    @classmethod
    def install(cls):
        if cls.installed:
            return
        cls.installed = True
        store = pyabc.History.append_population

        def timed_store(self, *args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            store(self, *args, **kwargs)
            cls._stored = (time.perf_counter() - wall, time.process_time() - cpu)

        pyabc.History.append_population = timed_store
        install = abc_operator._record_appended_populations

        def timed_install(history, client):
            install(history, client)
            append = history.append_population

            def timed_append(t, current_epsilon, population, nr_simulations, model_names,
                             wall_time=None):
                wall, cpu = time.perf_counter(), time.process_time()
                append(t, current_epsilon, population, nr_simulations, model_names,
                       wall_time=wall_time)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                stored_wall, stored_cpu = cls._stored
                cls.generations.append({
                    "t": t, "particles": len(population), "pyabc_wall_time_s": wall_time,
                    "append_s": stored_wall, "append_cpu_s": stored_cpu,
                    "record_s": wall - stored_wall, "record_cpu_s": cpu - stored_cpu,
                })

            history.append_population = timed_append

        abc_operator._record_appended_populations = timed_install


def timed(base):
    """A sampler class that records wall time and evaluations of every generation."""

    class Timed(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.bench_generations = []

        def sample_until_n_accepted(self, n, simulate_one, t, **kwargs):
            waits, waited_s = MasterWaits.count, MasterWaits.seconds
            start, started_at = time.perf_counter(), time.time()
            sample = super().sample_until_n_accepted(n, simulate_one, t, **kwargs)
            seconds = time.perf_counter() - start
            self.bench_generations.append(
                {"t": t, "n": n, "evaluations": int(self.nr_evaluations_), "seconds": seconds,
                 "started_at": started_at, "ended_at": time.time(),
                 "master_waits": MasterWaits.count - waits,
                 "master_wait_s": MasterWaits.seconds - waited_s}
            )
            return sample

    return Timed


def wait_for_workers(client, workers, wait_s):
    """Waits until `workers` workers are subscribed to pyABC's channel (they are then idle)."""
    if workers <= 0:
        return 0.0
    start = time.monotonic()
    while True:
        subscribed = dict(client.pubsub_numsub("abc_msg_pubsub")).get(b"abc_msg_pubsub", 0)
        if subscribed >= workers:
            return time.monotonic() - start
        if time.monotonic() - start > wait_s:
            sys.exit(f"only {subscribed} of {workers} workers after {wait_s:.0f}s")
        time.sleep(0.05)


def run(env, host, port, password):
    """Runs the analyses `env` (BENCH_* settings) asks for; returns the result path."""
    global SLEEP_S, TRACE_DIR, EVAL_LOG_DIR
    # read by the model, which cloudpickle sends with the values they have at that time
    SLEEP_S = float(env.get("BENCH_SLEEP_MS", "0")) / 1000.0
    TRACE_DIR = env.get("BENCH_TRACE_DIR") or None
    EVAL_LOG_DIR = env.get("BENCH_EVAL_LOG_DIR") or None
    pop = int(env.get("BENCH_POP", "200"))
    generations = int(env.get("BENCH_GENERATIONS", "3"))
    kind = env.get("BENCH_SAMPLER", "dynamic")
    workers = int(env.get("BENCH_WORKERS", "0"))
    parameters = int(env.get("BENCH_PARAMETERS", "1"))
    records = env.get("BENCH_RECORDS", "") == "1"
    wait_s = float(env.get("BENCH_WAIT_S", "300"))
    out = os.path.join(results_dir, env.get("BENCH_RESULT", "bench-result.json"))
    client = redis.StrictRedis(host=host, port=port, password=password)
    # the abc_operator module's class: with it abc-operator's workers may release the master
    # early (EARLY_RELEASE_KEY there), as they do for a master that uses the module
    base = abc_operator.sampler_class("static" if kind == "static" else "dynamic")
    analyses = []
    for i in range(int(env.get("BENCH_ANALYSES", "1"))):
        waited = wait_for_workers(client, workers, wait_s)
        if kind == "multicore":
            sampler = timed(MulticoreEvalParallelSampler)(
                n_procs=int(env.get("BENCH_PROCESSES", "2"))
            )
        else:
            sampler = timed(base)(host=host, port=port, password=password)
        # unbounded, so that every proposal has a prior density (bounded ones in 31 dimensions
        # would have pyABC propose again and again)
        unused = {f"p{j}": pyabc.RV("norm", 0, 1) for j in range(1, parameters)}
        prior = pyabc.Distribution(mu=pyabc.RV("uniform", -5, 10), **unused)
        abc = pyabc.ABCSMC(model, prior, distance, population_size=pop, sampler=sampler)
        db = os.path.join(results_dir, f"bench-{os.getpid()}-{time.time_ns()}.db")
        recorded = len(RecordTiming.generations)
        rewrite_s = None
        if records:
            RecordTiming.install()
            history = abc_operator.run(abc, "sqlite:///" + db, OBSERVED, minimum_epsilon=0.0,
                                       max_nr_populations=generations)
            # what a resumed master's start adds: every stored generation's record, read
            # back from the database (then one MULTI)
            start = time.perf_counter()
            abc_operator.generation_records(history)
            rewrite_s = time.perf_counter() - start
        else:
            abc.new("sqlite:///" + db, OBSERVED)
            abc.run(minimum_epsilon=0.0, max_nr_populations=generations)
        gens = sampler.bench_generations
        analyses.append(
            {
                "waited_for_workers_s": waited,
                "generations": gens,
                "evaluations": sum(g["evaluations"] for g in gens),
                "sampling_s": sum(g["seconds"] for g in gens),
                "master_wait_s": sum(g["master_wait_s"] for g in gens),
                "records": RecordTiming.generations[recorded:],
                "records_from_database_s": rewrite_s,
            }
        )
        print(
            f"analysis {i}: {analyses[-1]['evaluations']} evaluations in "
            f"{analyses[-1]['sampling_s']:.2f}s of sampling",
            flush=True,
        )
    evaluations = sum(a["evaluations"] for a in analyses)
    sampling_s = sum(a["sampling_s"] for a in analyses)
    result = {
        "sleep_ms": SLEEP_S * 1000.0,
        "population": pop,
        "sampler": kind,
        "analyses": analyses,
        "evaluations": evaluations,
        "sampling_s": sampling_s,
        "master_wait_s": sum(a["master_wait_s"] for a in analyses),
        "throughput": evaluations / sampling_s if sampling_s > 0 else 0.0,
    }
    with open(out + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(out + ".tmp", out)
    print(f"throughput {result['throughput']:.1f} evaluations/s", flush=True)
    return out


def main():
    host = os.environ.get("ABC_REDIS_HOST", "localhost")
    port = int(os.environ.get("ABC_REDIS_PORT", "6379"))
    password = os.environ.get("ABC_REDIS_PASSWORD") or None
    os.makedirs(results_dir, exist_ok=True)
    conn_file = os.environ.get("BENCH_CONN_FILE")
    if conn_file:
        fd = os.open(conn_file + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"host": host, "port": port, "password": password}, f)
        os.replace(conn_file + ".tmp", conn_file)
    if os.environ.get("BENCH_SERVE"):
        # one JSON object of BENCH_* settings per line on stdin, one run each
        print("BENCH_READY", flush=True)
        for line in sys.stdin:
            if line.strip():
                out = run(json.loads(line), host, port, password)
                print(f"BENCH_DONE {out}", flush=True)
    else:
        run(os.environ, host, port, password)


if __name__ == "__main__":
    main()
