#!/usr/bin/env bash
# The demo: sets up everything, starts a local Kafka broker, a simulated plant
# and a worker, and shows a live view of readings and alerts. Ctrl-C stops it all.
# Extra arguments go to `edgewatch demo` (try --help, or --duration 60).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/bootstrap.sh"
cd "$repo"
exec "$repo/.venv/bin/edgewatch" demo "$@"
