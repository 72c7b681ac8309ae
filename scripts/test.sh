#!/usr/bin/env bash
# The whole test suite: static checks, then unit, integration (netns, real daemons, real kube-apiserver) and
# end-to-end lab tests. Needs root and the set-up of scripts/setup.sh. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
echo "== ruff"
.venv/bin/ruff check appliance bgp k8s_sync lab tests
echo "== mypy --strict"
.venv/bin/mypy
echo "== import-linter (layers, pure modules, no cycles: .importlinter)"
.venv/bin/lint-imports --no-cache
# leftovers of an earlier, killed run must not disturb this one (only the suite's own egt- labs: a user's egl- lab stays)
bash scripts/cleanup.sh
echo "== pytest"
set +e
$PY -m pytest -p no:cacheprovider -q -ra "$@"
rc=$?
set -e
bash scripts/cleanup.sh
exit $rc
