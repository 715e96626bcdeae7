"""abc_operator: two lines that make a pyABC master script survive its own restart.

abc-operator mounts this module next to the master (on a cluster: in the master's pod, on
PYTHONPATH; `abc-operator run`: on PYTHONPATH too); elsewhere (a laptop, a notebook, an image
of one's own) it is installed with `pip install ./python` from abc-operator's repository, the
same file either way: this `__init__.py` is the whole module the operator ships (as
`abc_operator.py`), so it imports nothing of its own package. Parts that only a machine
outside the cluster needs go into submodules of the installed package, imported when used.
A master script uses it like this:

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

A resume continues only the same analysis: the unfinished run must have the script's observed
data, models (by name), priors, population strategy, distance and epsilon, as pyABC stores
them in the database (its `to_json` of each; the priors, which pyABC does not store, in this
module's table `PRIORS_TABLE`, one row per run it starts). Otherwise the database is never
continued nor written to: `run` prints a `ResumeError` naming the database and each difference
("population strategy nr_particles: database 200, script 150") and ends the master with
`RESUME_REFUSED_EXIT_CODE`; so it does for a database that cannot be read or written. A retry
would meet the same database, so the master Job fails at once on this exit code instead of
retrying up to its `backoffLimit`. `run(..., new=True)` starts a new run in the same database
instead (pyABC gives it the next id; the unfinished one stays as it is): a one-off, since a
master started again with it would start anew again. A model's code is not compared, only
its name, nor a prior that is not a `pyabc.Distribution` and has no `repr` of its own.

A stop asked of the run (`spec.stop`, `kubectl abc stop`: the operator sets `STOP_KEY`) is
one more stopping criterion: the analysis ends once the generation being sampled is stored,
the run is marked done, and the script goes on as after any other criterion (its posterior
is what was stored).

Every start says how it went, in Redis (`START_KEY`) for the operator's status and Events and
`abc-operator run`'s output: resumed, started anew (and why: no database yet, or no unfinished
run in it), or refused (the `ResumeError`'s message, also the container's termination message).

What the run has inferred so far goes to Redis too: right after pyABC stores a generation,
`run` RPUSHes one JSON record of it to the list `GENERATIONS_KEY` (the contract is
src/protocol/inference.rs: `GENERATIONS`, `GenerationRecord`): t, epsilon, accepted,
evaluations, acceptance rate and ESS as pyABC computes and logs them (`t: N, eps: ...`,
`Accepted: a / n = rate, ESS: ...`; the ESS sums the weights in ascending order, so it may
differ from pyABC's in the last bits), pyABC's wall time of the generation, when it was stored,
and per parameter (the first `MAX_PARAMETERS`, by model, then by name) the weighted mean, sd,
`QUANTILES` and a `HISTOGRAM_BINS`-bin histogram over the generation's particles; with
several models the names are `m{i}.{name}` and the model probabilities are filled. Every
start rewrites the list from the database in one transaction (a new run empties it), so
after a lost Redis or a resume it again holds every stored generation once, oldest first.
A record computed from the database is identical, field for field, to the one pushed live
(both are computed from the same stored values, in an order that does not depend on how the
database returns them). A record that cannot be computed or pushed is a warning on stderr,
never a failure of the analysis; a lost Redis is what it is everywhere else in this module
(`REDIS_LOST_EXIT_CODE`), so that the restarted master rewrites the list complete.
"""

import datetime
import functools
import os
import sys

# The version of abc-operator this module ships with (Cargo.toml's `version`; a test keeps
# them equal): the operator's image and the installed package say which module they carry.
__version__ = "0.1.0"

__all__ = [
    "__version__",
    "REDIS_LOST_EXIT_CODE",
    "RESUME_REFUSED_EXIT_CODE",
    "ResumeError",
    "database_url",
    "generation_records",
    "run",
    "sampler",
    "sampler_class",
]

# The exit code of a master whose Redis went away mid-run (restarted, evicted): the master Job
# (and `abc-operator run`) start it again without counting a failure, and it resumes (the
# module leaves the run unfinished in the database, which pyABC marks done however it ends).
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
# Redis key the operator sets when the run is asked to stop (`spec.stop`, `kubectl abc stop`;
# src/protocol/keys.rs: STOP_REQUESTED): `run` ends the analysis once the generation being
# sampled is stored (pyABC then marks the run done, as after any other stopping criterion),
# and a master started while it is set samples nothing and exits 0.
STOP_KEY = "abc_operator:stop"
# Redis list of one JSON record per stored generation, oldest first (src/protocol/inference.rs:
# GENERATIONS, GenerationRecord), and its bounds (the same file's constants).
GENERATIONS_KEY = "abc_operator:generations"
MAX_PARAMETERS = 32
HISTOGRAM_BINS = 20
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
MAX_RECORD_BYTES = 64 * 1024
# The table this module adds to pyABC's database: the priors of each run it starts (pyABC stores
# none), as `_prior_descriptions` writes them, for the next resume to compare.
PRIORS_TABLE = "abc_operator_priors"
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


def __getattr__(name):
    """`abc_operator.connect(...)`: a master outside the cluster (a laptop, a notebook)
    connecting to an AbcRun's Redis. It lives in the installed package (it needs the
    `kubernetes` client) and is imported when first used, so that this module, shipped alone
    to the masters in the cluster, never imports it."""
    if name != "connect":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    try:
        return importlib.import_module(f"{__name__}.connect")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.connect":
            raise
        raise AttributeError(
            "abc_operator.connect is in the installed package (pip install "
            "'abc-operator[connect]'), not in the module the operator ships to its masters"
        ) from None


def database_url(db):
    """A SQLAlchemy URL for `db`: a URL as it is, a relative file name under `ABC_RESULTS_DIR`
    (the run's results folder; the working directory when unset)."""
    if "://" in db:
        return db
    results = os.environ.get("ABC_RESULTS_DIR", ".")
    os.makedirs(results, exist_ok=True)
    return "sqlite:///" + os.path.abspath(os.path.join(results, db))


def run(abc, db, observed, *, new=False, gt_par=None, meta_info=None, **run_kwargs):
    """Continues the unfinished run in `db` if it is the same analysis as `abc` (else refuses:
    `ResumeError`, exit `RESUME_REFUSED_EXIT_CODE`), or starts a new one with `observed`;
    then runs `abc` with pyABC's `run` arguments (`minimum_epsilon`, `max_nr_populations`,
    ...), counted for the whole run. Returns the History. A stop asked of the run ends it
    after the generation being sampled (see `STOP_KEY`).

    `new`: start a new run even if `db` holds an unfinished one (which stays as it is).
    `gt_par`, `meta_info`: pyABC's `ABCSMC.new` arguments, stored with a new run only (a
    resumed run keeps what it was started with)."""
    _wait_for_redis(abc)
    start = {"gt_par": gt_par, "meta_info": meta_info}
    try:
        if _stop_requested(abc):
            _say("the run was asked to stop: no generation is started")
            raise SystemExit(0)
        _stop_when_asked(abc)
        return _new_or_resume(abc, db, observed, new, start, run_kwargs)
    except ResumeError as err:
        _record_start(abc, "refused", str(err))
        _write_termination_message(f"ResumeError: {err}")
        print(f"ResumeError: {err}", file=sys.stderr, flush=True)
        raise SystemExit(RESUME_REFUSED_EXIT_CODE) from err
    except Exception as err:
        if not _is_connection_error(err):
            raise
        _reopen(abc)
        _say(
            f"lost the connection to Redis ({err}); exiting with {REDIS_LOST_EXIT_CODE} so "
            "that the master is started again and resumes from its results database"
        )
        raise SystemExit(REDIS_LOST_EXIT_CODE) from err


def _stop_requested(abc):
    redis = getattr(abc.sampler, "redis", None)
    return redis is not None and bool(redis.exists(STOP_KEY))


def _stop_when_asked(abc):
    """Adds the run's stop to pyABC's stopping criteria, which `ABCSMC.run` checks right after
    storing each generation."""
    criteria = abc.check_terminate

    def check_terminate(t, acceptance_rate):
        if criteria(t=t, acceptance_rate=acceptance_rate):
            return True
        if _stop_requested(abc):
            _say(f"stopping after generation {t}, as the run was asked to")
            return True
        return False

    abc.check_terminate = check_terminate


def _new_or_resume(abc, db, observed, new, start, run_kwargs):
    url = _using_database(db, "create the folder of", lambda: database_url(db))
    if new:
        unfinished, why_new = None, "asked for with new=True"
    else:
        unfinished, why_new = _unfinished_run(url)
    if unfinished is None:
        _forget_resumes(abc)
        _using_database(url, "start a new run in", lambda: abc.new(url, observed, **start))
        _using_database(url, "record the priors in", lambda: _store_priors(abc))
        _record_generations(abc, abc.history, stored=False)
        _say(f"new run {abc.history.id} in {url}: {why_new}")
        _record_start(abc, "new", f"started a new run in {url}: {why_new}")
        return abc.run(**run_kwargs)

    history = _using_database(
        url, f"load run {unfinished} from", lambda: abc.load(url, unfinished)
    )
    _check_same_analysis(url, history, abc, observed)
    _record_generations(abc, history, stored=True)
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


def _reopen(abc):
    """pyABC's `ABCSMC.run` marks its run done (its `end_time`) however it ends, also when a
    lost Redis ends it: the run is marked unfinished again, so that the master started again
    resumes it instead of starting a new one. A run that had ended anyway is marked done
    again by that resume (its generations are all there)."""
    history = getattr(abc, "history", None)
    if history is None or getattr(history, "id", None) is None:
        return
    try:
        from pyabc.storage.db_model import ABCSMC

        session, close = _session(history)
        try:
            session.query(ABCSMC).filter(ABCSMC.id == history.id).update(
                {ABCSMC.end_time: None}
            )
            session.commit()
        finally:
            close()
    except Exception as err:
        _warn(f"could not mark run {history.id} unfinished for its resume", err)


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


def _check_same_analysis(url, history, abc, observed):
    """Refuses to continue a run of another analysis than `abc` with `observed`, naming every
    difference; reads the database only."""
    differences = _using_database(
        url, f"read run {history.id} of", lambda: _analysis_differences(history, abc, observed)
    )
    if differences:
        raise ResumeError(
            f"{url} holds an unfinished run (id {history.id}) of another analysis: "
            + "; ".join(differences)
            + ". It is left as it is: use another database name, pass new=True to run() to "
            "start a new run in it, or change the script back to continue it"
        )


def _analysis_differences(history, abc, observed):
    """What differs between the stored run and the script's analysis, one phrase each (empty:
    the same analysis)."""
    from pyabc.storage.db_model import ABCSMC

    differences = []
    stored = history.observed_sum_stat()
    if observed is not None and (
        set(stored) != set(observed)
        or any(not _same(stored[key], observed[key]) for key in observed)
    ):
        differences.append(
            f"other observed data ({sorted(stored)} vs {sorted(observed)}, or other values)"
        )
    stored_models = history.model_names()
    script_models = [model.name for model in abc.models]
    if stored_models != script_models:
        differences.append(f"models: database {stored_models}, script {script_models}")
    session, close = _session(history)
    try:
        row = session.query(ABCSMC).filter(ABCSMC.id == history.id).one()
        configs = [
            ("population strategy", row.population_strategy, abc.population_size.to_json()),
            ("distance", row.distance_function, abc.distance_function.to_json()),
            ("epsilon", row.epsilon_function, abc.eps.to_json()),
        ]
        stored_priors = _stored_priors(session, history.id)
    finally:
        close()
    for label, stored_json, script_json in configs:
        differences.extend(_config_differences(label, stored_json, script_json))
    if stored_priors is not None:
        differences.extend(_prior_differences(stored_priors, _prior_descriptions(abc)))
    return differences


# Names users know for pyABC's config keys, where the key alone would not say it.
CONFIG_LABELS = {
    ("population strategy", "nr_particles"): "population size",
    ("population strategy", "name"): "population strategy",
    ("distance", "name"): "distance",
    ("epsilon", "name"): "epsilon",
}


def _config_differences(label, stored_json, script_json):
    """The differences of two of pyABC's `to_json` texts of one setting, key by key."""
    import json

    try:
        stored = json.loads(_without_addresses(stored_json))
        script = json.loads(_without_addresses(script_json))
    except (TypeError, ValueError):
        stored, script = stored_json, script_json
    if stored == script:
        return []
    if not (isinstance(stored, dict) and isinstance(script, dict)):
        return [f"{label}: database {stored}, script {script}"]
    missing = "(not set)"
    return [
        f"{CONFIG_LABELS.get((label, key), f'{label} {key}')}: database "
        f"{stored.get(key, missing)}, script {script.get(key, missing)}"
        for key in sorted(set(stored) | set(script))
        if stored.get(key, missing) != script.get(key, missing)
    ]


def _without_addresses(text):
    """A repr without the memory addresses in it (`<function f at 0x7f...>`), which differ
    from one process to the next for the same thing."""
    import re

    return re.sub(r" at 0x[0-9a-fA-F]+", "", text) if isinstance(text, str) else text


def _prior_descriptions(abc):
    """One description per model of its prior: for a `pyabc.Distribution` its parameters'
    random variables ({name: repr}), for another prior its repr if it has one of its own,
    else None (not comparable)."""
    import pyabc

    descriptions = []
    for prior in abc.parameter_priors:
        if isinstance(prior, pyabc.Distribution):
            descriptions.append(
                {str(name): _without_addresses(repr(rv)) for name, rv in prior.items()}
            )
        elif type(prior).__repr__ is not object.__repr__:
            descriptions.append(_without_addresses(repr(prior)))
        else:
            descriptions.append(None)
    return descriptions


def _prior_differences(stored, script):
    """The differences of the priors' descriptions (`_prior_descriptions`), parameter by
    parameter; a model's prior that either side cannot describe is not compared."""
    if len(stored) != len(script):
        return []  # other models: said by the models' difference
    missing = "(none)"
    differences = []
    for m, (before, now) in enumerate(zip(stored, script)):
        where = f"prior of model {m}" if len(script) > 1 else "prior"
        if before is None or now is None or before == now:
            continue
        if not (isinstance(before, dict) and isinstance(now, dict)):
            differences.append(f"{where}: database {before}, script {now}")
            continue
        differences.extend(
            f"{where} of {name}: database {before.get(name, missing)}, "
            f"script {now.get(name, missing)}"
            for name in sorted(set(before) | set(now))
            if before.get(name) != now.get(name)
        )
    return differences


@functools.cache  # one Table object (sqlalchemy is imported only when a run starts)
def _priors_table():
    import sqlalchemy as sa

    return sa.Table(
        PRIORS_TABLE,
        sa.MetaData(),
        sa.Column("abc_smc_id", sa.Integer, primary_key=True),
        sa.Column("priors", sa.Text, nullable=False),
        sa.Column("module_version", sa.Text),
    )


def _store_priors(abc):
    """Records the new run's priors (`_prior_descriptions`) in `PRIORS_TABLE`, created when
    missing, for the resumes to come."""
    import json

    history = abc.history
    table = _priors_table()
    session, close = _session(history)
    try:
        connection = session.connection()
        table.create(connection, checkfirst=True)
        connection.execute(table.delete().where(table.c.abc_smc_id == history.id))
        connection.execute(
            table.insert().values(
                abc_smc_id=history.id,
                priors=json.dumps(_prior_descriptions(abc)),
                module_version=__version__,
            )
        )
        session.commit()
    finally:
        close()


def _stored_priors(session, abc_smc_id):
    """The priors' descriptions stored for run `abc_smc_id`, or None: a run started without
    this module (or by a version before it recorded them) has none."""
    import json

    import sqlalchemy as sa

    connection = session.connection()
    if not sa.inspect(connection).has_table(PRIORS_TABLE):
        return None
    table = _priors_table()
    text = connection.execute(
        sa.select(table.c.priors).where(table.c.abc_smc_id == abc_smc_id)
    ).scalar()
    return None if text is None else json.loads(text)


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
                # The operator warns of a module of another version than its own (a master
                # outside the cluster brings the one installed there).
                "module_version": __version__,
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


def _record_generations(abc, history, stored):
    """Rewrites `GENERATIONS_KEY` from the database in one transaction (`stored`: the records
    of the generations already there; a new run: none) and records every generation that
    pyABC stores from now on. Nothing without a Redis sampler."""
    redis = getattr(abc.sampler, "redis", None)
    if redis is None:
        return
    texts = generation_records(history, warn=True) if stored else []
    try:
        pipe = redis.pipeline(transaction=True)
        pipe.delete(GENERATIONS_KEY)
        if texts:
            pipe.rpush(GENERATIONS_KEY, *texts)
        pipe.execute()
    except Exception as err:
        if _is_connection_error(err):
            raise
        _warn(f"could not rewrite {GENERATIONS_KEY}", err)
    _record_appended_populations(history, redis)


def generation_records(history, warn=False):
    """The records (JSON texts, oldest first) of every generation stored in `history`'s run:
    what `GENERATIONS_KEY` holds after a master's start. With `warn`, a generation whose
    record cannot be computed is left out with a warning instead of raising."""
    try:
        records = _stored_records(history)
    except Exception as err:
        if not warn:
            raise
        _warn(f"could not read the stored generations for {GENERATIONS_KEY}", err)
        return []
    texts = []
    for t, record in records:
        try:
            texts.append(_encode(record if record is not None else _stored_record(history, t)))
        except Exception as err:
            if not warn:
                raise
            _warn(f"could not record generation {t} from the database", err)
    return texts


def _record_appended_populations(history, redis):
    """Wraps the History's `append_population` (pyABC's ABCSMC.run calls it right after
    sampling each generation): once pyABC stored the generation, its record is RPUSHed."""
    store = history.append_population

    @functools.wraps(store)
    def append_population(
        t, current_epsilon, population, nr_simulations, model_names, wall_time=None
    ):
        store(t, current_epsilon, population, nr_simulations, model_names, wall_time=wall_time)
        try:
            text = _encode(
                _live_record(
                    history, t, current_epsilon, population, nr_simulations, model_names,
                    wall_time,
                )
            )
        except Exception as err:
            _warn(f"could not record generation {t}", err)
            return
        try:
            redis.rpush(GENERATIONS_KEY, text)
        except Exception as err:
            # A lost Redis ends the master as anywhere else in this module: started again, it
            # resumes and rewrites the list complete. Anything else costs only the record.
            if _is_connection_error(err):
                raise
            _warn(f"could not push the record of generation {t} to {GENERATIONS_KEY}", err)

    history.append_population = append_population


def _live_record(history, t, epsilon, population, nr_simulations, model_names, wall_time):
    """The record of a generation pyABC has just stored, from what it stored: the same
    values `_stored_record` reads back."""
    by_model = {
        int(m): _particle_columns(particles)
        for m, particles in population.get_particles_by_model().items()
    }
    probabilities = population.get_model_probabilities()["p"]
    return _record(
        t=t,
        epsilon=epsilon,
        evaluations=nr_simulations,
        wall_time=wall_time,
        end_time=_stored_end_time(history, t),
        n_models=len(model_names),
        model_probabilities={int(m): float(p) for m, p in probabilities.items()},
        by_model=by_model,
    )


def _particle_columns(particles):
    """(weights, names, values) of one model's particles: `values` holds a row per particle
    and a column per parameter name, names sorted, as `_columns` makes them of what pyABC
    stores. Quick when every particle has the same plain parameters (the usual case)."""
    import numpy as np

    weights = np.fromiter((p.weight for p in particles), float, len(particles))
    keys = tuple(particles[0].parameter) if particles else ()
    if all(tuple(p.parameter) == keys for p in particles):
        try:
            values = np.array(
                [tuple(p.parameter.values()) for p in particles], dtype=float
            ).reshape(len(particles), len(keys))
        except (TypeError, ValueError):  # a dict-valued parameter, a value that is no number
            pass
        else:
            order = sorted(range(len(keys)), key=keys.__getitem__)
            return weights, [keys[j] for j in order], values[:, order]
    return (weights, *_columns([dict(_flat_parameters(p.parameter)) for p in particles]))


def _columns(rows):
    """Names (sorted) and values (a row per particle, NaN where a particle lacks the name) of
    the particles' parameters `rows` (one dict name -> value each)."""
    import numpy as np

    names = sorted(set().union(*rows)) if rows else []
    nan = float("nan")
    values = np.array(
        [[row.get(name, nan) for name in names] for row in rows], dtype=float
    ).reshape(len(rows), len(names))
    return names, values


def _flat_parameters(parameter):
    """A particle's parameters as pyABC stores them: a dict-valued one as `key_subkey`."""
    for key, value in parameter.items():
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                yield f"{key}_{sub}", _value_or_nan(sub_value)
        else:
            yield key, _value_or_nan(value)


def _value_or_nan(value):
    """A parameter value as the database's Float column holds it (NULL read back as NaN)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _stored_records(history):
    """(t, record) of every stored generation, oldest first, from one pass over the run's
    particles in the order of their ids: pyABC stores a generation in one transaction, so its
    rows come together, and each generation's record is made once its rows have passed (one
    generation in memory at a time; SQLite builds its index on parameters.particle_id, which
    pyABC's schema lacks, once and not per generation). Rows that do not come together leave
    the generation's record None: `_stored_record` reads it alone."""
    import sqlalchemy as sa
    from pyabc.storage.db_model import Model, Parameter, Particle, Population

    session, close = _session(history)
    try:
        populations = (
            session.query(
                # labelled: a Row's `t` is its typed tuple
                Population.id, Population.t.label("generation"), Population.epsilon,
                Population.nr_samples,
                Population.wall_time, Population.population_end_time,
            )
            .filter(Population.abc_smc_id == history.id, Population.t >= 0)
            .order_by(Population.t)
            .all()
        )
        probabilities = {}
        for population, m, p in (
            session.query(Model.population_id, Model.m, Model.p_model)
            .join(Population, Model.population_id == Population.id)
            .filter(Population.abc_smc_id == history.id, Population.t >= 0)
        ):
            probabilities.setdefault(population, []).append((m, p))
        n_models = _model_count(session, history)
        rows = session.connection().execute(
            sa.select(
                Model.population_id, Particle.id, Model.m, Particle.w, Parameter.name,
                Parameter.value,
            )
            .select_from(Particle)
            .join(Model, Particle.model_id == Model.id)
            .join(Population, Model.population_id == Population.id)
            .outerjoin(Parameter, Parameter.particle_id == Particle.id)
            .where(Population.abc_smc_id == history.id, Population.t >= 0)
            .order_by(Particle.id)
        )
        by_id = {population.id: population for population in populations}
        records, apart = {}, set()
        current, particles = None, {}

        def close_population():
            if current is not None and current not in apart:
                records[current] = _stored_population_record(
                    by_id[current], particles, n_models, probabilities.get(current, [])
                )

        for population, particle, m, w, name, value in rows:
            if population != current:
                close_population()
                if population in records or population in apart:
                    apart.add(population)  # its rows did not come together
                    records.pop(population, None)
                current, particles = population, {}
            _, _, values = particles.setdefault(particle, (int(m), float(w), {}))
            if name is not None:
                values[name] = _value_or_nan(value)
        close_population()
    finally:
        close()
    return [(int(p.generation), records.get(p.id)) for p in populations]


def _stored_record(history, t):
    """The record of stored generation `t`, read from the database alone."""
    from pyabc.storage.db_model import Model, Parameter, Particle, Population

    session, close = _session(history)
    try:
        population = (
            session.query(
                # labelled: a Row's `t` is its typed tuple
                Population.id, Population.t.label("generation"), Population.epsilon,
                Population.nr_samples,
                Population.wall_time, Population.population_end_time,
            )
            .filter(Population.abc_smc_id == history.id, Population.t == t)
            .one()
        )
        models = (
            session.query(Model.m, Model.p_model)
            .filter(Model.population_id == population.id)
            .all()
        )
        n_models = _model_count(session, history)
        rows = (
            session.query(Particle.id, Model.m, Particle.w, Parameter.name, Parameter.value)
            .select_from(Particle)
            .join(Model, Particle.model_id == Model.id)
            .outerjoin(Parameter, Parameter.particle_id == Particle.id)
            .filter(Model.population_id == population.id)
            .order_by(Particle.id)
            .all()
        )
    finally:
        close()
    particles = {}
    for particle, m, w, name, value in rows:
        _, _, values = particles.setdefault(particle, (int(m), float(w), {}))
        if name is not None:
            values[name] = _value_or_nan(value)
    return _stored_population_record(population, particles, n_models, models)


def _model_count(session, history):
    """The run's number of models: each has a row in the pre-population (t = -1), by index."""
    import sqlalchemy as sa
    from pyabc.storage.db_model import Model, Population

    return (
        session.query(sa.func.count(sa.distinct(Model.m)))
        .join(Population, Model.population_id == Population.id)
        .filter(Population.abc_smc_id == history.id, Population.t == -1)
        .filter(Model.m.isnot(None))
        .scalar()
    )


def _stored_population_record(population, particles, n_models, models):
    """The record of a stored population (its row) from its particles (id -> (m, weight,
    {name: value})) and its models' (m, probability)."""
    import numpy as np

    grouped = {}
    for m, w, values in particles.values():
        weights, model_rows = grouped.setdefault(m, ([], []))
        weights.append(w)
        model_rows.append(values)
    by_model = {
        m: (np.asarray(weights, dtype=float), *_columns(model_rows))
        for m, (weights, model_rows) in grouped.items()
    }
    return _record(
        t=population.generation,
        epsilon=population.epsilon,
        evaluations=population.nr_samples,
        wall_time=population.wall_time,
        end_time=population.population_end_time,
        n_models=n_models,
        model_probabilities={int(m): float(p) for m, p in models if m in by_model},
        by_model=by_model,
    )


def _stored_end_time(history, t):
    """When pyABC stored generation t (its `population_end_time`), so that the live record
    and the one read back later say the same; now if it cannot be read."""
    from pyabc.storage.db_model import Population

    try:
        session, close = _session(history)
        try:
            return (
                session.query(Population.population_end_time)
                .filter(Population.abc_smc_id == history.id, Population.t == t)
                .scalar()
            )
        finally:
            close()
    except Exception:
        return None


def _session(history):
    """A session on the History's database and how to close it (the History's own while it
    holds one, as for an in-memory database)."""
    if history._session is not None:
        return history._session, lambda: None
    from sqlalchemy.orm import Session

    session = Session(bind=_engine(history.db, history.DB_TIMEOUT))
    return session, session.close


@functools.lru_cache(maxsize=4)
def _engine(url, timeout):
    """One engine per database for this module's reads, made once (pyABC makes one per call:
    milliseconds each time); it holds no connection between them (NullPool), so nothing stays
    open on the database."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(url, connect_args={"timeout": timeout}, poolclass=NullPool)


def _record(
    t, epsilon, evaluations, wall_time, end_time, n_models, model_probabilities, by_model
):
    """A GenerationRecord (src/protocol/inference.rs) as a dict. `by_model`: model index ->
    (the particles' weights as stored, parameter names sorted, values: a row per particle, a
    column per name). Every sum runs over values sorted canonically (ESS included), so the
    record does not depend on the order in which the particles come."""
    import numpy as np
    from pyabc.weighted_statistics import effective_sample_size

    accepted = sum(len(weights) for weights, _, _ in by_model.values())
    evaluations = int(evaluations)
    all_weights = np.sort(np.concatenate([w for w, _, _ in by_model.values()] or [[]]))
    several = n_models > 1
    columns = [
        (f"m{m}.{name}" if several else name, m, j)
        for m in sorted(by_model)
        for j, name in enumerate(by_model[m][1])
    ]
    summaries = []
    for label, m, j in columns[:MAX_PARAMETERS]:
        weights, _, values = by_model[m]
        summaries.append(_summary(label, values[:, j], weights))
    if end_time is None:
        end_time = datetime.datetime.now()
    if end_time.tzinfo is None:
        end_time = end_time.astimezone()  # pyABC stores the master's local time
    record = {
        "t": int(t),
        "epsilon": _finite(epsilon),
        "accepted": accepted,
        "evaluations": evaluations,
        "acceptance_rate": _finite(accepted / evaluations) if evaluations > 0 else None,
        "ess": _finite(effective_sample_size(all_weights)) if accepted else None,
        "wall_time_seconds": _finite(wall_time),
        "time": end_time.astimezone(datetime.timezone.utc).isoformat(),
        "parameters_total": len(columns),
        "parameters": summaries,
    }
    if several:
        record["model_probabilities"] = [
            float(model_probabilities.get(m, 0.0)) for m in range(n_models)
        ]
    return record


def _summary(name, values, weights):
    """Weighted mean, sd, QUANTILES (pyABC's weighted_quantile) and histogram of one
    parameter over the particles where it is finite."""
    import numpy as np

    finite = np.isfinite(values) & np.isfinite(weights)
    values, weights = values[finite], weights[finite]
    order = np.lexsort((weights, values))
    values, weights = values[order], weights[order]
    total = weights.sum()
    if values.size == 0 or not total > 0:
        return {
            "name": name, "mean": None, "sd": None, "quantiles": [None] * len(QUANTILES),
            "histogram": {"low": 0.0, "high": 0.0, "weights": [0.0] * HISTOGRAM_BINS},
        }
    weights = weights / total
    mean = np.sum(weights * values)
    sd = np.sqrt(np.sum(weights * (values - mean) ** 2))
    cumulative = np.cumsum(weights)
    quantiles = np.interp(QUANTILES, cumulative - 0.5 * weights, values)
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, weights=weights)
    return {
        "name": name,
        "mean": _finite(mean),
        "sd": _finite(sd),
        "quantiles": [_finite(q) for q in quantiles],
        "histogram": {
            "low": float(edges[0]) if np.isfinite(edges[0]) else 0.0,
            "high": float(edges[-1]) if np.isfinite(edges[-1]) else 0.0,
            "weights": [float(c) for c in counts],
        },
    }


def _finite(x):
    """A JSON number, or None for a missing or non-finite one (an infinite first epsilon)."""
    if x is None:
        return None
    x = float(x)
    return x if x == x and x not in (float("inf"), float("-inf")) else None


def _encode(record):
    """The record's JSON text, within MAX_RECORD_BYTES: summaries are left off from the end
    while it is longer (`parameters_total` still counts them all)."""
    import json

    while True:
        text = json.dumps(record, allow_nan=False, separators=(",", ":"))
        if len(text.encode()) <= MAX_RECORD_BYTES or not record["parameters"]:
            return text
        record = {**record, "parameters": record["parameters"][:-1]}


def _warn(what, err):
    """One warning line: the analysis goes on without the record."""
    _say(f"warning: {what}: {type(err).__name__}: {_first_line(err)}")


def _say(message):
    print(f"abc_operator: {message}", file=sys.stderr, flush=True)
