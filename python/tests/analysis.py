"""What the package's tests share: a small real pyABC analysis, a results database to compare
before and after, and a real redis-server."""

import contextlib
import hashlib
import io
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time

import numpy as np
import pyabc

OBSERVED = {"x": 1.0}
POPULATION_SIZE = 20

logging.getLogger("ABC").setLevel(logging.WARNING)


def model(parameter):
    return {"x": parameter["mu"] + 0.1 * np.random.normal()}


def distance(x, x0):
    return abs(x["x"] - x0["x"])


def other_model(parameter):
    return model(parameter)


def uniform_prior():
    return pyabc.Distribution(mu=pyabc.RV("uniform", -5, 10))


def analysis(
    population_size=POPULATION_SIZE,
    prior=None,
    distance_function=distance,
    eps=None,
    models=model,
    sampler=None,
):
    """The tests' ABCSMC; each argument one setting a resume compares."""
    return pyabc.ABCSMC(
        models,
        prior if prior is not None else uniform_prior(),
        distance_function,
        population_size=population_size,
        eps=eps,
        sampler=sampler if sampler is not None else pyabc.SingleCoreSampler(),
    )


class ResultsFolder:
    """A temporary `ABC_RESULTS_DIR` with one results database, `db` (a file name, as a
    master script gives it)."""

    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="abc-operator-test-")
        self.path = os.path.join(self._dir.name, "results.db")
        self.db = "results.db"
        self._env = os.environ.get("ABC_RESULTS_DIR")
        os.environ["ABC_RESULTS_DIR"] = self._dir.name

    def close(self):
        if self._env is None:
            os.environ.pop("ABC_RESULTS_DIR", None)
        else:
            os.environ["ABC_RESULTS_DIR"] = self._env
        self._dir.cleanup()

    def interrupt(self):
        """Leaves the newest run unfinished, as a master killed after storing its last
        generation leaves it (pyABC sets `end_time` only when `run` returns)."""
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            db.execute("UPDATE abc_smc SET end_time = NULL WHERE id = (SELECT max(id) FROM abc_smc)")
            db.commit()

    def runs(self):
        """(id, finished, json_parameters) of every run, by id."""
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            return [
                (run_id, end is not None, meta)
                for run_id, end, meta in db.execute(
                    "SELECT id, end_time, json_parameters FROM abc_smc ORDER BY id"
                )
            ]

    def populations(self, run_id):
        """(t, particles) of each stored generation of run `run_id`."""
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            return db.execute(
                "SELECT populations.t, count(particles.id) FROM populations "
                "JOIN models ON models.population_id = populations.id "
                "JOIN particles ON particles.model_id = models.id "
                "WHERE populations.abc_smc_id = ? AND populations.t >= 0 "
                "GROUP BY populations.t ORDER BY populations.t",
                (run_id,),
            ).fetchall()

    def state(self):
        """What must not change when a start is refused: every table's rows and the file."""
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            tables = [
                name
                for (name,) in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                )
            ]
            rows = {
                table: db.execute(f'SELECT * FROM "{table}"').fetchall() for table in tables
            }
        with open(self.path, "rb") as file:
            digest = hashlib.sha256(file.read()).hexdigest()
        return rows, digest


def refused(testcase, start):
    """Runs `start` (a call of `abc_operator.run`), which must refuse: returns what it
    printed on stderr after asserting it exited with 65."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), testcase.assertRaises(SystemExit) as exit:
        start()
    testcase.assertEqual(exit.exception.code, 65, err.getvalue())
    return err.getvalue()


class RedisServer:
    """A password-protected redis-server on a free loopback port, stopped by `close`."""

    PASSWORD = "test-password"

    def __init__(self):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server on PATH (scripts/deps.sh installs it)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._dir = tempfile.TemporaryDirectory(prefix="abc-operator-redis-")
        self._process = subprocess.Popen(
            [
                binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--requirepass", self.PASSWORD, "--save", "", "--appendonly", "no",
                "--dir", self._dir.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        self.client = redis.Redis(port=self.port, password=self.PASSWORD)
        while True:
            try:
                self.client.ping()
                break
            except redis.exceptions.ConnectionError:
                if self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}")
                time.sleep(0.05)

    def environment(self):
        """The variables the operator gives a master for this Redis."""
        return {
            "ABC_REDIS_HOST": "127.0.0.1",
            "ABC_REDIS_PORT": str(self.port),
            "ABC_REDIS_PASSWORD": self.PASSWORD,
        }

    def close(self):
        self.client.close()
        self._process.terminate()
        self._process.wait()
        self._dir.cleanup()
