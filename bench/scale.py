#!/usr/bin/env python3
"""Section S of the bench: the controller at cluster scale (`make bench-scale`).

On its own loopback control plane (tools/cluster.sh, one kwok fake node that holds every
pod), N AbcRuns with an external Redis, about 10 worker pods each. Most runs point at a few
shared, idle loopback redis-servers; a few are live: each has its own redis-server, a real
pyABC master (tests/fixtures/protocol_master.py, RedisEvalParallelSampler) and a couple of
real worker processes (src/protocol/abc_worker.py) standing in for some of its kwok pods, so
that generations move and lost workers can be repaired. The controller runs as a process
outside the cluster, as users run it: first the code before the reconcile pipeline (a commit,
built into a cache by this script), then the current code, one after the other against the
same cluster and the same runs. For each, at steady state, over a window:

- API requests per second by verb, as the API server saw them (its audit log; the
  controller has a client certificate of its own, so its requests are told apart), writes
  (create, update, patch, delete) separately, Lease renewals aside;
- RSS and CPU of the controller process (/proc);
- status lag: a live run's generation changes in Redis -> its status.progress.generation
  shows it (Redis polled every 50 ms, the runs watched);
- repair latency: a live run's worker pod is deleted (its worker process SIGKILLed, as a
  kubelet does, while it owes a claimed evaluation) -> status.lostWorkers counts it;
- generation records: every run's Redis holds records as the abc_operator module writes them
  (the idle runs' shared servers some from the start, the live runs' one per generation,
  pushed by this script as the module would), which the current controller keeps in a
  `{run}-generations` ConfigMap per run: ConfigMaps made, the writes that took, and that a
  steady state reads no record (LRANGE) and writes nothing for them;
- the runs' pages (current code only: the base has no dashboard): the dashboard APIService is
  registered for the current controller, and after its first window a second one fetches 100
  runs' pages once a second through the API server: page latency, the controller's CPU, RSS
  and API requests against the first window.

Progress goes to stderr, the table to stdout. Everything started here (control plane,
redis-servers, masters, workers, controller) is stopped at the end, also after an error or
Ctrl-C. See bench/README.md, section S, for the variables and what the figures mean.
"""

import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

try:
    import redis
except ImportError:
    sys.exit("bench/scale.py needs redis-py: run it with ABC_PYTHON (the project's .venv python)")

from common import (T0, BenchError, Children, RedisServer, free_port, pct, say, table,  # noqa: E402
                    verdict)
from shipped import KEYS, generation_record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUICK = os.environ.get("BENCH_QUICK") == "1"


def env_int(name, full, quick):
    return int(os.environ.get(name, quick if QUICK else full))


RUNS = env_int("BENCH_SCALE_RUNS", 1000, 50)
PODS_PER_RUN = env_int("BENCH_SCALE_PODS_PER_RUN", 10, 10)
LIVE = min(RUNS, env_int("BENCH_SCALE_LIVE", 50, 5))
LIVE_WORKERS = min(PODS_PER_RUN, env_int("BENCH_SCALE_LIVE_WORKERS", 2, 2))
IDLE_SERVERS = env_int("BENCH_SCALE_IDLE_SERVERS", 4, 2)
WINDOW_S = env_int("BENCH_SCALE_WINDOW_S", 300, 60)
SETTLE_S = env_int("BENCH_SCALE_SETTLE_S", 120, 30)
REPAIRS = env_int("BENCH_SCALE_REPAIRS", 10, 5)
CHURN = env_int("BENCH_SCALE_CHURN", 2000, 100)
POPULATION = env_int("BENCH_SCALE_POPULATION", 20, 20)
MODEL_SLEEP_S = float(os.environ.get("BENCH_SCALE_MODEL_SLEEP_S", "0.2"))
BASE = os.environ.get("BENCH_SCALE_BASE", "d99cbe4")
# Generation records in each idle server's list before any controller starts (0: no records
# anywhere, the live runs' neither).
RECORDS = env_int("BENCH_SCALE_RECORDS", 10, 10)
# Runs whose pages are fetched once a second in the current code's second window (0: none, and
# no second window). At most one per run: the quick size has 50.
PAGES = min(RUNS, env_int("BENCH_SCALE_PAGES", 100, 100))
PAGE_THREADS = 4  # fetching the pages, each with its own connection
PAGE_WARMUP_S = 15  # pages fetched before the second window: first views, a decision cache's TTL
PYTHON = os.environ.get("ABC_PYTHON", sys.executable)
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
CURRENT_BIN = Path(os.environ.get("ABC_OPERATOR_BIN", TARGET_DIR / "dist" / "abc-operator"))
CACHE = Path(os.environ.get("BENCH_SCALE_CACHE", TARGET_DIR / "bench-scale"))
NAMESPACE = "scale"
CONTROLLER_USER = "abc-bench-controller"
DASHBOARD_GROUP = "dashboard.abc-operator.dev"
DASHBOARD_APISERVICE = f"v1alpha1.{DASHBOARD_GROUP}"
GENERATIONS_CM = "-generations"  # the records ConfigMap of run R is R-generations
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")

# The issue's targets.
TARGET_IDLE_WRITES = 0.0
TARGET_WRITES_PER_LIVE_RUN = 0.2
TARGET_RSS_MIB = 64
TARGET_CPU_PCT = 5.0
TARGET_REPAIR_P95_S = 2.0
TARGET_LAG_S = 2.0


# ---------------------------------------------------------------------------------------
# The binaries: the current code and the base commit, built once into a cache by commit.


def dist_profile():
    """The shipped build's settings (Cargo.toml's [profile.dist]) as cargo --config arguments:
    the base commit, which may predate that profile, is built the same way."""
    with open(ROOT / "Cargo.toml", "rb") as f:
        profile = tomllib.load(f)["profile"]["dist"]
    return [arg for key, value in sorted(profile.items())
            for arg in ("--config", f"profile.dist.{key}={json.dumps(value)}")]


def build_base():
    if os.environ.get("BENCH_SCALE_BASE_BIN"):
        return BASE, Path(os.environ["BENCH_SCALE_BASE_BIN"])
    commit = subprocess.run(["git", "rev-parse", f"{BASE}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    here = CACHE / commit
    profile = dist_profile()
    binary = here / f"abc-operator-{hashlib.sha256(' '.join(profile).encode()).hexdigest()[:12]}"
    if binary.exists():
        say(f"base {BASE}: cached binary {binary}")
        return commit, binary
    src = here / "src"
    if not (src / "Cargo.toml").exists():
        # An export, not a worktree: nothing is registered in the repository.
        say(f"base {BASE}: the source of {commit[:12]} (git archive)")
        src.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    say(f"base {BASE}: cargo build --profile dist (takes about 10 minutes on 2 cores; progress "
        "below)")
    env = dict(os.environ, CARGO_TARGET_DIR=str(here / "target"))
    proc = subprocess.Popen(["nice", "-n", "10", "cargo", "build", *profile, "--profile", "dist",
                             "--bin", "abc-operator"], cwd=src, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    compiled = 0
    for line in proc.stderr:
        if line.strip().startswith("Compiling"):
            compiled += 1
            if compiled % 25 == 0 or "abc-operator" in line:
                say(f"base {BASE}: {compiled} crates compiled ({line.strip()})")
        elif "error" in line:
            print(line.rstrip(), file=sys.stderr)
    if proc.wait() != 0:
        raise BenchError(f"building {BASE} failed")
    shutil.copy2(here / "target" / "dist" / "abc-operator", binary)
    return commit, binary


# ---------------------------------------------------------------------------------------
# The control plane and a small client of its API (admin certificate).


class Cluster:
    def __init__(self, children: Children, scratch: Path):
        self.dir = scratch / "cluster"
        self.children = children
        self.scratch = scratch
        self.tools = Path(subprocess.run([ROOT / "tools" / "build.sh", "--print"], check=True,
                                         capture_output=True, text=True).stdout.strip())
        self.up = False

    def start(self):
        policy = self.scratch / "audit-policy.yaml"
        policy.write_text(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n"
            f"rules:\n- level: Metadata\n  users: [{CONTROLLER_USER}]\n- level: None\n")
        env = dict(os.environ,
                   ABC_KWOK_POD_CAPACITY=str(RUNS * PODS_PER_RUN + 500),
                   ABC_CLUSTER_CLIENT_QPS="200",
                   ABC_CLUSTER_AUDIT_POLICY=str(policy))
        say("control plane: tools/cluster.sh up")
        self.up = True
        subprocess.run([ROOT / "tools" / "cluster.sh", "up", self.dir, "--owner-pid",
                        str(os.getpid())], env=env, check=True, stdout=subprocess.DEVNULL)
        self.kubeconfig = self.dir / "kubeconfig"
        text = self.kubeconfig.read_text()
        self.server = re.search(r"server: https://([\d.]+):(\d+)", text).groups()
        self.pki = self.dir / "pki"
        self.audit_log = self.dir / "logs" / "audit.log"
        self.controller_kubeconfig = self.controller_identity()

    def stop(self):
        if self.up:
            say("control plane: tools/cluster.sh down")
            subprocess.run([ROOT / "tools" / "cluster.sh", "down", self.dir],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.up = False

    def controller_identity(self):
        """A client certificate of the controller's own, so that the audit log tells its
        requests from everyone else's."""
        key, csr, crt = (self.scratch / f"controller.{x}" for x in ("key", "csr", "crt"))
        ext = self.scratch / "client.ext"
        ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=clientAuth\n")
        subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out",
                        csr, "-subj", f"/O=system:masters/CN={CONTROLLER_USER}"], check=True,
                       capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", self.pki / "ca.crt",
                        "-CAkey", self.pki / "ca.key", "-CAcreateserial", "-out", crt, "-days",
                        "2", "-extfile", ext], check=True, capture_output=True)
        text = self.kubeconfig.read_text()
        text = text.replace(str(self.pki / "admin.crt"), str(crt))
        text = text.replace(str(self.pki / "admin.key"), str(key))
        path = self.scratch / "controller.kubeconfig"
        path.write_text(text)
        return path

    def kubectl(self, *args, input=None):
        out = subprocess.run([self.tools / "kubectl", "--kubeconfig", self.kubeconfig, *args],
                             input=input, capture_output=True, text=True)
        if out.returncode != 0:
            raise BenchError(f"kubectl {' '.join(map(str, args))}: {out.stderr.strip()}")
        return out.stdout

    def api(self):
        return Api(self.server, self.pki)


class Api:
    """One HTTPS connection to the API server as admin (not thread-safe: one per thread)."""

    def __init__(self, server, pki: Path):
        self.host, self.port = server[0], int(server[1])
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.conn = None

    def _connect(self, timeout=30):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                           timeout=timeout)

    def request(self, method, path, body=None):
        headers = {"Accept": "application/json"}
        if body is not None:
            # Encoded once: a retry after a dropped connection sends the same bytes.
            headers["Content-Type"] = "application/json"
            body = json.dumps(body)
        for attempt in range(3):
            try:
                if self.conn is None:
                    self.conn = self._connect()
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                return resp.status, (json.loads(data) if data else None)
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.5)

    def fetch(self, path):
        """GET `path` as a browser does (a page: HTML, not JSON, gzip accepted): (status, bytes
        decompressed, bytes received); one attempt, a dropped connection opened again next
        time."""
        try:
            if self.conn is None:
                self.conn = self._connect()
            self.conn.request("GET", path, headers={"Accept": "text/html,*/*",
                                                    "Accept-Encoding": "gzip, deflate"})
            resp = self.conn.getresponse()
            body = resp.read()
            sent = len(body)
            if resp.getheader("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            return resp.status, body, sent
        except (OSError, http.client.HTTPException, gzip.BadGzipFile, EOFError) as err:
            self.conn = None
            return None, str(err).encode(), 0

    def get(self, path):
        status, body = self.request("GET", path)
        if status != 200:
            raise BenchError(f"GET {path}: {status} {body}")
        return body

    def watch(self, path, resource_version, stop: threading.Event):
        """Yields watch events until `stop` or the server ends the stream."""
        conn = self._connect(timeout=5)
        query = urllib.parse.urlencode({"watch": "1", "resourceVersion": resource_version,
                                        "allowWatchBookmarks": "true"})
        sep = "&" if "?" in path else "?"
        conn.request("GET", f"{path}{sep}{query}", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"watch {path}: {resp.status}")
        buf = b""
        try:
            while not stop.is_set():
                try:
                    chunk = resp.read1(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            conn.close()


RUNS_PATH = f"/apis/abc-operator.dev/v1alpha1/namespaces/{NAMESPACE}/abcruns"
PODS_PATH = f"/api/v1/namespaces/{NAMESPACE}/pods"
PAGES_PATH = f"/apis/{DASHBOARD_GROUP}/v1alpha1/namespaces/{NAMESPACE}/dashboards"


# ---------------------------------------------------------------------------------------
# The runs, the live runs' masters and worker processes.


def run_yaml(name, kind, server, secret):
    return (f"apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\n"
            f"metadata: {{name: {name}, labels: {{bench: {kind}}}}}\n"
            f"spec:\n  image: worker\n"
            f"  workers:\n    replicas: {PODS_PER_RUN}\n    runtime: 24h\n"
            f"    heartbeatTimeoutSeconds: 30\n"
            f"  redis:\n    external: {{host: 127.0.0.1, port: {server.port}, "
            f"passwordSecret: {{name: {secret}}}}}\n")


class LiveRun:
    def __init__(self, name, server: RedisServer):
        self.name = name
        self.server = server
        self.client = server.client(decode_responses=True)
        self.master = None
        self.workers = {}  # pod name -> Popen
        self.generations = []  # (monotonic time first seen in Redis, generation)
        self.pushed_at = []  # monotonic time of each generation record pushed to its list
        self.seed = int(name.rsplit("-", 1)[1])  # of its records' particles


class Kubelet(threading.Thread):
    """Runs the worker processes of up to LIVE_WORKERS Running pods of each live run (the
    other pods are kwok's only) and SIGKILLs a process whose pod is gone, as a kubelet does."""

    def __init__(self, cluster: Cluster, children: Children, live: dict, stop: threading.Event):
        super().__init__(daemon=True)
        self.api = cluster.api()
        self.children = children
        self.live = live
        self.stop = stop
        self.lock = threading.Lock()
        self.entrypoint = ROOT / "src" / "protocol" / "abc_worker.py"
        self.logs = children.scratch / "workers"
        self.logs.mkdir(exist_ok=True)
        self.selector = ("abc-operator.dev/component=worker,abc-operator.dev/run in ("
                         + ",".join(live) + ")")
        # Pods whose process kill_pod_worker killed: a tick that listed the pods before the
        # deletion must not start a process for them again (which, under the dead worker's
        # id, would take its ledger over and hide the loss from the controller).
        self.deleted = set()
        self.error = None

    def run(self):
        while not self.stop.is_set():
            try:
                self.tick()
            except Exception as err:  # keep going; reported if it persists
                self.error = err
            self.stop.wait(1.0)

    def tick(self):
        pods = self.api.get(f"{PODS_PATH}?{urllib.parse.urlencode({'labelSelector': self.selector})}")
        by_run = {name: [] for name in self.live}
        for pod in pods["items"]:
            run = pod["metadata"]["labels"].get("abc-operator.dev/run")
            if (run in by_run and not pod["metadata"].get("deletionTimestamp")
                    and pod["metadata"]["name"] not in self.deleted):
                by_run[run].append(pod)
        with self.lock:
            for name, run in self.live.items():
                present = {p["metadata"]["name"] for p in by_run[name]}
                for pod, proc in list(run.workers.items()):
                    if pod not in present or proc.poll() is not None:
                        self.children.kill(proc)
                        del run.workers[pod]
                running = sorted((p for p in by_run[name]
                                  if p.get("status", {}).get("phase") == "Running"),
                                 key=lambda p: p["metadata"]["name"])
                for pod in running:
                    if len(run.workers) >= LIVE_WORKERS:
                        break
                    if pod["metadata"]["name"] not in run.workers:
                        self.start_worker(run, pod)

    def start_worker(self, run: LiveRun, pod):
        name = pod["metadata"]["name"]
        env = {}
        for var in pod["spec"]["containers"][0].get("env") or []:
            if "value" in var:
                env[var["name"]] = var["value"]
        env.update(run.server.env())
        env["ABC_WORKER_ID"] = name
        env["ABC_TEST_MODEL_SLEEP"] = str(MODEL_SLEEP_S)
        run.workers[name] = self.children.spawn([PYTHON, self.entrypoint], self.logs / f"{name}.log",
                                                env=env)

    def kill_pod_worker(self, run: LiveRun, pod):
        """SIGKILL a pod's worker process (its pod is being deleted)."""
        with self.lock:
            self.deleted.add(pod)
            proc = run.workers.pop(pod, None)
        if proc is not None:
            self.children.kill(proc)


class RunWatch(threading.Thread):
    """Watches the live runs and records when each one's status showed what."""

    def __init__(self, cluster: Cluster, stop: threading.Event):
        super().__init__(daemon=True)
        self.api = cluster.api()
        self.stop = stop
        self.lock = threading.Lock()
        self.generation = {}  # run -> [(monotonic time, generation)]
        self.lost = {}  # run -> [(monotonic time, lostWorkers)]
        self.error = None

    def observe(self, run):
        name = run["metadata"]["name"]
        status = run.get("status") or {}
        gen = (status.get("progress") or {}).get("generation")
        lost = status.get("lostWorkers") or 0
        now = time.monotonic()
        with self.lock:
            gens = self.generation.setdefault(name, [])
            if gen is not None and (not gens or gens[-1][1] != gen):
                gens.append((now, gen))
            losts = self.lost.setdefault(name, [])
            if not losts or losts[-1][1] != lost:
                losts.append((now, lost))

    def lost_workers(self, name):
        with self.lock:
            losts = self.lost.get(name) or [(0, 0)]
            return losts[-1][1]

    def run(self):
        selector = urllib.parse.urlencode({"labelSelector": "bench=live"})
        while not self.stop.is_set():
            try:
                listed = self.api.get(f"{RUNS_PATH}?{selector}")
                for run in listed["items"]:
                    self.observe(run)
                rv = listed["metadata"]["resourceVersion"]
                for event in self.api.watch(f"{RUNS_PATH}?{selector}", rv, self.stop):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.observe(event["object"])
                    elif event["type"] == "ERROR":
                        break
            except Exception as err:
                self.error = err
                self.stop.wait(1.0)


class RedisPoller(threading.Thread):
    """Polls each live run's Redis every 50 ms: when does a new generation start. When
    generation g starts, g-1 has been stored: its record is pushed, as the abc_operator
    module's master does right after pyABC stored it (protocol_master.py runs pyABC's
    ABCSMC.run itself, not through the module, so it writes none)."""

    def __init__(self, live: dict, stop: threading.Event):
        super().__init__(daemon=True)
        self.live = live
        self.stop = stop
        self.lock = threading.Lock()
        self.error = None

    def record(self, run: LiveRun, gen: int):
        try:
            while len(run.pushed_at) < gen:
                run.client.rpush(KEYS["generations"],
                                 generation_record(len(run.pushed_at), POPULATION, run.seed))
                run.pushed_at.append(time.monotonic())
        except redis.RedisError as err:
            self.error = err

    def run(self):
        while not self.stop.is_set():
            for run in self.live.values():
                try:
                    ana = run.client.get("analysis_id")
                    gen = run.client.get(f"generation_{ana}") if ana else None
                except redis.RedisError:
                    continue
                if gen is None:
                    continue
                gen = int(gen)
                with self.lock:
                    if not run.generations or run.generations[-1][1] != gen:
                        run.generations.append((time.monotonic(), gen))
                if RECORDS > 0:
                    self.record(run, gen)
            self.stop.wait(0.05)


# ---------------------------------------------------------------------------------------
# Measuring one controller.


class Controller:
    def __init__(self, children: Children, cluster: Cluster, binary: Path, label: str,
                 extra_args=()):
        self.label = label
        self.port = free_port()
        self.log = children.scratch / f"controller-{label}.log"
        self.children = children
        self.proc = children.spawn(
            [binary, "controller", "--namespace", NAMESPACE, "--metrics-addr",
             f"127.0.0.1:{self.port}", *extra_args], self.log,
            env={"KUBECONFIG": str(cluster.controller_kubeconfig), "RUST_LOG": "info,kube=warn"})

    def alive(self):
        return self.proc.poll() is None

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_kib(self, key):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            return r.read().decode()

    def run_series(self):
        """Metric series labelled with a run: what a deleted run must not leave behind."""
        return sum(1 for line in self.metrics().splitlines() if 'run="' in line)

    def sample(self, name):
        """The value of an unlabelled metric, or None."""
        for line in self.metrics().splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
        return None

    def reconciles(self):
        return self.sample("abc_operator_reconciles_total") or 0

    def remembered_runs(self):
        return self.sample("abc_operator_remembered_runs")

    def stop(self):
        self.children.stop(self.proc)


class Pages:
    """The runs' pages as `kubectl abc dashboard` reaches them: the dashboard APIService
    registered for a controller process on loopback (an ExternalName Service `localhost`, as
    tests/dashboard.rs does; no caBundle, the controller publishes its generated CA), and the
    controller's options that serve it."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.port = free_port()  # kept by a controller started again
        self.registered = False

    def controller_args(self):
        return ["--external-metrics-addr", f"127.0.0.1:{self.port}",
                "--tls-dns-name", f"abc-operator.{NAMESPACE}.svc",
                "--dashboard-apiservice", DASHBOARD_APISERVICE]

    def register(self):
        self.registered = True
        self.cluster.kubectl("apply", "-f", "-", input=(
            f"apiVersion: v1\nkind: Service\nmetadata: {{name: abc-operator, namespace: {NAMESPACE}}}\n"
            f"spec: {{type: ExternalName, externalName: localhost}}\n---\n"
            f"apiVersion: apiregistration.k8s.io/v1\nkind: APIService\n"
            f"metadata: {{name: {DASHBOARD_APISERVICE}}}\n"
            f"spec: {{group: {DASHBOARD_GROUP}, version: v1alpha1, groupPriorityMinimum: 1000, "
            f"versionPriority: 15, service: {{namespace: {NAMESPACE}, name: abc-operator, "
            f"port: {self.port}}}}}\n"))

    def available(self):
        out = self.cluster.kubectl("get", "apiservice", DASHBOARD_APISERVICE, "-o",
                                   "jsonpath={.status.conditions[?(@.type==\"Available\")].status}")
        return out.strip() == "True"

    def unregister(self):
        """Gone before another controller runs: an APIService nobody serves fails every
        client's discovery (the garbage collector's and the namespace controller's too)."""
        if self.registered:
            self.registered = False
            try:
                self.cluster.kubectl("delete", "apiservice", DASHBOARD_APISERVICE,
                                     "--ignore-not-found", "--wait=false")
            except BenchError as err:
                say(f"  removing the pages' APIService: {err}")


class PagePoller:
    """Fetches each of `runs`' pages once a second through the API server, as the admin, from
    PAGE_THREADS threads (each its own connection and a share of the runs; a round that takes
    longer than a second starts the next at once). Keeps (monotonic time, seconds, status) of
    every fetch and which were a run's first."""

    def __init__(self, cluster: Cluster, runs):
        self.cluster = cluster
        self.runs = list(runs)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.fetches = []  # (monotonic time at the start, seconds, status, bytes)
        self.first = []  # seconds of each run's first fetch
        self.failures = {}  # status or error -> count
        self.threads = [threading.Thread(target=self.fetch_loop, args=(self.runs[i::PAGE_THREADS],),
                                         daemon=True)
                        for i in range(min(PAGE_THREADS, len(self.runs)))]

    def start(self):
        for t in self.threads:
            t.start()

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def fetch_loop(self, runs):
        api = self.cluster.api()
        seen = set()
        next_round = time.monotonic()
        while not self.stop.is_set():
            for run in runs:
                t0 = time.monotonic()
                status, body, sent = api.fetch(f"{PAGES_PATH}/{run}")
                took = time.monotonic() - t0
                with self.lock:
                    self.fetches.append((t0, took, status, len(body), sent))
                    if run not in seen:
                        seen.add(run)
                        self.first.append(took)
                    if status != 200:
                        key = f"{status}: {body[:120].decode(errors='replace')}"
                        self.failures[key] = self.failures.get(key, 0) + 1
                if self.stop.is_set():
                    return
            next_round = max(next_round + 1.0, time.monotonic())
            self.stop.wait(next_round - time.monotonic())

    def within(self, start, end):
        with self.lock:
            return [(took, status, size, sent) for t0, took, status, size, sent in self.fetches
                    if start <= t0 <= end]


def redis_calls(servers):
    """Commands served so far by `servers` (INFO commandstats, summed): {command: calls}. The
    snapshot script's own commands count too (Redis counts a script's calls by command)."""
    calls = {}
    for server in servers:
        try:
            stats = server.client().info("commandstats")
        except redis.RedisError:
            continue
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            calls[name] = calls.get(name, 0) + value["calls"]
    return calls


def audit_events(path: Path, offset: int, start_wall: float, end_wall: float):
    """The controller's audited requests received in [start_wall, end_wall], read from
    `offset` on. Watches count once (their ResponseStarted), others at ResponseComplete."""
    events = []
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            stage = e.get("stage")
            if e.get("verb") == "watch":
                if stage != "ResponseStarted":
                    continue
            elif stage != "ResponseComplete":
                continue
            received = datetime.fromisoformat(
                e["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
            if start_wall <= received <= end_wall:
                events.append(e)
    return events


def audit_size(path: Path):
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def classify(events, window_s):
    """Requests per second by verb; writes split by what they touched."""
    by_verb = {}
    writes = {"lease": 0, "live": 0, "idle": 0, "other": 0}
    by_resource = {}
    for e in events:
        verb = e["verb"]
        ref = e.get("objectRef") or {}
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        if ref.get("resource") in ("leases", "subjectaccessreviews"):
            key = f"{verb} ({ref['resource']})"
        else:
            key = verb
        by_verb[key] = by_verb.get(key, 0) + 1
        # A SubjectAccessReview is a question (the pages' authorization), not a write.
        if verb in WRITE_VERBS and ref.get("resource") != "subjectaccessreviews":
            name = ref.get("name") or ""
            if ref.get("resource") == "leases":
                writes["lease"] += 1
            elif name.startswith("live-"):
                writes["live"] += 1
            elif name.startswith("idle-"):
                writes["idle"] += 1
            else:
                writes["other"] += 1
            if ref.get("resource") != "leases":
                rk = f"{verb} {resource}"
                by_resource[rk] = by_resource.get(rk, 0) + 1
    rate = {k: v / window_s for k, v in by_verb.items()}
    return rate, {k: v / window_s for k, v in writes.items()}, \
        {k: v / window_s for k, v in by_resource.items()}


def record_requests(events):
    """The controller's requests on records ConfigMaps (`R-generations`) and its
    SubjectAccessReviews: {"<verb> <idle|live|?>": count, "sar": count}. A create may name no
    object in the audit log (the name is in the body): counted as "?" unless it has one."""
    counts = {}
    for e in events:
        ref = e.get("objectRef") or {}
        if ref.get("resource") == "subjectaccessreviews":
            counts["sar"] = counts.get("sar", 0) + 1
            continue
        if ref.get("resource") != "configmaps":
            continue
        name = ref.get("name") or ""
        if name and not name.endswith(GENERATIONS_CM):
            continue
        if not name and e["verb"] != "create":
            continue
        kind = "live" if name.startswith("live-") else "idle" if name.startswith("idle-") else "?"
        code = (e.get("responseStatus") or {}).get("code")
        key = f"{e['verb']} {kind}" + (f" {code}" if code and code >= 400 else "")
        counts[key] = counts.get(key, 0) + 1
    return counts


def status_lags(live: dict, watch: RunWatch, start, end):
    """For each generation that started in Redis within [start, end]: the time until the
    run's status showed it (or a later one)."""
    lags, missing = [], 0
    with watch.lock:
        shown = {k: list(v) for k, v in watch.generation.items()}
    for name, run in live.items():
        for t_redis, gen in list(run.generations):
            if not (start <= t_redis <= end):
                continue
            seen = [t for t, g in shown.get(name, []) if g >= gen and t >= t_redis - 1.0]
            if seen:
                lags.append(max(0.0, seen[0] - t_redis))
            else:
                missing += 1
    return lags, missing


def measure_repairs(live: dict, kubelet: Kubelet, watch: RunWatch, api: Api, count,
                    controller):
    """Deletes a live run's worker pod whose process owes a claimed evaluation (SIGKILLing
    the process, as a kubelet does) and times until status.lostWorkers counts it."""
    times, missed, tries = [], 0, 0
    names = list(live)
    i = 0
    while len(times) + missed < count and tries < count * 10:
        tries += 1
        controller.check()
        run = live[names[i % len(names)]]
        i += 1
        victim = None
        try:
            for ledger in run.client.smembers("abc_operator:ledgers"):
                fields = run.client.hgetall(f"abc_operator:ledger:{ledger}")
                if "claim_max" in fields and fields.get("worker") in run.workers:
                    victim = fields["worker"]
                    break
        except redis.RedisError:
            pass
        if victim is None:
            time.sleep(0.2)
            continue
        before = watch.lost_workers(run.name)
        for _ in range(5):
            t0 = time.monotonic()
            status, body = api.request("DELETE", f"{PODS_PATH}/{victim}",
                                       {"gracePeriodSeconds": 0})
            if status in (200, 202, 404):  # 404: gone already (an earlier attempt's answer lost)
                break
            # e.g. 504 from an overloaded API server: the pod is still there, and timing from
            # here would time the worker's heartbeat timeout instead of the pod's deletion
            say(f"  deleting {victim}: {status} {(body or {}).get('message', '')}; again")
            time.sleep(1.0)
        else:
            raise BenchError(f"could not delete pod {victim}")
        kubelet.kill_pod_worker(run, victim)
        deadline = t0 + 30
        while time.monotonic() < deadline:
            with watch.lock:
                after = [t for t, n in watch.lost.get(run.name, []) if t >= t0 and n > before]
            if after:
                times.append(after[0] - t0)
                say(f"  repair {len(times)}: {run.name}/{victim} counted after {after[0] - t0:.2f} s")
                break
            time.sleep(0.02)
        else:
            missed += 1
            say(f"  repair of {run.name}/{victim}: not counted within 30 s")
        time.sleep(2.0)  # the replacement pod and its worker
    return times, missed


class Restarting:
    """The controller under test; started again if it exits before the window (a leader
    that could not renew its Lease in time stops itself), each exit counted and reported."""

    def __init__(self, label, binary, cluster, children, extra_args=()):
        self.label, self.binary, self.cluster, self.children = label, binary, cluster, children
        self.extra_args = extra_args
        self.exits = []
        self.ctl = Controller(children, cluster, binary, label, extra_args)

    def check(self):
        if self.ctl.alive():
            return
        self.exits.append(last_line(self.ctl.log))
        say(f"{self.label}: the controller exited ({self.exits[-1]}); starting it again")
        self.children.forget(self.ctl.proc)
        self.ctl = Controller(self.children, self.cluster, self.binary, self.label,
                              self.extra_args)


def last_line(path: Path):
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "?"
    return lines[-1][-300:] if lines else "?"


def ready_workers(api: Api):
    """Ready worker pods of Deployments whose rollout is complete (a controller of another
    version may change the pod template: then every pod is replaced first), from the
    Deployments' status (a list with a selector cannot count without listing every pod)."""
    deployments = api.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments")
    ready = 0
    for d in deployments["items"]:
        status, want = d.get("status") or {}, d["spec"].get("replicas", 1)
        if (status.get("observedGeneration") == d["metadata"]["generation"]
                and status.get("updatedReplicas") == want and status.get("replicas") == want):
            ready += status.get("readyReplicas") or 0
    return ready


def wait_pods_running(api: Api, want, timeout, controller: Restarting):
    deadline = time.monotonic() + timeout
    last = -1
    # First let the controller see every run (it may change the Deployments it finds).
    for _ in range(20):
        controller.check()
        time.sleep(1)
    while time.monotonic() < deadline:
        controller.check()
        n = ready_workers(api)
        if n != last:
            say(f"  {n}/{want} worker pods ready")
            last = n
        if n >= want:
            return n
        time.sleep(5)
    return last


# A record pushed just before a window is read in it: the controller reads a live run's
# records when it sees the next generation (status lag p95 about 1 s).
RECORD_READ_DELAY_S = 3.0


def records_pushed(live: dict, start, end):
    """Generation records pushed from RECORD_READ_DELAY_S before start to end: those whose
    reads (LRANGE, ConfigMap GET) can fall between start and end."""
    return sum(1 for run in live.values() for t in run.pushed_at
               if start - RECORD_READ_DELAY_S <= t <= end)


def measure_window(label, cluster, live, watch, restarting, idle_servers, window_s):
    """The controller over one window: API requests (audit log), CPU and RSS, status lags,
    Redis commands on the idle and the live servers."""
    ctl = restarting.ctl
    offset = audit_size(cluster.audit_log)
    idle_calls0 = redis_calls(idle_servers)
    live_calls0 = redis_calls([run.server for run in live.values()])
    reconciles0 = ctl.reconciles()
    start, start_wall, cpu0 = time.monotonic(), time.time(), ctl.cpu_seconds()
    rss = []
    while time.monotonic() - start < window_s:
        if not ctl.alive():
            raise BenchError(f"{label}: the controller exited in the window: {last_line(ctl.log)}")
        rss.append(ctl.memory_kib("VmRSS") / 1024)
        time.sleep(1.0)
    end, end_wall, cpu1 = time.monotonic(), time.time(), ctl.cpu_seconds()
    reconciles = ctl.reconciles() - reconciles0
    idle_calls = diff_calls(redis_calls(idle_servers), idle_calls0)
    live_calls = diff_calls(redis_calls([run.server for run in live.values()]), live_calls0)
    recorded = records_pushed(live, start, end)
    hwm = ctl.memory_kib("VmHWM") / 1024
    window = end - start
    time.sleep(3)  # the audit log's last lines; status of the last generations
    events = audit_events(cluster.audit_log, offset, start_wall, end_wall)
    rate, writes, write_kinds = classify(events, window)
    lags, lag_missing = status_lags(live, watch, start, end - 3)
    gens = sum(1 for run in live.values() for t, _ in run.generations if start <= t <= end)
    say(f"{label}: {len(events)} requests in the window, {gens} generations started in live runs; "
        f"idle servers' commands {sorted(idle_calls.items())}")
    return {
        "rate": rate, "writes": writes, "write_kinds": write_kinds,
        "requests": sum(rate.values()),
        "cpu_pct": (cpu1 - cpu0) / window * 100,
        "reconciles_per_s": reconciles / window,
        "rss_mean": statistics.mean(rss), "rss_max": max(rss), "rss_hwm": hwm,
        "lags": lags, "lag_missing": lag_missing, "generations": gens, "window": window,
        "record_requests": record_requests(events),
        "idle_redis": idle_calls, "live_redis": live_calls, "records_pushed": recorded,
        "span": (start, end), "span_wall": (start_wall, end_wall),
    }


def available(pages):
    try:
        return pages.available()
    except BenchError:
        return False


def diff_calls(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def records_held(api: Api, live: dict):
    """The records ConfigMaps in the namespace and the runs whose status shows records."""
    cms = api.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps")["items"]
    held = [cm for cm in cms if cm["metadata"]["name"].endswith(GENERATIONS_CM)]
    runs = api.get(RUNS_PATH)["items"]
    shown = {}
    for run in runs:
        kind = "live" if run["metadata"]["name"] in live else "idle"
        inference = (run.get("status") or {}).get("inference") or {}
        if inference.get("generations"):
            shown.setdefault(kind, []).append(inference["generations"])
    return {
        "config_maps": {k: sum(1 for cm in held if cm["metadata"]["name"].startswith(f"{k}-"))
                        for k in ("idle", "live")},
        "keys": sum(len(cm.get("data") or {}) for cm in held),
        "bytes": sum(len(v) for cm in held for v in (cm.get("data") or {}).values()),
        "shown": shown,
    }


def measure_one(label, cluster, live, kubelet, watch, api, restarting, idle_servers, pages,
                since):
    started = time.monotonic()
    want = RUNS * PODS_PER_RUN
    running = wait_pods_running(api, want, max(600, want / 5), restarting)
    say(f"{label}: {running} worker pods Running after {time.monotonic() - started:.0f} s; "
        f"settling {SETTLE_S} s")
    settle_end = time.monotonic() + SETTLE_S
    while time.monotonic() < settle_end:
        restarting.check()
        time.sleep(1)
    if kubelet.error:
        say(f"  note: the worker harness saw: {kubelet.error}")
    say(f"{label}: measuring over {WINDOW_S} s")
    # What the start cost for records: from the controller's start until the window.
    startup_wall = time.time()
    startup_idle_redis = diff_calls(redis_calls(idle_servers), since["idle_redis"])
    result = measure_window(label, cluster, live, watch, restarting, idle_servers, WINDOW_S)
    startup = audit_events(cluster.audit_log, since["audit"], since["wall"], startup_wall)
    result["startup_records"] = record_requests(startup)
    result["startup_idle_redis"] = startup_idle_redis
    result["records_held"] = records_held(api, live) if RECORDS > 0 else None
    paged = None
    if pages is not None:
        paged = measure_pages(label, cluster, live, watch, restarting, idle_servers, pages)
    exits_before = len(restarting.exits)
    say(f"{label}: repairs")
    repairs, repairs_missed = measure_repairs(live, kubelet, watch, api, REPAIRS, restarting)
    result.update({
        "repairs": repairs, "repairs_missed": repairs_missed,
        "startup_s": time.monotonic() - started, "exits": restarting.exits[:exits_before],
        "exits_repairs": restarting.exits[exits_before:],
    })
    return result, paged


def measure_pages(label, cluster, live, watch, restarting, idle_servers, pages):
    """A second window with PAGES runs' pages fetched once a second through the API server
    (after PAGE_WARMUP_S of it: every run's first view and one lapse of the authorization
    cache are behind)."""
    try:
        wait_for("the pages' APIService Available", 120, lambda: available(pages), restarting)
    except BenchError as err:
        return {"error": str(err)}
    idle = [f"idle-{i:04d}" for i in range(RUNS - LIVE)]
    runs = (list(live) + idle)[:PAGES]
    poller = PagePoller(cluster, runs)
    say(f"{label}: fetching {len(runs)} runs' pages once a second ({min(len(live), PAGES)} of "
        f"them live); {PAGE_WARMUP_S} s before a second window of {WINDOW_S} s")
    warmup_offset, warmup_wall = audit_size(cluster.audit_log), time.time()
    warmup_start = time.monotonic()
    poller.start()
    try:
        time.sleep(PAGE_WARMUP_S)
        result = measure_window(f"{label}, pages", cluster, live, watch, restarting,
                                idle_servers, WINDOW_S)
    finally:
        poller.close()
    start, end = result["span"]
    fetched = poller.within(start, end)
    # The first views: each run's records read once (and the first decisions).
    result["warmup_requests"] = record_requests(
        audit_events(cluster.audit_log, warmup_offset, warmup_wall, result["span_wall"][0]))
    result["warmup_pushed"] = records_pushed(live, warmup_start, start)
    with poller.lock:
        first, failures = list(poller.first), dict(poller.failures)
    result["pages"] = {
        "runs": len(runs), "live": min(len(live), PAGES),
        "per_s": len(fetched) / result["window"],
        "latency": [took for took, status, _, _ in fetched if status == 200],
        "failed": sum(1 for _, status, _, _ in fetched if status != 200),
        "bytes": statistics.mean([size for _, status, size, _ in fetched if status == 200] or [0]),
        "sent": statistics.mean([sent for _, status, _, sent in fetched if status == 200] or [0]),
        "first": first, "failures": failures,
    }
    return result


def wait_for(what, timeout, condition, restarting):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        restarting.check()
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise BenchError(f"{what} not within {timeout} s")


def measure_churn(label, cluster, restarting):
    """CHURN short runs created and deleted in the background (`kubectl delete`'s default),
    as an operator up for months sees them: the controller must forget them all, its RSS and
    its series back where they were."""
    ctl = restarting.ctl
    settled = RUNS  # every run of the bench is remembered once reconciled
    wait_for("the runs remembered", 300, lambda: ctl.remembered_runs() == settled, restarting)
    before = {"rss": ctl.memory_kib("VmRSS") / 1024, "series": ctl.run_series()}
    say(f"{label}: churn: creating and deleting {CHURN} runs in the background")
    docs = [f"apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\n"
            f"metadata: {{name: churn-{i:05d}, labels: {{bench: churn}}}}\n"
            f"spec: {{image: worker, workers: {{replicas: 0}}, redis: {{external: "
            f"{{host: 127.0.0.1, port: 1, passwordSecret: {{name: redis-idle-0}}}}}}}}\n"
            for i in range(CHURN)]
    peak = 0
    for j in range(0, len(docs), 200):
        batch = docs[j:j + 200]
        cluster.kubectl("-n", NAMESPACE, "create", "-f", "-", input="---\n".join(batch))
        # the batch reconciled (the batches before it may still be being forgotten)
        remembered = wait_for("the churn runs reconciled", 600,
                              lambda: (n := ctl.remembered_runs() or 0) >= settled + len(batch)
                              and n, restarting)
        peak = max(peak, remembered)
        cluster.kubectl("-n", NAMESPACE, "delete", "abcruns", "-l", "bench=churn",
                        "--wait=false")
    wait_for("the churn runs forgotten", 600, lambda: ctl.remembered_runs() == settled,
             restarting)
    time.sleep(30)  # the last reconciles of what the deletes touched
    after = {"rss": ctl.memory_kib("VmRSS") / 1024, "series": ctl.run_series(),
             "remembered": ctl.remembered_runs(), "peak_remembered": peak}
    return {"churn_before": before, "churn_after": after}


def measure(label, binary, cluster, children, live, kubelet, watch, api, idle_servers,
            pages=None):
    """One controller: its window, then (`pages`: the current code) a window with pages
    polled; its repairs; the churn soak (the current code). Returns (result, pages' result)."""
    since = {"audit": audit_size(cluster.audit_log), "wall": time.time(),
             "idle_redis": redis_calls(idle_servers)}
    if pages is not None:
        pages.register()
    say(f"{label}: starting the controller ({binary})")
    restarting = Restarting(label, binary, cluster, children,
                            pages.controller_args() if pages is not None else ())
    try:
        result, paged = measure_one(label, cluster, live, kubelet, watch, api, restarting,
                                    idle_servers, pages, since)
        if label == "current" and CHURN > 0:
            exits = len(restarting.exits)
            try:
                result.update(measure_churn(label, cluster, restarting))
            except (BenchError, OSError) as err:
                # e.g. a controller that lost its Lease on an overloaded machine: the soak's
                # before and after would be two processes; the windows' figures stand
                result["churn_error"] = (f"the controller exited ({restarting.exits[exits]})"
                                         if len(restarting.exits) > exits else str(err))
                say(f"{label}: churn not measured: {result['churn_error']}")
        return result, paged
    finally:
        restarting.ctl.stop()
        say(f"{label}: controller stopped")
        if pages is not None:
            pages.unregister()


# ---------------------------------------------------------------------------------------
# Table.


def report(results, labels):
    """The table: a column per label (the base, the current code, the current code with pages
    polled); the last column says whether every current-code column meets the target."""
    rows = [["", *labels, "target", "current"]]
    cols = [results.get(label) for label in labels]
    current = results.get("current")

    def cell(r, fn):
        if r is None:
            return "-"
        try:
            return fn(r)
        except (KeyError, TypeError):  # not measured in this column
            return "-"

    def row(what, fn, target="", ok=None):
        checked = []
        for r in cols[1:]:
            if r is None or ok is None:
                continue
            try:
                checked.append(ok(r))
            except (KeyError, TypeError):
                pass
        rows.append([what, *(cell(r, fn) for r in cols), target,
                     verdict(all(checked)) if checked else ""])

    def section(what):
        rows.append([what, *("" for _ in cols), "", ""])

    verbs = sorted({v for r in results.values() for v in r["rate"]})
    row("API requests/s, all", lambda r: f"{r['requests']:.2f}")
    for v in verbs:
        row(f"  {v}", lambda r, v=v: f"{r['rate'].get(v, 0):.2f}")
    row("writes/s to idle runs' objects", lambda r: f"{r['writes']['idle']:.3f}",
        "0", lambda r: r["writes"]["idle"] <= TARGET_IDLE_WRITES)
    row(f"writes/s per live run ({LIVE} in a generation)",
        lambda r: f"{r['writes']['live'] / LIVE:.3f}", f"<= {TARGET_WRITES_PER_LIVE_RUN}",
        lambda r: r["writes"]["live"] / LIVE <= TARGET_WRITES_PER_LIVE_RUN)
    row("writes/s, other (not a run's)", lambda r: f"{r['writes']['other']:.3f}")
    row("Lease writes/s", lambda r: f"{r['writes']['lease']:.3f}")
    kinds = sorted({k for r in results.values() for k in r["write_kinds"]})
    for k in kinds:
        row(f"  {k}", lambda r, k=k: f"{r['write_kinds'].get(k, 0):.3f}")
    row("RSS MiB (mean / max in window)", lambda r: f"{r['rss_mean']:.0f} / {r['rss_max']:.0f}",
        f"<= {TARGET_RSS_MIB}", lambda r: r["rss_max"] <= TARGET_RSS_MIB)
    row("  peak RSS since start (VmHWM)", lambda r: f"{r['rss_hwm']:.0f}")

    def churn_text(r):
        if "churn_error" in r:
            return "not measured: " + r["churn_error"][:100]
        b, a = r["churn_before"], r["churn_after"]
        return (f"RSS {b['rss']:.0f} -> {a['rss']:.0f} MiB, run series {b['series']} -> "
                f"{a['series']}, remembered {a['remembered']}")
    row(f"{CHURN} runs created and deleted (background)", churn_text,
        "series back", lambda r: r["churn_after"]["series"] <= r["churn_before"]["series"])
    row("CPU % of one core", lambda r: f"{r['cpu_pct']:.1f}", f"<= {TARGET_CPU_PCT:.0f}",
        lambda r: r["cpu_pct"] <= TARGET_CPU_PCT)
    # Part of the work behind the CPU (the idle servers' snapshots are below): the count moves
    # with the code, its CPU also with the machine.
    row("  reconciles/s", lambda r: f"{r['reconciles_per_s']:.1f}")

    def lag_text(r):
        if not r["lags"] and not r["lag_missing"] and not r["generations"]:
            return "no generation started in the window"
        if not r["lags"]:
            return f"none measured ({r['lag_missing']} not shown)"
        text = (f"p50 {pct(r['lags'], 0.5):.2f} s, p95 {pct(r['lags'], 0.95):.2f} s, "
                f"max {max(r['lags']):.2f} s (n={len(r['lags'])})")
        return text + (f", {r['lag_missing']} not shown" if r["lag_missing"] else "")

    def lag_ok(r):
        if not r["lags"] and not r["lag_missing"] and not r["generations"]:
            raise KeyError("nothing to judge")  # no verdict from this column
        return bool(r["lags"]) and pct(r["lags"], 0.95) <= TARGET_LAG_S and not r["lag_missing"]

    row("status lag: generation in Redis -> status", lag_text, f"p95 <= {TARGET_LAG_S:.0f} s",
        lag_ok)

    def repair_text(r):
        if not r["repairs"]:
            return f"none counted ({r['repairs_missed']} missed)"
        text = (f"p50 {pct(r['repairs'], 0.5):.2f} s, p95 {pct(r['repairs'], 0.95):.2f} s "
                f"(n={len(r['repairs'])})")
        return text + (f", {r['repairs_missed']} not counted in 30 s" if r["repairs_missed"] else "")

    row("repair: pod deleted -> status.lostWorkers", repair_text,
        f"p95 <= {TARGET_REPAIR_P95_S:.0f} s",
        lambda r: bool(r["repairs"]) and not r["repairs_missed"]
        and pct(r["repairs"], 0.95) <= TARGET_REPAIR_P95_S)
    row("controller exits (before the window / in the repairs)",
        lambda r: f"{len(r['exits'])} / {len(r['exits_repairs'])}")

    if RECORDS > 0:
        section(f"generation records ({RUNS - LIVE} idle runs: {RECORDS} each in their shared "
                f"servers; {LIVE} live: one per generation)")

        def counts_text(counts):
            counts = {k: v for k, v in counts.items() if k != "sar"}
            return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"

        def held_text(r):
            h = r["records_held"]
            shown = h["shown"]
            return (f"{h['config_maps']['idle']} idle + {h['config_maps']['live']} live, "
                    f"{h['keys']} records, {h['bytes'] / 1024:.0f} KiB; status.inference of "
                    f"{len(shown.get('idle', []))} idle runs ({RECORDS} each: "
                    f"{sum(1 for g in shown.get('idle', []) if g == RECORDS)}) + "
                    f"{len(shown.get('live', []))} live")
        row("  records ConfigMaps after the start", held_text, "one per run",
            lambda r: r["records_held"]["config_maps"]["idle"] == RUNS - LIVE
            and r["records_held"]["config_maps"]["live"] == LIVE)
        row("  their API requests, start -> window", lambda r: counts_text(r["startup_records"]))
        row("  record reads (LRANGE) on the idle servers, start -> window",
            lambda r: f"{r['startup_idle_redis'].get('lrange', 0)} ({RUNS - LIVE} idle runs)",
            "one per run", lambda r: r["startup_idle_redis"].get("lrange", 0) <= RUNS - LIVE)
        row("  records ConfigMap requests in the window",
            lambda r: counts_text(r["record_requests"]))
        row("  record reads (LRANGE) in the window: idle servers / live (records pushed from 3 s before it)",
            lambda r: f"{r['idle_redis'].get('lrange', 0)} / {r['live_redis'].get('lrange', 0)} "
                      f"({r['records_pushed']})",
            "0 / <= pushed", lambda r: r["idle_redis"].get("lrange", 0) == 0
            and r["live_redis"].get("lrange", 0) <= r["records_pushed"])
        row("  Redis commands/s on the idle servers (snapshot scripts/s)",
            lambda r: f"{sum(r['idle_redis'].values()) / r['window']:.2f} "
                      f"({r['idle_redis'].get('evalsha', 0) / r['window']:.2f})")

    if PAGES > 0:
        section(f"pages: {PAGES} runs' pages fetched once a second through the API server "
                f"(current code only; the base has no dashboard)")

        def pages_text(r):
            p = r["pages"]
            return (f"{p['per_s']:.1f}/s of {p['runs']} runs ({p['live']} live), "
                    f"{p['bytes'] / 1024:.0f} KiB each on average, "
                    f"{p['sent'] / 1024:.1f} KiB as received (gzip)"
                    + (f", {p['failed']} failed" if p["failed"] else ""))
        row("  pages fetched", pages_text, f"{PAGES}/s",
            lambda r: r["pages"]["per_s"] >= 0.9 * r["pages"]["runs"] and not r["pages"]["failed"])

        def latency_text(r):
            lat, first = r["pages"]["latency"], r["pages"]["first"]
            return (f"p50 {pct(lat, 0.5) * 1000:.0f} ms, p95 {pct(lat, 0.95) * 1000:.0f} ms, "
                    f"max {max(lat) * 1000:.0f} ms (n={len(lat)}); a run's first view p50 "
                    f"{pct(first, 0.5) * 1000:.0f} ms, p95 {pct(first, 0.95) * 1000:.0f} ms")
        row("  page latency", latency_text)
        row("  extra CPU (points of a core) and RSS (MiB, mean) over the window without pages",
            lambda r: f"{r['cpu_pct'] - current['cpu_pct']:+.1f}, "
                      f"{r['rss_mean'] - current['rss_mean']:+.1f} "
                      f"({r['pages']['per_s'] and (r['cpu_pct'] - current['cpu_pct']) * 10 / r['pages']['per_s']:.2f} ms of CPU per page)")

        def sar_bound(r):
            return r["pages"]["runs"] * (r["window"] / 10 + 1)
        row("  SubjectAccessReviews (cached 10 s per user and run)",
            lambda r: f"{r['record_requests'].get('sar', 0)} ({r['record_requests'].get('sar', 0) / r['window']:.1f}/s)",
            "<= 1 per run per 10 s", lambda r: r["record_requests"].get("sar", 0) <= sar_bound(r))

        def gets(counts):
            return sum(v for k, v in counts.items() if k.startswith("get "))
        row("  records ConfigMap GETs: first views (warm-up) / in the window (pushed from 3 s before it)",
            lambda r: f"{gets(r['warmup_requests'])} ({r['pages']['runs']} runs, "
                      f"{r['warmup_pushed']} records pushed) / "
                      f"{gets(r['record_requests'])} ({r['records_pushed']})",
            "once per run and generation",
            lambda r: gets(r["warmup_requests"]) <= r["pages"]["runs"] + r["warmup_pushed"]
            and gets(r["record_requests"]) <= r["records_pushed"])
    return table(rows)


def main():
    scratch = Path(tempfile.mkdtemp(prefix="abc-bench-scale-"))
    children = Children(scratch, private_home=True)
    cluster = Cluster(children, scratch)
    stop = threading.Event()
    results, notes, failed = {}, [], False
    load_before = os.getloadavg()

    def stop_on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop_on_signal)
    base_label = f"before ({BASE})"
    pages_label = f"current, {PAGES} pages/s"
    labels = [base_label, "current"] + ([pages_label] if PAGES > 0 else [])
    # "none": the current code only (e.g. at sizes where the code before would take the
    # machine over); its column then shows "-".
    measured = [("current", CURRENT_BIN)] if BASE == "none" else None
    try:
        say(f"scratch folder (logs): {scratch}")
        say(f"{RUNS} runs x {PODS_PER_RUN} worker pods; {LIVE} live (pyABC master + "
            f"{LIVE_WORKERS} worker processes each); window {WINDOW_S} s")
        if not CURRENT_BIN.exists():
            raise BenchError(f"{CURRENT_BIN} not built (cargo build --profile dist --bin abc-operator)")
        if measured is None:
            measured = [(base_label, build_base()[1]), ("current", CURRENT_BIN)]
        cluster.start()
        api = cluster.api()
        cluster.kubectl("apply", "-f", ROOT / "crds" / "abcrun.yaml")
        cluster.kubectl("wait", "--for", "condition=established", "--timeout", "60s",
                        "crd/abcruns.abc-operator.dev")
        cluster.kubectl("create", "namespace", NAMESPACE)

        say(f"redis: {IDLE_SERVERS} idle servers shared by {RUNS - LIVE} runs, {LIVE} live ones")
        idle_servers = [RedisServer(children, f"idle{i}") for i in range(IDLE_SERVERS)]
        if RECORDS > 0:
            say(f"redis: {RECORDS} generation records in each idle server's "
                f"{KEYS['generations']} (the abc_operator module's code makes them)")
            for k, server in enumerate(idle_servers):
                server.client().rpush(KEYS["generations"],
                                      *(generation_record(t, 1000, k) for t in range(RECORDS)))
        live = {}
        for i in range(LIVE):
            name = f"live-{i:03d}"
            live[name] = LiveRun(name, RedisServer(children, name))
        secrets_yaml = []
        for i, s in enumerate(idle_servers):
            secrets_yaml.append((f"redis-idle-{i}", s.password))
        for name, run in live.items():
            secrets_yaml.append((f"redis-{name}", run.server.password))
        docs = [f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {n}}}\n"
                f"stringData: {{password: \"{p}\"}}\n" for n, p in secrets_yaml]
        cluster.kubectl("-n", NAMESPACE, "create", "-f", "-", input="---\n".join(docs))

        say(f"creating {RUNS} AbcRuns")
        docs = [run_yaml(name, "live", run.server, f"redis-{name}") for name, run in live.items()]
        for i in range(RUNS - LIVE):
            k = i % IDLE_SERVERS
            docs.append(run_yaml(f"idle-{i:04d}", "idle", idle_servers[k], f"redis-idle-{k}"))
        for j in range(0, len(docs), 200):
            cluster.kubectl("-n", NAMESPACE, "create", "-f", "-", input="---\n".join(docs[j:j + 200]))

        say(f"starting {LIVE} pyABC masters (population {POPULATION}, model {MODEL_SLEEP_S} s)")
        for name, run in live.items():
            results_dir = scratch / "masters" / name
            results_dir.mkdir(parents=True)
            run.master = children.spawn(
                [PYTHON, ROOT / "tests" / "fixtures" / "protocol_master.py"],
                results_dir / "master.log",
                env={**run.server.env(), "ABC_RESULTS_DIR": str(results_dir),
                     "PROTO_POPULATION": str(POPULATION), "PROTO_GENERATIONS": "100000"})
        kubelet = Kubelet(cluster, children, live, stop)
        watch = RunWatch(cluster, stop)
        poller = RedisPoller(live, stop)
        for t in (kubelet, watch, poller):
            t.start()

        pages = Pages(cluster) if PAGES > 0 else None
        for label, binary in measured:
            try:
                # The base has no dashboard: pages for the current code only.
                results[label], paged = measure(
                    label, binary, cluster, children, live, kubelet, watch, api, idle_servers,
                    pages if label == "current" else None)
                if paged is not None and "error" in paged:
                    notes.append(f"{pages_label}: {paged['error']}")
                elif paged is not None:
                    results[pages_label] = paged
                    for failure, n in paged["pages"]["failures"].items():
                        notes.append(f"{pages_label}: {n} page fetch(es) answered {failure}")
            except BenchError as err:
                failed = True
                notes.append(f"{label}: {err}")
                say(f"{label}: {err}")
            for exit_line in results.get(label, {}).get("exits", []):
                notes.append(f"{label}: the controller exited before the window: {exit_line}")
            for exit_line in results.get(label, {}).get("exits_repairs", []):
                notes.append(f"{label}: the controller exited in the repairs (started again): "
                             f"{exit_line}")
        if poller.error:
            notes.append(f"pushing the live runs' records: {poller.error}")
        dead = [n for n, r in live.items() if r.master.poll() is not None]
        if dead:
            notes.append(f"masters that exited early: {', '.join(dead)} (see their logs)")
    except BenchError as err:
        failed = True
        notes.append(f"error: {err}")
    except KeyboardInterrupt:
        failed = True
        notes.append("interrupted")
    except Exception as err:
        failed = True
        notes.append(f"error: {type(err).__name__}: {err}")
        raise
    finally:
        stop.set()
        say("stopping everything that was started")
        children.stop_all()
        if (failed or os.environ.get("BENCH_KEEP")) and cluster.up:
            try:  # the control plane's folder goes with it
                shutil.copy2(cluster.audit_log, scratch / "audit.log")
            except (OSError, AttributeError):
                pass
        cluster.stop()
        if children.procs:
            notes.append(f"{len(children.procs)} process(es) could not be stopped")
        load_after = os.getloadavg()
        print()
        print(f"abc-operator bench, section S{' (BENCH_QUICK)' if QUICK else ''}: "
              f"{RUNS} AbcRuns x {PODS_PER_RUN} kwok worker pods, {LIVE} live (pyABC master, "
              f"population {POPULATION}, {MODEL_SLEEP_S} s model, {LIVE_WORKERS} worker "
              f"processes), window {WINDOW_S} s; {os.cpu_count()} CPU(s), load average "
              f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; "
              f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
        print("API requests: the API server's audit log, the controller's own user; "
              "writes = create/update/patch/delete (a SubjectAccessReview is not one)")
        if PAGES > 0:
            print(f"pages: the current code has a second window of {WINDOW_S} s with {PAGES} "
                  f"runs' pages fetched once a second ({PAGE_THREADS} threads, the admin, "
                  f"through the API server) after {PAGE_WARMUP_S} s of it; its repairs and "
                  f"churn are in the \"current\" column")
        if results:
            print(report(results, labels))
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
