#!/usr/bin/env bash
# Set up napari-cellfocus in ./.venv and run the main job on the built-in defaults:
# segment the bundled sample with the bundled default model, write the results to
# ./out/ and print the cell count and the accuracy against the sample's ground truth.
#
#   bash scripts/quickstart.sh            # set up + demo
#   bash scripts/quickstart.sh --no-demo  # set up only
#
# Safe to run again: it reuses ./.venv and only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}   # CPU build; an unpinned torch pulls multi-GB CUDA wheels
run_demo=1
[ "${1:-}" = "--no-demo" ] && run_demo=0

# System libraries for napari's Qt window and for the widget tests (virtual X server).
APT_PACKAGES="xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0 \
libxcb-xinerama0 libxcb-randr0 libxcb-render-util0 libxcb-image0 libxcb-shape0 \
libgl1 libegl1 libgl1-mesa-dri libdbus-1-3 libfontconfig1"
if command -v apt-get >/dev/null 2>&1 && ! command -v Xvfb >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1; then
    echo ">> installing system libraries for Qt / Xvfb (apt)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $APT_PACKAGES >/dev/null
  else
    echo ">> not root and no sudo: install these for the GUI and widget tests: $APT_PACKAGES"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo ">> creating .venv"
  "$PYTHON" -m venv .venv
fi
echo ">> installing napari-cellfocus and its dependencies into .venv"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_PIN"
.venv/bin/python -m pip install -q -e ".[qt,test]"

if [ "$run_demo" = 1 ]; then
  echo ">> segmenting the sample image with the built-in default model"
  .venv/bin/cellfocus demo --out out
fi
echo ">> done. Open the plugin with:  .venv/bin/napari -w napari-cellfocus __all__"
