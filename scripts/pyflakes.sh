#!/usr/bin/env bash
# pyflakes over every tracked Python file: the worker entrypoint and the master module ship in
# every run, and nothing else would catch an undefined name or a stray import in them before
# a real run does. pyflakes is pinned and installed once, outside the checkout (needs PyPI the
# first time).
set -euo pipefail
cd "$(dirname "$0")/.."
version=4.1.0
dir=${XDG_CACHE_HOME:-$HOME/.cache}/abc-operator/pyflakes-$version
if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --no-deps --target "$dir" "pyflakes==$version" >&2
    touch "$dir/.complete"
fi
git ls-files -z '*.py' | xargs -0 env PYTHONPATH="$dir" python3 -m pyflakes
