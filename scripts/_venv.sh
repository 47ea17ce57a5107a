# Sourced by scripts/demo and scripts/test: create .venv if missing and install potd.
# torch is installed first and pinned to the local CPU wheel, so nothing can pull a
# multi-GB CUDA build.  Usage: . scripts/_venv.sh [extras]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${1:-}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check install)
# a local wheel directory (where this machine keeps the CPU torch wheel), if present
if [ -d /opt/wheels ]; then PIP+=(--find-links /opt/wheels); fi
stamp="$VENV/.potd-installed${EXTRAS:+-$EXTRAS}"
stale=0  # reinstall (and rebuild the native helpers) when setup or a C source changed
for f in "$ROOT"/setup.cfg "$ROOT"/setup.py "$ROOT"/prover/*.c "$ROOT"/ledger/*.[ch]; do
    if [ ! -f "$stamp" ] || [ "$f" -nt "$stamp" ]; then stale=1; fi
done
if [ "$stale" = 1 ]; then
    echo "==> installing torch==2.13.0 (CPU) and potd${EXTRAS:+[$EXTRAS]} into .venv"
    "${PIP[@]}" "torch==2.13.0"
    "${PIP[@]}" -e "$ROOT${EXTRAS:+[$EXTRAS]}"
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
