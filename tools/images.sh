#!/usr/bin/env bash
# Builds the container images a real kubelet node of the test cluster runs, without any image
# registry: Debian packages (debootstrap) and PyPI wheels only, packed with umoci and written
# as docker archives (for `ctr images import`) into a cache outside the checkout, keyed by a
# hash of every input, so fresh clones on the same machine reuse them.
#
#   name              image ref                    from
#   pause             abc-pause:3.10               kubernetes' build/pause (pause.c, its Dockerfile)
#   redis             abc-redis:7.0                images/redis/Dockerfile
#   example-gaussian  abc-example-gaussian:0.1.0   examples/gaussian/Dockerfile
#   operator          abc-operator:0.1.0           Dockerfile (a glibc build of the host, see below)
#
# The Dockerfiles are not copied by hand: this script reads them (FROM, ARG, ENV, RUN, COPY,
# WORKDIR, USER, EXPOSE, CMD, ENTRYPOINT, LABEL of the last stage) and executes them itself,
# so what users build with docker and what the tests run cannot drift apart:
#   - FROM debian:bookworm-slim is `debootstrap --variant=minbase bookworm` with the slimming
#     of Debian's official images (no docs, man pages or locales, apt caches cleaned), made
#     once and cached; FROM scratch is an empty root.
#   - RUN runs in a chroot of the image's root (in private mount and pid namespaces, so no
#     mount outlives the step). pip in a chroot has neither the host's pip settings nor its CA
#     bundle (some machines reach the package index only through a CA the host alone holds),
#     so the wheels are downloaded on the host into a wheelhouse keyed by the requirements'
#     hash and handed to RUN's pip read-only, through PIP_NO_INDEX/PIP_FIND_LINKS; nothing of
#     it stays in the image.
#   - COPY/ADD take files from the build context (the repository); `COPY --from=STAGE` of a
#     multi-stage build is mapped to what this script built on the host instead (the operator).
#   - The config (user, env, workdir, entrypoint, cmd, ports, labels) is set with umoci.
# The operator's Dockerfile builds a static musl binary; that target cannot be installed here,
# so its test image carries the host's glibc build (ABC_OPERATOR_BIN, default
# target/dist/abc-operator, the shipped build), stripped, with exactly the libraries `ldd` lists at the same
# paths (glibc >= 2.34 has the files/dns NSS modules built in: name resolution needs no more).
#
# Usage: tools/images.sh [--print] [NAME ...]     (no NAME: all four)
#   builds what is missing and prints one line per image: IMAGE_REF<TAB>ARCHIVE_PATH
#   --print: the same lines without building (the operator binary must exist: it is hashed)
# Environment: ABC_OPERATOR_BIN, ABC_DEBIAN_MIRROR (debootstrap's default mirror otherwise),
#   ABC_DEBIAN_SECURITY_MIRROR (default: the mirror's URL + "-security", as Debian's own),
#   ABC_IMAGES_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/abc-operator/images).
# Old archives are not removed; `rm -rf` the cache folder to reclaim the space.
# Building needs root (debootstrap, chroot, files owned by other users); --print does not.
set -euo pipefail
# Failures inside $(...) stop the script too (bash does not do so by default).
shopt -s inherit_errexit
# A failure that die (status 3) or step (status 4) did not explain says where it happened.
trap 'rc=$?; [ "$BASH_SUBSHELL" != 0 ] || [ "$rc" = 3 ] || [ "$rc" = 4 ] ||
  echo "tools/images.sh: failed (status $rc) at line $LINENO: $BASH_COMMAND" >&2' ERR

root=$(cd "$(dirname "$0")/.." && pwd)
self=$root/tools/images.sh
cache=${ABC_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/abc-operator/images}
suite=bookworm
mirror=${ABC_DEBIAN_MIRROR:-}
security_mirror=${ABC_DEBIAN_SECURITY_MIRROR:-}

all_names=(pause redis example-gaussian operator)
declare -A ref=(
  [pause]=abc-pause:3.10
  [redis]=abc-redis:7.0
  [example-gaussian]=abc-example-gaussian:0.1.0
  [operator]=abc-operator:0.1.0
)

log() { echo "tools/images.sh: $*" >&2; }
die() { log "$*"; exit 3; }

print=0
names=()
for a in "$@"; do
  case $a in
    --print) print=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
    -*) die "unknown option $a" ;;
    *) [ -n "${ref[$a]:-}" ] || die "unknown image $a (known: ${all_names[*]})"; names+=("$a") ;;
  esac
done
[ ${#names[@]} -gt 0 ] || names=("${all_names[@]}")

# --- installing what is missing (as scripts/deps.sh does) -------------------------------------
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    die "$* missing; install it with: sudo apt-get install -y $*"
  fi
  log "installing Debian packages: $*"
  # update once per machine: a fresh one has no package lists
  if [ -z "$(find /var/lib/apt/lists/ -mindepth 1 -maxdepth 1 ! -name '.*' ! -name '*lock*' ! -name '*partial*' \
    -print -quit 2>/dev/null)" ]; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}
need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null || apt_install "$2"
}

# --- the Dockerfile reader ---------------------------------------------------------------------
# Prints the last stage of a Dockerfile as calls of the df_* functions below (shell-quoted),
# with Docker's variable substitution done for every instruction but RUN (whose shell does it).
# Anything it does not understand is an error, so a Dockerfile cannot silently say more than
# the images built here do.
parse_dockerfile() { # parse_dockerfile FILE [NAME=VALUE build args ...]
  python3 - "$@" <<'PY'
import json, re, shlex, sys

path, build_args = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

def fail(msg):
    sys.exit(f"{path}: {msg}")

# Logical lines: comments dropped (also inside continuations), backslash-newline joined.
lines, cur = [], None
for raw in open(path, encoding="utf-8"):
    s = raw.rstrip("\n")
    if s.strip().startswith("#"):
        continue
    if cur is None:
        if not s.strip():
            continue
        cur = ""
    if s.endswith("\\"):
        cur += s[:-1]
        continue
    lines.append(cur + s)
    cur = None
if cur is not None:
    lines.append(cur)

VAR = re.compile(r"\\\$|\$\{([A-Za-z_]\w*)(?:(:[-+])([^}]*))?\}|\$([A-Za-z_]\w*)")

def subst(s, env):
    """Docker's substitution: $V, ${V}, ${V:-word}, ${V:+word}; \\$ is a literal $."""
    def rep(m):
        if m.group(0) == "\\$":
            return "$"
        val = env.get(m.group(1) or m.group(4)) or ""
        op, word = m.group(2), m.group(3) or ""
        if op == ":-":
            return val or word
        if op == ":+":
            return word if val else ""
        return val
    return VAR.sub(rep, s)

def pairs(args, env, legacy_ok):
    toks = shlex.split(args)
    if legacy_ok and toks and "=" not in toks[0]:
        k, _, v = args.strip().partition(" ")
        return [(k, subst(v.strip(), env))]
    out = []
    for t in toks:
        if "=" not in t:
            fail(f"expected KEY=VALUE, got {t!r}")
        k, v = t.split("=", 1)
        out.append((k, subst(v, env)))
    return out

def exec_form(args):
    a = args.strip()
    if a.startswith("["):
        try:
            v = json.loads(a)
        except ValueError:
            v = None
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return v
    return ["/bin/sh", "-c", a]

# Split into stages; ARGs before the first FROM are global (usable in FROM only).
global_args, stages = {}, []
for line in lines:
    instr, _, args = line.strip().partition(" ")
    instr = instr.upper()
    if instr == "FROM":
        stages.append([])
    if not stages:
        if instr != "ARG":
            fail(f"{instr} before FROM")
        for k, v in [(a.split("=", 1) + [None])[:2] for a in shlex.split(args)]:
            global_args[k] = build_args.get(k, v)
        continue
    stages[-1].append((instr, args.strip()))
if not stages:
    fail("no FROM")

out = []
def emit(fn, *a):
    out.append(" ".join([fn] + [shlex.quote(x) for x in a]))

env, args_env, workdir, cmd_from_base = {}, {}, "/", False
for instr, args in stages[-1]:
    vars_ = {**args_env, **env}
    if instr == "FROM":
        toks = args.split()
        image = subst(toks[0], {k: v for k, v in global_args.items() if v is not None})
        emit("df_from", image)
        if image.startswith("debian:"):
            env["PATH"] = DEBIAN_PATH          # what Debian's official images set
            emit("df_env", "PATH", DEBIAN_PATH)
            emit("df_cmd", "bash")            # debian images' CMD
            cmd_from_base = True
        elif image != "scratch":
            fail(f"base image {image} not supported (debian:*, scratch)")
    elif instr == "ARG":
        for t in shlex.split(args):
            k, _, v = t.partition("=")
            if k in build_args:
                v = build_args[k]
            elif "=" not in t:
                v = global_args.get(k)
                if v is None:
                    continue
            else:
                v = subst(v, vars_)
            args_env[k] = v
            emit("df_arg", k, v)
    elif instr == "ENV":
        for k, v in pairs(args, vars_, True):
            env[k] = v
            emit("df_env", k, v)
    elif instr == "LABEL":
        for k, v in pairs(args, vars_, False):
            emit("df_label", k, v)
    elif instr == "RUN":
        if args.startswith(("[", "--", "<<")):
            fail("only shell-form RUN without flags is supported")
        emit("df_run", args)
    elif instr in ("COPY", "ADD"):
        toks = [subst(t, vars_) for t in shlex.split(args)]
        frm = ""
        while toks and toks[0].startswith("--"):
            flag = toks.pop(0)
            if flag.startswith("--from="):
                frm = flag[len("--from="):]
            else:
                fail(f"{instr} {flag} not supported")
        if len(toks) != 2:
            fail(f"{instr} with one source and one destination only: {args}")
        src, dst = toks
        if instr == "ADD" and (re.match(r"^[a-z]+://", src) or re.search(r"\.(tar|tgz|tar\.\w+)$", src)):
            fail("ADD of URLs or archives not supported")
        if not dst.startswith("/"):
            dst = workdir.rstrip("/") + "/" + dst
        emit("df_copy", frm, src, dst)
    elif instr == "WORKDIR":
        w = subst(args, vars_)
        workdir = w if w.startswith("/") else workdir.rstrip("/") + "/" + w
        emit("df_workdir", workdir)
    elif instr == "USER":
        emit("df_user", subst(args, vars_))
    elif instr == "EXPOSE":
        for p in subst(args, vars_).split():
            emit("df_expose", p if "/" in p else p + "/tcp")
    elif instr in ("CMD", "ENTRYPOINT"):
        emit("df_" + instr.lower(), *exec_form(args))
        # As in Docker: ENTRYPOINT resets a CMD inherited from the base image.
        if instr == "ENTRYPOINT" and cmd_from_base:
            emit("df_cmd")
        cmd_from_base = False if instr == "CMD" else cmd_from_base
    elif instr == "STOPSIGNAL":
        emit("df_stopsignal", subst(args, vars_))
    else:
        fail(f"{instr} not supported by tools/images.sh")
print("\n".join(out))
PY
}

# The df_* functions execute the parsed Dockerfile against $rootfs: RUN and COPY change it,
# the rest is collected as the image config (and ENV, ARG, USER, WORKDIR apply to later RUNs).
df_reset() {
  df_user='' df_workdir='' df_stopsignal=''
  df_env=() df_args=() df_labels=() df_ports=() df_cmd=() df_entrypoint=()
}
df_from() {
  if [ "$1" != scratch ]; then
    step copy-base "copy the cached Debian root" cp -a "$base_rootfs/." "$rootfs/"
  fi
}
df_setvar() { # df_setvar ARRAY NAME VALUE: NAME=VALUE in an array of assignments, replacing
  local -n arr=$1
  local i
  for i in "${!arr[@]}"; do
    if [ "${arr[$i]%%=*}" = "$2" ]; then arr[i]="$2=$3"; return; fi
  done
  arr+=("$2=$3")
}
df_arg() { df_setvar df_args "$1" "$2"; }
df_env() { df_setvar df_env "$1" "$2"; }
df_label() { df_labels+=("$1=$2"); }
df_workdir() {
  df_workdir=$1
  # Docker creates a missing WORKDIR (owned by root).
  mkdir -p "$rootfs$1"
}
df_user() { df_user=$1; }
df_expose() { df_ports+=("$1"); }
df_cmd() { df_cmd=("$@"); }
df_entrypoint() { df_entrypoint=("$@"); }
df_stopsignal() { df_stopsignal=$1; }
df_copy() { # df_copy FROM_STAGE SRC DST
  local frm=$1 src=$2 dst=$3 file
  if [ -n "$frm" ]; then
    file=$(copy_from "$frm" "$src") || die "$dockerfile: COPY --from=$frm $src: not built by tools/images.sh"
  else
    file=$context/$src
    [ -e "$file" ] || die "$dockerfile: COPY source $src missing in $context"
  fi
  case $dst in */) dst=$dst$(basename "$src") ;; esac
  mkdir -p "$rootfs$(dirname "$dst")"
  # Docker's COPY: owned by root, mode bits kept.
  cp -a --no-preserve=ownership "$file" "$rootfs$dst"
  chown -R 0:0 "$rootfs$dst"
}
df_run() {
  run_count=$((run_count + 1))
  local what=$1
  [ ${#what} -le 70 ] || what="${what:0:67}..."
  step "run-$run_count" "RUN $what" in_root "$1"
}

# Runs a RUN command in the chroot as Docker would: /bin/sh -c, the image's ENV and the ARGs
# as environment, the current USER and WORKDIR, umask 022. Private mount and pid namespaces:
# /proc, the host's resolv.conf (apt) and the wheelhouse are mounted only for the command and
# vanish with it, also when it fails.
in_root() {
  local userspec=0:0 u g
  if [ -n "$df_user" ]; then
    u=${df_user%%:*} g=${df_user#*:}
    [ "$g" != "$df_user" ] || g=$u
    case $u$g in *[!0-9]*) die "$dockerfile: RUN after a non-numeric USER is not supported" ;; esac
    userspec=$u:$g
  fi
  local -a envs=("${df_args[@]}" "${df_env[@]}" "${build_env[@]}")
  [ -e "$rootfs/etc/resolv.conf" ] || : >"$rootfs/etc/resolv.conf"
  [ -z "$wheelhouse" ] || mkdir -p "$rootfs/wheelhouse"
  local rc=0
  # shellcheck disable=SC2016 # the script's $1.. are the inner sh's arguments, expanded there
  unshare --mount --pid --fork --mount-proc="$rootfs/proc" \
    /bin/sh -c '
      set -e
      r=$1 wh=$2 userspec=$3 wd=$4 cmd=$5; shift 5
      mount --bind /etc/resolv.conf "$r/etc/resolv.conf"
      if [ -d "$r/dev/pts" ]; then mount -t devpts -o newinstance,ptmxmode=0666 devpts "$r/dev/pts"; fi
      [ -z "$wh" ] || mount --bind -o ro "$wh" "$r/wheelhouse"
      umask 022
      exec chroot --userspec="$userspec" --groups="" "$r" /usr/bin/env -i "$@" \
        /bin/sh -c "cd \"\$0\" && exec /bin/sh -c \"\$1\"" "$wd" "$cmd"
    ' sh "$rootfs" "$wheelhouse" "$userspec" "${df_workdir:-/}" "$1" "${envs[@]}" </dev/null || rc=$?
  [ -z "$wheelhouse" ] || rmdir "$rootfs/wheelhouse"
  return "$rc"
}

# --- steps, logs, hashes ---------------------------------------------------------------------
# step NAME DESCRIPTION COMMAND...: runs COMMAND with its output in a log; a failure names the
# step, prints the log's path and tail, and stops.
step() {
  local name=$1 desc=$2 t=$SECONDS
  shift 2
  local logf=$logdir/$name.log
  mkdir -p "$logdir"
  log "[$image] $desc"
  # In the background and waited for: inside `if` or `||` bash would ignore set -e in the step.
  local rc=0
  ("$@") >"$logf" 2>&1 &
  wait $! || rc=$?
  if [ "$rc" != 0 ]; then
    log "[$image] step '$name' ($desc) failed; its log is $logf:"
    tail -n 25 "$logf" >&2
    exit 4
  fi
  [ $((SECONDS - t)) -lt 5 ] || log "[$image]   ... $((SECONDS - t)) s"
}

sha() { sha256sum | cut -c1-16; }

# --- the Debian base (FROM debian:bookworm-slim) -----------------------------------------------
# debootstrap's minbase is what Debian's official images are made from; the settings below are
# the ones those images add (docs, man pages and locales not installed, apt caches removed after
# every install, no service starts), so the Dockerfiles' RUN lines behave as on debian:*-slim.
make_base() { # make_base DIR
  local dir=$1
  debootstrap --variant=minbase "$suite" "$dir" ${mirror:+"$mirror"}
  # The host's resolver and name were copied in; the runtime provides its own.
  : >"$dir/etc/resolv.conf"
  chmod 0644 "$dir/etc/resolv.conf"
  rm -f "$dir/etc/hostname" "$dir/var/log/bootstrap.log"
  # Security and point-release updates, as in Debian's images. Debian serves security updates
  # beside the archive (URL + "-security"); a mirror elsewhere is ABC_DEBIAN_SECURITY_MIRROR.
  local m
  m=$(awk '$1 == "deb" { print $2; exit }' "$dir/etc/apt/sources.list")
  printf 'deb %s %s-updates main\ndeb %s %s-security main\n' \
    "$m" "$suite" "${security_mirror:-$m-security}" "$suite" >>"$dir/etc/apt/sources.list"
  cat >"$dir/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
  cat >"$dir/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$dir/etc/apt/apt.conf.d/docker-no-languages"
  # Package scripts must not start services in a build root.
  printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
  chmod 0755 "$dir/usr/sbin/policy-rc.d"
  # What debootstrap installed before the excludes existed, and its downloads.
  find "$dir/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$dir/usr/share/man/"* "$dir/usr/share/info/"* "$dir/usr/share/locale/"* \
    "$dir/var/cache/apt/archives/"*.deb "$dir/var/lib/apt/lists/"*
  # Pending security updates, like a freshly published debian image.
  local rootfs=$dir
  base_run 'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get -y upgrade && rm -rf /var/lib/apt/lists/*'
}
# base_run COMMAND: in_root as root with a plain environment, outside any Dockerfile.
base_run() {
  local wheelhouse='' df_user='' df_workdir=/ dockerfile=base
  local build_env=() df_args=() df_env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
  in_root "$1"
}
base_key=$({ declare -f make_base base_run in_root; echo "$suite $mirror $security_mirror"; uname -m; } | sha)
base_dir=$cache/base-$base_key
base_rootfs=$base_dir/rootfs

ensure_base() {
  [ -f "$base_dir/.complete" ] && return 0
  need debootstrap debootstrap
  rm -rf "$base_dir"
  mkdir -p "$base_dir"
  local logdir=$cache/logs/base-$base_key image=base
  step debootstrap "debootstrap --variant=minbase $suite (first time only: 1-7 minutes, as fast as the mirror)" \
    make_base "$base_rootfs"
  touch "$base_dir/.complete"
}

# Debian's CA bundle (the ca-certificates package), for the operator image: the Dockerfile
# copies it from its Debian build stage. Made once from a throwaway copy of the base.
ensure_ca_bundle() {
  [ -f "$base_dir/ca-certificates.crt" ] && return 0
  ensure_base
  local image=ca-bundle logdir=$cache/logs/ca-bundle-$base_key
  local rootfs=$work/ca-rootfs
  mkdir -p "$rootfs"
  step copy-base "copy the cached Debian root" cp -a "$base_rootfs/." "$rootfs/"
  step ca-certificates "apt-get install ca-certificates (about 30 s)" base_run \
    'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates'
  cp "$rootfs/etc/ssl/certs/ca-certificates.crt" "$base_dir/ca-certificates.crt.tmp"
  mv "$base_dir/ca-certificates.crt.tmp" "$base_dir/ca-certificates.crt"
  rm -rf "$rootfs"
}

# --- the wheelhouse (pip on the host, cp311 wheels for Debian bookworm's python3) ---------------
wheel_req=$root/python/requirements.txt
# Debian bookworm's python3 (checked after the example's build).
image_python=3.11.2

host_pip() {
  local venv
  venv=$(readlink -f "$root/.venv" 2>/dev/null || true)
  if [ -z "$venv" ] || [ ! -f "$venv/.complete" ]; then
    "$root/scripts/deps.sh" python
    venv=$(readlink -f "$root/.venv")
  fi
  # The wheels must fit the image's python3: Debian bookworm's is 3.11.
  local v
  v=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$v" = 3.11 ] || die "the host's venv has Python $v; the wheelhouse for Debian $suite's python3 needs 3.11"
  echo "$venv/bin/pip"
}
make_wheelhouse() { # make_wheelhouse PIP DIR
  local pip=$1 dir=$2 missing
  # pip wheel downloads the wheels and builds one for any requirement published as sdist only.
  "$pip" wheel --disable-pip-version-check --no-cache-dir -r "$wheel_req" -w "$dir"
  # pip resolved for the host's interpreter; the image's may need more: markers such as
  # python_full_version < "3.11.3" (redis-py's async-timeout) hold for Debian's 3.11.2 only.
  # Add what the wheels require under the image's interpreter until nothing is missing.
  while missing=$(wheel_missing "${pip%/pip}/python" "$dir") && [ -n "$missing" ]; do
    echo "required by the image's Python $image_python: $missing"
    # shellcheck disable=SC2086 # one requirement per line, no spaces in them
    "$pip" wheel --disable-pip-version-check --no-cache-dir -w "$dir" $missing
  done
}
# wheel_missing PYTHON DIR: the requirements of the wheels in DIR, evaluated for the image's
# Python, that no wheel in DIR satisfies (one per line).
wheel_missing() {
  "$1" - "$2" "$image_python" <<'PY'
import glob, os, sys, zipfile
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

wheel_dir, full = sys.argv[1], sys.argv[2]
env = {**default_environment(), "python_full_version": full,
       "python_version": ".".join(full.split(".")[:2]), "implementation_version": full}
have = {}
for w in glob.glob(os.path.join(wheel_dir, "*.whl")):
    name, version, _, _ = parse_wheel_filename(os.path.basename(w))
    have[name] = (version, w)
missing = set()
for version, w in have.values():
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode("utf-8", "replace").splitlines()
    for line in lines:
        if not line:
            break
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker and not req.marker.evaluate({**env, "extra": ""}):
            continue
        got = have.get(canonicalize_name(req.name))
        if got is None or not req.specifier.contains(got[0], prereleases=True):
            missing.add(f"{req.name}{req.specifier}")
print("\n".join(sorted(missing)))
PY
}
wheel_key=$( (cat "$wheel_req"; echo "$image_python"; declare -f make_wheelhouse wheel_missing) | sha)
wheel_dir=$cache/wheelhouse-$wheel_key
ensure_wheelhouse() {
  [ -f "$wheel_dir/.complete" ] && return 0
  local pip image=wheelhouse logdir=$cache/logs/wheelhouse-$wheel_key
  pip=$(host_pip)
  rm -rf "$wheel_dir"
  step pip-wheel "pip wheel -r python/requirements.txt on the host (about 1-2 minutes)" \
    make_wheelhouse "$pip" "$wheel_dir"
  touch "$wheel_dir/.complete"
}

# --- per image: context, build args, inputs ------------------------------------------------------
arch=$(uname -m)
case $arch in x86_64) goarch=amd64 ;; aarch64) goarch=arm64 ;; *) goarch=$arch ;; esac

pause_dir() {
  local d
  d=$(cd "$root/tools/k8s" && go list -mod=readonly -m -f '{{.Dir}}' k8s.io/kubernetes)
  if [ -z "$d" ]; then
    (cd "$root/tools/k8s" && go mod download k8s.io/kubernetes)
    d=$(cd "$root/tools/k8s" && go list -mod=readonly -m -f '{{.Dir}}' k8s.io/kubernetes)
  fi
  echo "$d/build/pause"
}

operator_bin() {
  local b=${ABC_OPERATOR_BIN:-$root/target/dist/abc-operator}
  [ -x "$b" ] || die "no operator binary at $b: build it with 'cargo build --profile dist --bin abc-operator' (or 'make images'), or set ABC_OPERATOR_BIN"
  echo "$b"
}
# The shared libraries the binary loads, as ldd resolves them on this host.
operator_libs() {
  local out
  out=$(ldd "$1") || die "ldd $1 failed"
  if grep -q 'not found' <<<"$out"; then die "ldd $1: $out"; fi
  awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' <<<"$out" | sort -u
}

# copy_from STAGE PATH: what the host provides for `COPY --from=STAGE PATH` (operator only).
copy_from() {
  [ "$image" = operator ] && [ "$1" = build ] || return 1
  case $2 in
    /abc-operator) echo "$work/abc-operator" ;;
    /etc/ssl/certs/ca-certificates.crt) echo "$base_dir/ca-certificates.crt" ;;
    *) return 1 ;;
  esac
}

# Sets dockerfile, context, build_args and extra (a text of the image's further inputs).
image_setup() {
  build_args=() wheelhouse='' build_env=() extra=
  case $image in
    pause)
      local d
      d=$(pause_dir)
      dockerfile=$d/Dockerfile context=$work/pause-context
      # kubernetes' Makefile builds linux images with BASE=scratch.
      build_args=(BASE=scratch "ARCH=$goarch")
      # sed, not head: head exits early and the writer's SIGPIPE would fail the pipeline.
      extra=$(cat "$d/linux/pause.c"; gcc --version | sed -n 1p; ldd --version | sed -n 1p)
      ;;
    redis)
      dockerfile=$root/images/redis/Dockerfile context=$root
      ;;
    example-gaussian)
      dockerfile=$root/examples/gaussian/Dockerfile context=$root
      extra=$(cat "$wheel_req")
      ;;
    operator)
      dockerfile=$root/Dockerfile context=$root
      local b
      b=$(operator_bin)
      # The binary, its libraries and the CA bundle (from the Debian base).
      extra=$(sha256sum "$b" | cut -d' ' -f1; operator_libs "$b" | xargs sha256sum; echo "base $base_key")
      ;;
  esac
}

# The archive of $image: its hash covers this script, the Dockerfile, every COPY source, the
# Debian base's key, the build args and the image's extra inputs.
archive_of() {
  local image=$1 dockerfile context build_args wheelhouse build_env extra key parsed
  local work=${work:-/nonexistent}
  image_setup
  parsed=$(parse_dockerfile "$dockerfile" "${build_args[@]}")
  # Context files of COPY (not --from): hashed by name and content.
  local srcs=()
  while IFS= read -r line; do
    [ "${line%% *}" = df_copy ] || continue
    eval "set -- ${line#df_copy }"
    [ -n "$1" ] || srcs+=("$2")
  done <<<"$parsed"
  key=$(
    {
      cat "$self" "$dockerfile"
      echo "$parsed"
      printf '%s\n' "${build_args[@]}"
      case $parsed in *"df_from debian:"*) echo "base $base_key" ;; esac
      for s in "${srcs[@]}"; do
        [ "$image" = pause ] || { echo "$s"; (cd "$context" && find "$s" -type f -print0 | sort -z | xargs -0 cat); }
      done
      echo "$extra"
    } | sha
  )
  echo "$cache/$image-$key.tar"
}

# --- building one image ------------------------------------------------------------------------
umoci_config() { # umoci_config LAYOUT:TAG: the collected config onto the image
  local a=(--image "$1" --os linux --architecture "$goarch" --author abc-operator/tools/images.sh)
  local x
  [ -z "$df_user" ] || a+=(--config.user "$df_user")
  [ -z "$df_workdir" ] || a+=(--config.workingdir "$df_workdir")
  [ -z "$df_stopsignal" ] || a+=(--config.stopsignal "$df_stopsignal")
  for x in "${df_env[@]}"; do a+=(--config.env "$x"); done
  for x in "${df_labels[@]}"; do a+=(--config.label "$x"); done
  for x in "${df_ports[@]}"; do a+=(--config.exposedports "$x"); done
  for x in "${df_entrypoint[@]}"; do a+=(--config.entrypoint "$x"); done
  for x in "${df_cmd[@]}"; do a+=(--config.cmd "$x"); done
  umoci config "${a[@]}"
}

# What Docker leaves out of an image layer (device nodes: the runtime provides /dev) and apt
# state a RUN may have left.
finish_rootfs() {
  find "$rootfs/dev" -mindepth 1 -delete 2>/dev/null || true
  rm -rf "$rootfs/var/lib/apt/lists/"* "$rootfs/var/cache/apt/"*.bin
}

pack() { # $rootfs and the collected config into an OCI layout $work/oci
  local layout=$work/oci tag=${ref[$image]##*:}
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  umoci insert --image "$layout:$tag" --history.created_by "tools/images.sh $image" "$rootfs" /
  umoci_config "$layout:$tag"
  umoci gc --layout "$layout"
}

build_image() { # build_image NAME ARCHIVE
  local image=$1 archive=$2 dockerfile context build_args wheelhouse build_env extra parsed
  local rootfs=$work/$image-rootfs logdir=$cache/logs/$image-${archive##*-}
  logdir=${logdir%.tar} run_count=0
  local t0=$SECONDS
  rm -rf "$rootfs" "$work/oci" && mkdir -p "$rootfs" && chmod 0755 "$rootfs"
  image_setup
  case $image in
    pause)
      mkdir -p "$context/bin"
      need gcc gcc
      # -static needs libc.a (gcc prints the bare name when it has none).
      [ "$(gcc -print-file-name=libc.a)" != libc.a ] || apt_install libc6-dev
      local tagv
      tagv=$(sed -n 's/^TAG ?= *//p' "$(dirname "$dockerfile")/Makefile")
      # As kubernetes' build/pause/Makefile: -Os -Wall -Werror -static, then strip.
      # shellcheck disable=SC2016 # $1.. are the inner sh's arguments, expanded there
      step gcc "gcc -Os -static pause.c" sh -c 'gcc -Os -Wall -Werror -static -DVERSION="$1" -o "$2" "$3" && strip "$2"' \
        sh "v$tagv-abc-operator" "$context/bin/pause-linux-$goarch" "$(dirname "$dockerfile")/linux/pause.c"
      ;;
    redis) ensure_base ;;
    example-gaussian)
      ensure_base
      if [ -n "$wheel_pid" ]; then
        log "[$image] waiting for the wheelhouse (pip wheel on the host)"
        wait "$wheel_pid" || exit 4
        wheel_pid=''
      fi
      ensure_wheelhouse
      wheelhouse=$wheel_dir build_env=(PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse)
      ;;
    operator)
      ensure_ca_bundle
      local b
      b=$(operator_bin)
      # A stripped copy: the original keeps its symbols for tests and debuggers.
      step strip "strip a copy of $b" strip -o "$work/abc-operator" "$b"
      ;;
  esac
  parsed=$(parse_dockerfile "$dockerfile" "${build_args[@]}")
  df_reset
  eval "$parsed"
  if [ "$image" = example-gaussian ]; then
    local v
    v=$(chroot "$rootfs" /usr/bin/python3 -c 'import platform; print(platform.python_version())')
    [ "$v" = "$image_python" ] || die "[$image] the image's python3 is $v, not $image_python: update image_python in $self"
  fi
  if [ "$image" = operator ]; then
    # The glibc build's libraries, exactly where ldd found them (symlinks resolved).
    local lib
    for lib in $(operator_libs "$(operator_bin)"); do
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    done
  fi
  finish_rootfs
  need umoci umoci
  need skopeo skopeo
  step pack "umoci: root and config into an OCI layout" pack
  rm -f "$archive.tmp"
  step skopeo "skopeo copy to a docker archive" \
    skopeo copy -q "oci:$work/oci:${ref[$image]##*:}" "docker-archive:$archive.tmp:${ref[$image]}"
  mv "$archive.tmp" "$archive"
  rm -rf "$rootfs" "$work/oci"
  log "[$image] ${ref[$image]} built in $((SECONDS - t0)) s: $archive ($(du -h "$archive" | cut -f1))"
}

kill_tree() { # kill_tree PID: PID and its descendants, children first
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$c"; done
  kill "$1" 2>/dev/null || true
}

# --- main ----------------------------------------------------------------------------------------
need python3 python3
declare -A archive
for n in "${names[@]}"; do
  archive[$n]=$(archive_of "$n")
done

if [ "$print" = 0 ]; then
  todo=()
  for n in "${names[@]}"; do [ -f "${archive[$n]}" ] || todo+=("$n"); done
  if [ ${#todo[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "building ${todo[*]} needs root (debootstrap, chroot, image files of other owners)"
    mkdir -p "$cache"
    # One build at a time per cache; a concurrent caller waits, then finds the archives.
    exec 9>"$cache/.lock"
    if ! flock -n 9; then
      log "another tools/images.sh builds into $cache; waiting for it"
      flock 9
    fi
    work=$(mktemp -d "$cache/work.XXXXXX")
    wheel_pid=''
    # Only our own background job (and its children) and our own temp dir; no mount lives
    # outside a namespace.
    trap '[ -z "${wheel_pid:-}" ] || kill_tree "$wheel_pid"; rm -rf "$work"' EXIT
    start=$SECONDS
    log "building ${todo[*]} into $cache"
    # The wheelhouse downloads while debootstrap runs.
    case " ${todo[*]} " in *" example-gaussian "*)
      if [ ! -f "$wheel_dir/.complete" ]; then
        image=wheelhouse ensure_wheelhouse &
        wheel_pid=$!
      fi ;;
    esac
    for n in "${todo[@]}"; do
      [ -f "${archive[$n]}" ] || build_image "$n" "${archive[$n]}"
    done
    log "all built in $((SECONDS - start)) s"
  fi
fi

for n in "${names[@]}"; do
  printf '%s\t%s\n' "${ref[$n]}" "${archive[$n]}"
done
