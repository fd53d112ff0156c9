#!/usr/bin/env bash
# The one test command: installs what the tests need on a fresh machine, then runs them all.
#   bash scripts/test.sh [extra pytest args]
# Uses .venv (created if missing; override with VENV=...). Needs Python 3.11+.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

# Chromium for the browser tests (Debian/Ubuntu package; never `playwright install`).
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium
  else
    echo "error: Chromium is missing and there is no apt-get to install it; the browser tests need it" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements-dev.txt

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
exec nice -n 10 "$VENV/bin/python" -m pytest -q tests "$@"
