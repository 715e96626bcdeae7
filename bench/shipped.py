"""What the operator ships, as the bench reads it: the worker entrypoint's Lua scripts, from the
files beside it (src/protocol/*.lua, which the entrypoint loads and the operator includes),
and the protocol's constants (key names, the managed Redis' settings) from constants.json,
which `cargo test --test crd_drift` keeps equal to what the Rust code says
(`UPDATE_CONSTANTS=1` rewrites it).

The one reader of both for the bench: imported by bench.py, swarm.py and scale.py (run as
scripts, so this folder is on sys.path). scale.py also takes generation records from here, made
by the `abc_operator` master module's own code (python/abc_operator/__init__.py).
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENTRYPOINT = HERE.parent / "src" / "protocol" / "abc_worker.py"
LUA_DIR = ENTRYPOINT.parent
MASTER_MODULE_DIR = HERE.parent / "python"
# A line of a Lua script that stands for the text of another file (the entrypoint's LUA_INCLUDE).
LUA_INCLUDE = "-- include: "
CONSTANTS = json.loads((HERE / "constants.json").read_text())
KEYS = CONSTANTS["keys"]
REDIS_SERVER = CONSTANTS["redis_server"]


def lua_script(name: str) -> str:
    """The text of the Lua script `name` as the entrypoint's `lua_script` reads it: a line
    `-- include: other.lua` stands for the text of that file."""
    lines = (LUA_DIR / name).read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(lua_script(line[len(LUA_INCLUDE):].strip()) if line.startswith(LUA_INCLUDE)
                   else line for line in lines)


def generation_record(t: int, population: int = 100, seed: int = 0) -> str:
    """The JSON text of generation `t`'s record, made by the `abc_operator` module's own code
    (its `_record` and `_encode`: what its master pushes to KEYS["generations"] once pyABC has
    stored a generation; GenerationRecord in src/protocol/inference.rs): a model of 2
    parameters, `population` weighted particles that narrow as `t` grows, 20-bin histograms.
    Needs numpy and pyabc (the project's .venv python)."""
    import numpy as np

    if str(MASTER_MODULE_DIR) not in sys.path:
        sys.path.append(str(MASTER_MODULE_DIR))  # the package's source, as the operator ships it
    import abc_operator

    rng = np.random.default_rng([seed, t])
    spread = 2.0 * 0.8 ** t
    values = np.column_stack([rng.normal(2.0, spread, population),
                              rng.normal(0.5, spread / 2, population)])
    weights = rng.uniform(0.5, 1.5, population)
    evaluations = int(population / max(0.05, 0.85 ** t))
    record = abc_operator._record(t, 4.0 * 0.7 ** t, evaluations, 2.0 + 0.1 * t, None, 1, {},
                                  {0: (weights, ["mu", "sigma"], values)})
    return abc_operator._encode(record)
