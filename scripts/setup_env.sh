#!/usr/bin/env bash
# Create ./.venv (Python 3.10+) with magicme and its test extras; safe to run again (it only adds what is missing).
# torch is pinned first: an unpinned `torch` can pull a multi-GB CUDA build on a CPU box. On a GPU box use
# environment.yaml (conda) or install the CUDA torch you want before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
python -m pip install -q -e ".[test]"
# insightface only for its sample photo (a second real person for the face-identity tests); --no-deps because it
# asks for opencv-python, which would clash with the headless OpenCV the project uses
python -m pip install -q --no-deps "insightface==2.1"
# The web app's browser test drives the system's Chromium (never a downloaded one): install the Debian package where
# we can; where we cannot, tests/test_app.py skips it with a message (and fails under MAGICME_REQUIRE_BROWSER=1).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; } \
    || echo "setup_env.sh: could not install chromium; the browser test will be skipped" >&2
fi
