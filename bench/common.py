"""What the bench scripts share: progress lines, child processes, loopback redis-servers,
percentiles and the table.

Imported by `bench.py` and `scale.py` (both run as scripts, so this folder is on `sys.path`).
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

T0 = time.monotonic()


def say(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------
# Processes: each in its own process group (in this script's session), all stopped in the end.

GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


class Children:
    """Every process a bench starts. `private_home` gives them a HOME in the scratch folder
    (nothing of the user's configuration, e.g. kubectl's, leaks in)."""

    def __init__(self, scratch: Path, private_home=False):
        self.scratch = scratch
        self.procs = []
        # Threads of a bench (e.g. the scale bench's kubelet) start and kill processes too.
        self.lock = threading.Lock()
        self.env = dict(os.environ)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env["MPLCONFIGDIR"] = str(scratch / "mpl")
        (scratch / "mpl").mkdir(exist_ok=True)
        if private_home:
            self.env["HOME"] = str(scratch / "home")
            (scratch / "home").mkdir(exist_ok=True)
        for key in ("ABC_REDIS_HOST", "ABC_REDIS_PORT", "ABC_REDIS_PASSWORD", "ABC_RESULTS_DIR",
                    "KUBECONFIG"):
            self.env.pop(key, None)

    def spawn(self, argv, log: Path, env=None, cwd=None, stdout=None, stdin=None):
        full = dict(self.env)
        full.update(env or {})
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [str(a) for a in argv],
                env=full,
                cwd=cwd or self.scratch,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=stdout if stdout is not None else out,
                stderr=out,
                # Its own process group (stopped as a whole), but this script's session:
                # with sched_autogroup every session is scheduled as one unit, so every
                # variant gets the same share of a shared machine, like processes started
                # from one terminal.
                **GROUP,
            )
        with self.lock:
            self.procs.append(proc)
        return proc

    @staticmethod
    def signal(proc, sig):
        # Only while the leader is unreaped: then its pid (= the group id) cannot be reused.
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass

    def forget(self, proc):
        with self.lock:
            if proc in self.procs and proc.poll() is not None:
                self.procs.remove(proc)

    def kill(self, proc):
        self.signal(proc, signal.SIGKILL)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.forget(proc)

    def stop(self, proc, grace=10.0):
        self.signal(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill(proc)
        self.forget(proc)

    def stop_all(self):
        with self.lock:
            procs = list(self.procs)
        for proc in procs:
            self.signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.signal(proc, signal.SIGKILL)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        with self.lock:
            self.procs = [p for p in self.procs if p.poll() is None]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A password-protected redis-server on loopback, configured like the operator's own:
    the password in a 0600 config file (never on a command line), protected mode on,
    nothing persisted."""

    def __init__(self, children: Children, tag: str, extra_config: str = ""):
        self.children = children
        self.dir = Path(tempfile.mkdtemp(prefix=f"redis-{tag}-", dir=children.scratch))
        self.password = secrets.token_hex(16)
        self.host = "127.0.0.1"
        for _ in range(3):
            self.port = free_port()
            conf = self.dir / "redis.conf"
            log = self.dir / "redis.log"
            text = (
                f'bind 127.0.0.1\nport {self.port}\nprotected-mode yes\n'
                f'requirepass "{self.password}"\nsave ""\nappendonly no\n'
                f'dir "{self.dir}"\nlogfile "{log}"\ndaemonize no\n{extra_config}'
            )
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            self.proc = children.spawn(["redis-server", conf], self.dir / "stdout.log")
            if self._ready():
                return
        raise BenchError(f"redis-server did not start; see {log}")

    def _ready(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # e.g. the port was taken meanwhile: try another
            try:
                if self.client().ping():
                    return True
            except redis.RedisError:
                pass
            time.sleep(0.05)
        self.children.stop(self.proc)
        return False

    def client(self, **kwargs):
        return redis.StrictRedis(
            host=self.host, port=self.port, password=self.password, socket_timeout=30, **kwargs
        )

    def env(self):
        return {
            "ABC_REDIS_HOST": self.host,
            "ABC_REDIS_PORT": str(self.port),
            "ABC_REDIS_PASSWORD": self.password,
        }

    def stop(self):
        self.children.stop(self.proc)


# ---------------------------------------------------------------------------------------
# Figures and the table.


def pct(values, q):
    values = sorted(values)
    if not values:
        return None
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(ok):
    return "ok" if ok else "MISSED"
