#!/usr/bin/env bash
# Removes what an interrupted test run or lab may have left: every lab (`egressgw lab down`) and every test
# namespace (prefix egt-) with the processes inside it. Touches nothing else.
set -u
cd "$(dirname "$0")/.."
.venv/bin/egressgw lab down >/dev/null 2>&1 || true
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^egt-'); do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
done
exit 0
