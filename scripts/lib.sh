# Shared helpers for scripts/up and scripts/test. Source it; it defines functions and a few
# variables and runs nothing else.
#   VB_ROOT      the repository root
#   VB_PYTHON    the Python used for the test tools (python3, or $VB_PYTHON if set)

VB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VB_PYTHON="${VB_PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1
export DEBIAN_FRONTEND=noninteractive

vb_log() { printf '%s\n' "$*"; }
vb_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root (directly, or through sudo when not root).
vb_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# Debian packages the project needs, as "command:package" pairs: the package is installed when
# the command is missing. bubblewrap, e2fsprogs and mount are for sandboxes (namespaces, workspace
# images); the sandbox tests run Debian's python3 and curl inside sandboxes, which see only /usr.
# Chromium is the real browser of the browser stage (driven by playwright-core at /usr/bin/chromium);
# pebble (an ACME CA and its DNS double) is for the on-demand TLS test.
VB_APT_NEEDS=(bwrap:bubblewrap curl:curl timeout:coreutils pg_isready:postgresql psql:postgresql-client
  mkfs.ext4:e2fsprogs mount:mount unshare:util-linux pgrep:procps /usr/bin/python3:python3 node:nodejs npm:npm
  /usr/bin/chromium:chromium pebble:pebble pebble-challtestsrv:pebble)

vb_install_apt() {
  local pair cmd pkg missing=()
  for pair in "${VB_APT_NEEDS[@]}"; do
    cmd="${pair%%:*}" pkg="${pair#*:}"
    command -v "$cmd" >/dev/null 2>&1 && continue
    case " ${missing[*]-} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  vb_log "installing Debian packages: ${missing[*]}"
  local log
  log="$(mktemp)"
  if ! { vb_root apt-get update -qq && vb_root apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    vb_die "apt-get install ${missing[*]} failed"
  fi
  rm -f "$log"
}

# Succeeds when every exact pin of scripts/requirements-test.txt (and the requirements of the
# extras it names) is installed for $VB_PYTHON.
vb_python_reqs_satisfied() {
  "$VB_PYTHON" - "$VB_ROOT/scripts/requirements-test.txt" <<'PY' 2>/dev/null
import re, sys
from importlib.metadata import PackageNotFoundError, distribution, version
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

def installed(req, extras=()):
    try:
        v = version(req.name)
    except PackageNotFoundError:
        return False
    if req.specifier and not req.specifier.contains(v, prereleases=True):
        return False
    for extra in extras:
        for dep in distribution(req.name).requires or []:
            d = Requirement(dep)
            if d.marker and d.marker.evaluate({"extra": extra}) and not d.marker.evaluate({"extra": ""}):
                if not installed(d):
                    return False
    return True

ok = True
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        r = Requirement(line)
        ok = ok and installed(r, sorted(r.extras))
sys.exit(0 if ok else 1)
PY
}

vb_install_python() {
  command -v "$VB_PYTHON" >/dev/null 2>&1 || vb_die "$VB_PYTHON not found (CPython 3.11 with pip is expected)"
  vb_python_reqs_satisfied && return 0
  vb_log "installing Python test tools (scripts/requirements-test.txt)"
  local out
  if ! out="$("$VB_PYTHON" -m pip install -q -r "$VB_ROOT/scripts/requirements-test.txt" 2>&1)"; then
    case "$out" in
      *externally-managed-environment*)
        "$VB_PYTHON" -m pip install -q --break-system-packages -r "$VB_ROOT/scripts/requirements-test.txt" ;;
      *) printf '%s\n' "$out" >&2; return 1 ;;
    esac
  fi
  vb_python_reqs_satisfied || vb_die "Python requirements still unsatisfied after pip install"
}

vb_install_rust() {
  command -v cargo >/dev/null 2>&1 || vb_die "cargo not found (the machine's Rust toolchain is expected)"
  if ! cargo nextest --version >/dev/null 2>&1; then
    vb_log "installing cargo-nextest"
    cargo install --locked --quiet cargo-nextest
  fi
}

# Everything the project needs on the machine, without starting anything.
vb_install() {
  vb_install_apt
  vb_install_rust
  vb_install_python
}

# The cargo target directory (honours CARGO_TARGET_DIR and cargo config).
vb_target_dir() {
  if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    case "$CARGO_TARGET_DIR" in /*) printf '%s\n' "$CARGO_TARGET_DIR" ;; *) printf '%s\n' "$VB_ROOT/$CARGO_TARGET_DIR" ;; esac
    return
  fi
  (cd "$VB_ROOT" && cargo metadata --format-version 1 --no-deps --offline 2>/dev/null) |
    "$VB_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null ||
    printf '%s\n' "$VB_ROOT/target"
}

# Directory of the Python console scripts (schemathesis, moto_server) of $VB_PYTHON.
vb_python_scripts() {
  "$VB_PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'
}

# Prints a free TCP port on 127.0.0.1 (the preferred one if it is free).
vb_free_port() {
  "$VB_PYTHON" - "${1:-0}" <<'PY'
import socket, sys
for port in (int(sys.argv[1]), 0):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(s.getsockname()[1])
    s.close()
    break
PY
}

# vb_wait_http URL SECONDS [PID]: waits until URL answers with a 2xx status,
# failing early when PID dies (so that another server on the port is not mistaken for it).
vb_wait_http() {
  local url="$1" secs="$2" pid="${3:-}" i code
  for ((i = 0; i < secs * 5; i++)); do
    code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null || true)"
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    case "$code" in 2??) return 0 ;; esac
    sleep 0.2
  done
  return 1
}

# PostgreSQL: start the local cluster when nothing answers on 127.0.0.1:5432.
vb_ensure_postgres() {
  pg_isready -q -h 127.0.0.1 -p 5432 && return 0
  vb_log "starting PostgreSQL"
  local ver
  for ver in $(ls /etc/postgresql 2>/dev/null); do
    vb_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  done
  local i
  for ((i = 0; i < 60; i++)); do
    pg_isready -q -h 127.0.0.1 -p 5432 && return 0
    sleep 0.5
  done
  vb_die "PostgreSQL does not answer on 127.0.0.1:5432"
}

# vb_recreate_db NAME: drops and creates a database on the local PostgreSQL.
vb_recreate_db() {
  psql -q -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" -c "CREATE DATABASE \"$1\"" >/dev/null
}
