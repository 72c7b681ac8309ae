#!/usr/bin/env bash
# One-shot set-up of everything egressgw needs on Debian 12 (root): Debian packages, the venv in .venv,
# and the kube-apiserver build cache. Idempotent: re-running is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[dev]'
bash scripts/ensure-kube-apiserver.sh >/dev/null
