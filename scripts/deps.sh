#!/usr/bin/env bash
# Installs what abc-operator's demo and tests need on a fresh machine, and nothing twice:
#   - redis-server (Debian package),
#   - a Python venv with the pinned pyabc (python/requirements.txt) and the pinned Kubernetes
#     client of `abc_operator.connect` (python/requirements-connect.txt), cached outside the
#     checkout keyed by both files' hash and linked as .venv, and the pinned wheels that build the
#     `abc_operator` package (python/requirements-build.txt), linked as .python-build,
#   - shellcheck (Debian package; only when asked: `make check` lints with it),
#   - chromium (Debian package; only when asked: `make test` loads each run's page in it,
#     headless, as a person's browser would render it).
# Usage: scripts/deps.sh [redis] [python] [shellcheck] [chromium]   (no argument: redis and python)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
want=${*:-redis python}

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "scripts/deps.sh: $* missing; install it with: sudo apt-get install -y $*" >&2
    exit 1
  fi
  echo "installing Debian packages: $*" >&2
  # update once per machine: a fresh one has no package lists
  if [ ! -f /var/lib/apt/lists/lock ] ||
    [ -z "$(find /var/lib/apt/lists/ -mindepth 1 -maxdepth 1 ! -name '.*' ! -name '*lock*' -print -quit 2>/dev/null)" ]; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}

case " $want " in *" redis "*)
  command -v redis-server >/dev/null || apt_install redis-server
  # The package starts a system-wide redis on 6379; abc-operator never uses it.
  # The autoscaling test calls the external metrics API directly, as an outsider would.
  command -v curl >/dev/null || apt_install curl
  ;;
esac

case " $want " in *" python "*)
  py=${ABC_BASE_PYTHON:-python3}
  command -v "$py" >/dev/null || apt_install python3 python3-venv
  "$py" -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
  req=$root/python/requirements.txt
  connect_req=$root/python/requirements-connect.txt
  key=$(cat "$req" "$connect_req" <("$py" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/abc-operator/venv-$key
  if [ ! -x "$cache/bin/python" ] || [ ! -f "$cache/.complete" ]; then
    echo "creating the Python venv with pinned pyabc (first time: about 2 minutes)" >&2
    rm -rf "$cache"
    "$py" -m venv "$cache"
    "$cache/bin/pip" install -q --disable-pip-version-check -r "$req" -r "$connect_req"
    touch "$cache/.complete"
  fi
  ln -sfn "$cache" "$root/.venv"
  # What the package test builds `pip install ./python` with, offline (python/pyproject.toml's
  # build-system), downloaded once and linked as .python-build
  build_req=$root/python/requirements-build.txt
  build_key=$(sha256sum <"$build_req" | cut -c1-16)
  build_cache=${XDG_CACHE_HOME:-$HOME/.cache}/abc-operator/python-build-$build_key
  if [ ! -f "$build_cache/.complete" ]; then
    rm -rf "$build_cache"
    "$cache/bin/pip" download -q --disable-pip-version-check --no-deps -d "$build_cache" -r "$build_req"
    touch "$build_cache/.complete"
  fi
  ln -sfn "$build_cache" "$root/.python-build"
  ;;
esac

case " $want " in *" shellcheck "*)
  command -v shellcheck >/dev/null || apt_install shellcheck
  ;;
esac

case " $want " in *" chromium "*)
  # Debian's build: no browser download of its own (the tests never fetch one)
  command -v chromium >/dev/null || apt_install chromium
  ;;
esac
