"""abc_operator: two lines that make a pyABC master script survive its own restart.

abc-operator mounts this module next to the master (on a cluster: in the master's pod, on
PYTHONPATH; `abc-operator run`: on PYTHONPATH too). A master script uses it like this:

    import abc_operator
    sampler = abc_operator.sampler()                  # Redis from the run's environment
    abc = pyabc.ABCSMC(model, prior, distance, sampler=sampler)
    history = abc_operator.run(abc, "model.db", observed, max_nr_populations=6)

`run` is "new or resume": when the results database holds an unfinished run (a master that was
killed, lost its node or its Redis), it continues that run from its last stored generation;
otherwise it starts a new one. Either way the run ends as an unbroken one would: the same total
number of generations (pyABC's own `run` counts `max_nr_populations` from where it starts) and
the same stopping criteria. pyABC stores each generation in one transaction, so a generation
that was being sampled when the master died is simply sampled again; stored ones never are.

A database that holds a run of other observed data is never continued nor written to: `run`
prints a `ResumeError` naming the database and the difference and ends the master with
`RESUME_REFUSED_EXIT_CODE`; so it does for a database that cannot be read or written. A retry
would meet the same database, so the master Job fails at once on this exit code instead of
retrying up to its `backoffLimit`.

Every start says how it went, in Redis (`START_KEY`) for the operator's status and Events and
`abc-operator run`'s output: resumed, started anew (and why: no database yet, or no unfinished
run in it), or refused (the `ResumeError`'s message, also the container's termination message).
"""

import datetime
import functools
import os
import sys

__all__ = [
    "REDIS_LOST_EXIT_CODE",
    "RESUME_REFUSED_EXIT_CODE",
    "ResumeError",
    "database_url",
    "run",
    "sampler",
    "sampler_class",
]

# The exit code of a master whose Redis went away mid-run (restarted, evicted): the master Job
# (and `abc-operator run`) start it again without counting a failure, and it resumes.
REDIS_LOST_EXIT_CODE = 75
# The exit code of a master whose results database cannot be continued (sysexits' EX_DATAERR):
# the master Job fails at once (its pod failure policy), as no retry can succeed.
RESUME_REFUSED_EXIT_CODE = 65
# How long a starting master waits for its Redis before it gives up (a Redis being rescheduled).
REDIS_WAIT_SECONDS = 300

# Redis key the operator and `abc-operator run` read to learn that a master resumed (a hash:
# `from_generation`, `at`); outside pyABC's own keys (src/protocol/keys.rs: RESUMED).
RESUME_KEY = "abc_operator:resumed"
# Redis key of how the last master start went (a hash: `outcome` resumed|new|refused, `cause`,
# `at`); src/protocol/keys.rs: MASTER_START.
START_KEY = "abc_operator:master_start"
# Redis key naming the analysis whose master waits only for the evaluations that can change
# its sample, not for all of them (pyABC's wait_for_all_samples=False, the default): there the
# worker whose result completes a generation may also take the other workers out of it, whose
# running evaluations cannot matter, so the master need not wait for them (the entrypoint's
# RESULTS_LUA; src/protocol/keys.rs: EARLY_RELEASE). A master that waits for all samples, or
# that uses pyABC's sampler class directly, gets pyABC's behaviour exactly.
EARLY_RELEASE_KEY = "abc_operator:early_release"
# Where the kubelet reads a container's termination message (the pod's default
# terminationMessagePath); written only where the kubelet mounted it.
TERMINATION_LOG = "/dev/termination-log"


class ResumeError(RuntimeError):
    """The results database cannot be continued; nothing in it was changed."""


def sampler(kind="dynamic", **kwargs):
    """pyABC's Redis sampler for the run's Redis (`ABC_REDIS_HOST`, `ABC_REDIS_PORT`,
    `ABC_REDIS_PASSWORD`). `kind`: "dynamic" (RedisEvalParallelSampler), "look-ahead" (the
    same with look_ahead=True) or "static" (RedisStaticSampler). Other keyword arguments go to
    the sampler unchanged (e.g. batch_size, wait_for_all_samples)."""
    connection = {
        "host": os.environ.get("ABC_REDIS_HOST", "localhost"),
        "port": int(os.environ.get("ABC_REDIS_PORT", "6379")),
        "password": os.environ.get("ABC_REDIS_PASSWORD") or None,
    }
    connection.update(kwargs)
    if kind == "look-ahead":
        connection.setdefault("look_ahead", True)
    return sampler_class(kind)(**connection)


def sampler_class(kind="dynamic"):
    """The class `sampler` makes of `kind`: pyABC's, and for the dynamic kinds one that tells
    abc-operator's workers when the master waits only for the evaluations that can change
    its sample (see `EARLY_RELEASE_KEY`)."""
    if kind in ("dynamic", "look-ahead"):
        return _early_release_sampler()
    if kind == "static":
        from pyabc.sampler import RedisStaticSampler

        return RedisStaticSampler
    raise ValueError(f"sampler kind {kind!r}: use 'dynamic', 'look-ahead' or 'static'")


@functools.cache  # one class (pyabc is imported only when a sampler is made)
def _early_release_sampler():
    from pyabc.sampler import RedisEvalParallelSampler

    class EarlyReleaseSampler(RedisEvalParallelSampler):
        """RedisEvalParallelSampler that records, per analysis, whether workers may leave a
        generation early (`EARLY_RELEASE_KEY`)."""

        def set_analysis_id(self, analysis_id):
            super().set_analysis_id(analysis_id)
            if self.wait_for_all_samples:
                # pyABC's documented promise: the master waits for every evaluation started
                self.redis.delete(EARLY_RELEASE_KEY)
            else:
                self.redis.set(EARLY_RELEASE_KEY, analysis_id)

    EarlyReleaseSampler.__name__ = EarlyReleaseSampler.__qualname__ = "RedisEvalParallelSampler"
    return EarlyReleaseSampler



def database_url(db):
    """A SQLAlchemy URL for `db`: a URL as it is, a relative file name under `ABC_RESULTS_DIR`
    (the run's results folder; the working directory when unset)."""
    if "://" in db:
        return db
    results = os.environ.get("ABC_RESULTS_DIR", ".")
    os.makedirs(results, exist_ok=True)
    return "sqlite:///" + os.path.abspath(os.path.join(results, db))


def run(abc, db, observed, **run_kwargs):
    """Continues the unfinished run in `db`, or starts a new one with `observed`; then runs
    `abc` with pyABC's `run` arguments (`minimum_epsilon`, `max_nr_populations`, ...), counted
    for the whole run. Returns the History."""
    _wait_for_redis(abc)
    try:
        return _new_or_resume(abc, db, observed, run_kwargs)
    except ResumeError as err:
        _record_start(abc, "refused", str(err))
        _write_termination_message(f"ResumeError: {err}")
        print(f"ResumeError: {err}", file=sys.stderr, flush=True)
        raise SystemExit(RESUME_REFUSED_EXIT_CODE) from err
    except Exception as err:
        if not _is_connection_error(err):
            raise
        _say(
            f"lost the connection to Redis ({err}); exiting with {REDIS_LOST_EXIT_CODE} so "
            "that the master is started again and resumes from its results database"
        )
        raise SystemExit(REDIS_LOST_EXIT_CODE) from err


def _new_or_resume(abc, db, observed, run_kwargs):
    url = _using_database(db, "create the folder of", lambda: database_url(db))
    unfinished, why_new = _unfinished_run(url)
    if unfinished is None:
        _forget_resumes(abc)
        _using_database(url, "start a new run in", lambda: abc.new(url, observed))
        _say(f"new run {abc.history.id} in {url}: {why_new}")
        _record_start(abc, "new", f"started a new run in {url}: {why_new}")
        return abc.run(**run_kwargs)

    history = _using_database(
        url, f"load run {unfinished} from", lambda: abc.load(url, unfinished)
    )
    _check_same_problem(url, history, observed)
    done = history.max_t + 1
    wanted = run_kwargs.get("max_nr_populations")
    finished = wanted is not None and done >= wanted
    minimum_epsilon = run_kwargs.get("minimum_epsilon")
    if done > 0 and minimum_epsilon is not None:
        last_epsilon = history.get_all_populations().query("t >= 0").epsilon.iloc[-1]
        finished = finished or last_epsilon <= minimum_epsilon
    if finished:
        # Killed after storing its last generation but before marking the run done.
        _using_database(
            url, "mark done", lambda: history.done(end_time=datetime.datetime.now())
        )
        _say(f"run {unfinished} in {url} already has its {done} generations; marked done")
        _record_start(abc, "resumed", f"run {unfinished} in {url} was complete; marked done")
        return history
    if wanted is not None:
        run_kwargs = {**run_kwargs, "max_nr_populations": wanted - done}
    _say(f"resuming run {unfinished} in {url} from generation {done} ({done} stored)")
    _record_resume(abc, done)
    _record_start(abc, "resumed", f"continued run {unfinished} in {url} from generation {done}")
    return abc.run(**run_kwargs)


def _using_database(url, what, action):
    """Runs `action` on the results database; a database that cannot be read or written (a
    read-only claim, a full disk) is a ResumeError naming it, raised before anything is
    sampled."""
    try:
        return action()
    except ResumeError:
        raise
    except Exception as err:
        if _is_connection_error(err):
            raise
        raise ResumeError(
            f"cannot {what} the results database {url}: {type(err).__name__}: {_first_line(err)}"
        ) from err


def _first_line(err):
    """SQLAlchemy's messages go on with the SQL and a link; the first line says what failed."""
    return (str(err).splitlines() or [""])[0]


def _is_connection_error(err):
    import redis

    return isinstance(err, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


def _wait_for_redis(abc):
    """Waits until the sampler's Redis answers (it may be restarting), at most
    REDIS_WAIT_SECONDS; then fails as a master error (counted against the Job's retries), so
    that a Redis that never comes back does not restart masters for ever."""
    import time

    client = getattr(abc.sampler, "redis", None)
    if client is None:
        return
    deadline = time.monotonic() + REDIS_WAIT_SECONDS
    while True:
        try:
            client.ping()
            return
        except Exception as err:
            if not _is_connection_error(err):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Redis did not answer within {REDIS_WAIT_SECONDS} s: {err}"
                ) from None
            _say(f"waiting for Redis: {err}")
            time.sleep(2)


def _unfinished_run(url):
    """The id of the newest run in the database if it never finished, else None and why a new
    run starts."""
    from pyabc import History

    if url.startswith("sqlite:///") and not os.path.exists(url[len("sqlite:///") :]):
        return None, "no results database there yet"
    try:
        runs = History(url).all_runs()
    except Exception as err:  # an empty file, or not a pyABC database
        raise ResumeError(f"{url} is not a pyABC results database: {_first_line(err)}") from err
    if not runs:
        return None, "the results database holds no run"
    newest = max(runs, key=lambda r: r.id)
    if newest.end_time is not None:
        return None, f"the newest run in the results database (id {newest.id}) has finished"
    return newest.id, None


def _check_same_problem(url, history, observed):
    """Refuses to continue a run of other observed data (another model's database)."""
    stored = history.observed_sum_stat()
    if observed is None:
        return
    if set(stored) != set(observed) or any(
        not _same(stored[key], observed[key]) for key in observed
    ):
        raise ResumeError(
            f"{url} holds an unfinished run (id {history.id}) of other observed data "
            f"({sorted(stored)} vs {sorted(observed)}, or other values); it is left as it is: "
            "use another database name, or delete the file to start anew"
        )


def _same(a, b):
    import numpy as np

    try:
        return bool(np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float)))
    except (TypeError, ValueError):
        return a == b


def _record_resume(abc, generation):
    """Tells the operator (or `abc-operator run`) that this master resumed; best effort."""
    redis = getattr(abc.sampler, "redis", None)
    if redis is None:
        return
    try:
        redis.hset(
            RESUME_KEY,
            mapping={
                "from_generation": generation,
                "at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            },
        )
    except Exception as err:  # the run goes on without the record
        _say(f"could not record the resume in Redis: {err}")


def _record_start(abc, outcome, cause):
    """Tells the operator (or `abc-operator run`) how this master started; best effort."""
    redis = getattr(abc.sampler, "redis", None)
    if redis is None:
        return
    try:
        redis.hset(
            START_KEY,
            mapping={
                "outcome": outcome,
                "cause": cause,
                "at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            },
        )
    except Exception as err:  # the run goes on without the record
        _say(f"could not record the master's start in Redis: {err}")


def _write_termination_message(message):
    """The cause as the container's termination message, which the operator puts into the
    run's Failed condition (only in a container whose kubelet provides the file)."""
    if not os.path.exists(TERMINATION_LOG):
        return
    try:
        with open(TERMINATION_LOG, "w") as out:
            out.write(message[:4000])
    except OSError:
        pass


def _forget_resumes(abc):
    """A new run starts with no resume on record (a shared Redis may hold an older run's)."""
    redis = getattr(abc.sampler, "redis", None)
    if redis is not None:
        try:
            redis.delete(RESUME_KEY)
        except Exception:  # the record only informs the status
            pass


def _say(message):
    print(f"abc_operator: {message}", file=sys.stderr, flush=True)
