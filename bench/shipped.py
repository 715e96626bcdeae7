"""What the operator ships, as the bench reads it: the protocol's constants (key names, the
managed Redis' settings) from constants.json, which `cargo test --test crd_drift` keeps equal
to what the Rust code says (`UPDATE_CONSTANTS=1` rewrites it).

Imported by bench.py (run as a script, so this folder is on sys.path).
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONSTANTS = json.loads((HERE / "constants.json").read_text())
KEYS = CONSTANTS["keys"]
REDIS_SERVER = CONSTANTS["redis_server"]
