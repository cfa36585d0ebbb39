#!/usr/bin/env bash
# The test suite on a fresh machine: install what is needed, then run every test (slow ones included).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec .venv/bin/python -m pytest -q -ra "$@"
