# Sourced by scripts/demo and scripts/test: makes .venv once and keeps it in step with pyproject.toml.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MC_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "meterchain needs Python 3.11 or newer (found: $("$PY" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" || { echo "could not create a virtual environment: install python3-venv" >&2; exit 1; }
fi
STAMP="$VENV/.meterchain-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    # pip's and the build backend's chatter goes to a log, shown only when the install fails
    LOG="$VENV/install.log"
    echo "installing meterchain and its test tools into ${VENV#"$ROOT"/} (first run: a minute or two; log: $LOG)" >&2
    if ! { "$VENV/bin/python" -m pip install --quiet --upgrade pip \
           && "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"; } > "$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        echo "could not install meterchain into $VENV (whole log: $LOG)" >&2
        exit 1
    fi
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
