#!/usr/bin/env bash
# Removes what an interrupted test run may have left, and nothing else: the labs and network namespaces under the test
# suite's own prefix (egt-, or $EGRESSGW_TEST_PREFIX) with the processes inside them
# (`egressgw lab down --prefix`). A user's labs (egl-*, e.g. a running `egressgw lab demo --keep`) are never touched:
# this script must not call `egressgw lab down` without a name or prefix.
set -u
cd "$(dirname "$0")/.."
prefix="${EGRESSGW_TEST_PREFIX:-egt-}"
case "$prefix" in
  egt-*) ;;
  *) echo "cleanup.sh: refusing prefix '$prefix' (test prefixes start with egt-)" >&2; exit 2 ;;
esac
.venv/bin/egressgw lab down --prefix "$prefix" >/dev/null || echo "cleanup.sh: lab down --prefix $prefix failed" >&2
exit 0
