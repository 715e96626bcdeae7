"""The classic pyABC Gaussian example, sampled through Redis by abc-operator's workers.

Model: y ~ N(mu, 0.5^2); prior: mu ~ U(-5, 5); observed: y = 2.0; distance: |y - y0|.
The posterior of mu is close to N(2.0, 0.5^2) once epsilon is small.

`GAUSSIAN_MODEL_SECONDS` (in the workers' environment; default 0) makes each simulation take
that long: enough to watch a generation, scale the workers, or kill one in the middle of it.

`GAUSSIAN_GENERATIONS` (default 5) and `GAUSSIAN_MINIMUM_EPSILON` (default 0.1) are its
stopping criteria, whichever comes first.

The master (this script) uses the `abc_operator` module that `abc-operator run` (locally) and
the operator (on a cluster) put on its PYTHONPATH: the sampler finds Redis in the environment
(ABC_REDIS_HOST, ABC_REDIS_PORT, ABC_REDIS_PASSWORD) and gaussian.db goes to ABC_RESULTS_DIR.
A master that is killed and started again continues its run from the last stored generation.
Nothing else is written, so it runs with a read-only root filesystem.
"""

import os
import sys
import tempfile
import time

# pyabc imports matplotlib, which wants a writable config dir; on a read-only root
# filesystem HOME may not be writable, so point it at a temp dir (or the results dir).
results_dir = os.environ.get("ABC_RESULTS_DIR", ".")
if "MPLCONFIGDIR" not in os.environ:
    try:
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="mpl-")
    except OSError:
        os.environ["MPLCONFIGDIR"] = os.path.join(results_dir, ".matplotlib")

import abc_operator  # noqa: E402
import numpy as np  # noqa: E402
import pyabc  # noqa: E402

OBSERVED = {"y": 2.0}
POPULATION_SIZE = 200
MINIMUM_EPSILON = float(os.environ.get("GAUSSIAN_MINIMUM_EPSILON", "0.1"))
MAX_GENERATIONS = int(os.environ.get("GAUSSIAN_GENERATIONS", "5"))


def model(parameter):
    # Read where the model runs (a worker), so that the workers' environment sets it.
    seconds = float(os.environ.get("GAUSSIAN_MODEL_SECONDS", "0"))
    if seconds > 0:
        time.sleep(seconds)
    return {"y": parameter["mu"] + 0.5 * np.random.randn()}


def distance(x, x0):
    return abs(x["y"] - x0["y"])


def main():
    prior = pyabc.Distribution(mu=pyabc.RV("uniform", -5, 10))
    sampler = abc_operator.sampler()
    abc = pyabc.ABCSMC(model, prior, distance, population_size=POPULATION_SIZE, sampler=sampler)
    history = abc_operator.run(
        abc,
        "gaussian.db",
        OBSERVED,
        minimum_epsilon=MINIMUM_EPSILON,
        max_nr_populations=MAX_GENERATIONS,
    )

    df, w = history.get_distribution(m=0, t=history.max_t)
    mu = df["mu"].to_numpy()
    mean = float(np.sum(w * mu))
    sd = float(np.sqrt(np.sum(w * (mu - mean) ** 2)))
    print("posterior summary")
    print(f"  mu: weighted mean {mean:.3f}, weighted sd {sd:.3f} (observed y = {OBSERVED['y']})")
    print(f"  generations: {history.n_populations}")
    print(f"  total evaluations: {history.total_nr_simulations}")
    populations = history.get_all_populations()
    for row in populations[populations.t >= 0].itertuples():
        print(
            f"  generation {row.t}: {row.particles} particles, {row.samples} evaluations,"
            f" epsilon {row.epsilon:.3f}"
        )
    print(f"  database: {abc_operator.database_url('gaussian.db')}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
