"""What the operator ships, as the bench reads it: the worker entrypoint's Lua scripts, from the
files beside it (src/protocol/*.lua, which the entrypoint loads and the operator includes),
and the protocol's constants (key names, the managed Redis' settings) from constants.json,
which `cargo test --test crd_drift` keeps equal to what the Rust code says
(`UPDATE_CONSTANTS=1` rewrites it).

The one reader of both for the bench: imported by bench.py and swarm.py (run as scripts, so
this folder is on sys.path).
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENTRYPOINT = HERE.parent / "src" / "protocol" / "abc_worker.py"
LUA_DIR = ENTRYPOINT.parent
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
