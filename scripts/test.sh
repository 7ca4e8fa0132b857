#!/usr/bin/env bash
# The whole test suite: unit tests and integration tests against a real Apache
# Kafka broker that the suite starts itself (and stops; no process is left).
# Every set-up step runs first, so this works on a fresh clone and a fresh machine.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/bootstrap.sh"
cd "$repo"
exec "$repo/.venv/bin/python" -m pytest "$@"
