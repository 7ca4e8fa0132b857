#!/usr/bin/env bash
# Sets up everything edgewatch needs on this machine, idempotently:
#   1. a Python virtual environment with the pinned dependencies, cached OUTSIDE
#      the clone under $EDGEWATCH_CACHE (default ~/.cache/edgewatch), keyed by the
#      hash of requirements.lock and the Python version, so repeated runs and
#      other clones reuse it and a fresh machine builds it once;
#   2. a small per-clone .venv that sees the cached packages through a .pth file
#      and holds an editable install of this clone (the `edgewatch` command);
#   3. the Apache Kafka broker jars from Maven Central (kafka/pom.xml), cached
#      under $EDGEWATCH_CACHE/kafka/ keyed by the pom.
# Needs: python3 >= 3.11, and for Kafka a JDK >= 17 and Maven.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${EDGEWATCH_CACHE:-$HOME/.cache/edgewatch}"
python="${EDGEWATCH_PYTHON:-python3}"

die() { echo "edgewatch setup: $*" >&2; exit 1; }

command -v "$python" >/dev/null || die "Python 3.11 or newer is required ('$python' not found); set EDGEWATCH_PYTHON to its path."
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python 3.11 or newer is required; '$python' is $("$python" -V 2>&1). Set EDGEWATCH_PYTHON to a newer interpreter."

pyver="$("$python" -c 'import sys, platform; print(f"py{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}")')"
lockhash="$(sha256sum "$repo/requirements.lock" | cut -c1-12)"
deps="$cache/venv-$pyver-$lockhash"
mkdir -p "$cache"

# One builder at a time per cache (two clones set up at once would race).
exec 9>"$cache/.bootstrap.lock"
flock 9

if [ ! -f "$deps/.complete" ]; then
  echo "edgewatch setup: building the dependency environment in $deps (first run on this machine; torch brings several GB)" >&2
  rm -rf "$deps"
  "$python" -m venv "$deps"
  "$deps/bin/python" -m pip install --quiet --requirement "$repo/requirements.lock" \
    || die "installing requirements.lock failed (see pip's message above); nothing is cached, the next run starts again."
  touch "$deps/.complete"
fi

# Per-clone environment: tiny, rebuilt when the cached one changes.
venv="$repo/.venv"
site_of() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
if [ ! -f "$venv/.deps" ] || [ "$(cat "$venv/.deps")" != "$deps" ]; then
  rm -rf "$venv"
  "$python" -m venv --without-pip "$venv"
  site_of "$deps" > "$(site_of "$venv")/_edgewatch_cached_deps.pth"
  echo "$deps" > "$venv/.deps"
fi
if [ ! -x "$venv/bin/edgewatch" ] || [ "$repo/pyproject.toml" -nt "$venv/bin/edgewatch" ]; then
  "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation --editable "$repo" \
    || die "installing edgewatch itself into $venv failed (see pip's message above)."
fi

# The broker jars (skipped with EDGEWATCH_SKIP_KAFKA=1, e.g. to build only Python).
if [ "${EDGEWATCH_SKIP_KAFKA:-0}" != "1" ]; then
  "$venv/bin/edgewatch" kafka fetch --quiet
fi
