#!/usr/bin/env bash
# The main job on a fresh machine: install what is needed, then run `edgevla demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec .venv/bin/edgevla demo "$@"
