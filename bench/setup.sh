#!/usr/bin/env bash
# Create (or refresh) the bench's own virtualenv: the project with its `test` extra, plus the
# peer (bench/requirements.txt). Kept apart from .venv because the amazon provider changes
# python-dateutil. Re-installs only when pyproject.toml or bench/requirements.txt changed.
#
#   bench/setup.sh [VENV]        # default: .venv-bench in the repository root
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-bench}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.bench-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/sandbox/pyproject.toml" "$ROOT/bench/requirements.txt" | sha256sum | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
    exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet -e "$ROOT[test]" -e "$ROOT/sandbox" -r "$ROOT/bench/requirements.txt"
"$VENV/bin/pip" check
echo "$WANT" > "$STAMP"
echo "bench virtualenv ready: $VENV"
