#!/usr/bin/env bash
# Check a plain install the way a napari user gets the plugin: a FRESH virtual environment
# with only napari and a Qt backend, then `pip install .` of this repository WITHOUT
# extras (no [test], no [qt]). scripts/check_manifest.py then imports every command of
# the npe2 manifest and opens every dock widget and sample in a real napari viewer, so a
# runtime import missing from [project] dependencies fails here and not on a user's
# machine (the Tune and fine-tune docks once needed matplotlib, which only the test extra
# had).
#
#   bash scripts/check_plain_install.sh
#
# Environment: PYTHON (default python3), TORCH_PIN (default torch==2.13.0, the CPU build;
# it is installed first because an unpinned torch pulls multi-GB CUDA wheels),
# PLAIN_VENV (default /tmp/cellfocus-plain-venv; removed first, and again at the end
# unless KEEP_PLAIN_VENV=1).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
VENV=${PLAIN_VENV:-/tmp/cellfocus-plain-venv}

# Nothing from outside the fresh environment may leak in: no system or user
# site-packages, no PYTHONPATH, not the project's .venv.
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV
export PYTHONNOUSERSITE=1

start=$(date +%s)
echo ">> plain install check: fresh venv in $VENV"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"   # include-system-site-packages = false (the default)
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# --no-compile: this throw-away environment need not byte-compile all of torch and napari.
"$PY" -m pip install -q --no-compile "$TORCH_PIN"
"$PY" -m pip install -q --no-compile "napari[pyqt6]"
# A (non-editable) build of the repository, as `pip install napari-cellfocus` gives.
# Built from a copy of the files git knows (tracked and not ignored), so no stale
# build/ or egg-info of the working tree takes part and the working tree is not written.
repo=$(pwd)
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  src_copy=$(mktemp -d /tmp/cellfocus-plain-src.XXXXXX)
  trap 'rm -rf "$src_copy"' EXIT
  git ls-files -z --cached --others --exclude-standard \
    | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null \
    | tar -xf - -C "$src_copy"
  "$PY" -m pip install -q --no-compile "$src_copy"
else
  "$PY" -m pip install -q --no-compile "$repo"
fi

run_x=()
if command -v xvfb-run >/dev/null 2>&1; then
  run_x=(xvfb-run -a)
elif [ -z "${DISPLAY:-}" ]; then
  echo "FAIL: no display and no xvfb-run (apt package xvfb, see scripts/quickstart.sh)" >&2
  exit 1
fi
# Run from outside the repository so that nothing in it shadows the installed package.
status=0
(cd "$VENV" && ${run_x[@]+"${run_x[@]}"} "$PY" "$repo/scripts/check_manifest.py") || status=$?
[ "${KEEP_PLAIN_VENV:-0}" = 1 ] || rm -rf "$VENV"
echo ">> plain install check took $(( $(date +%s) - start )) s"
if [ "$status" -ne 0 ]; then
  echo "FAIL: the plugin does not work from a plain install (see above); declare its" \
       "runtime imports in [project] dependencies of pyproject.toml" >&2
  exit "$status"
fi
echo ">> plain install check passed"
