#!/usr/bin/env bash
# Installs the Debian packages egressgw's lab and tests need (idempotent). Debian 12, root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PKGS=(iproute2 nftables conntrack conntrackd iperf3 tcpdump bird2 frr wireguard-go wireguard-tools
      etcd-server python3-venv procps psmisc iputils-ping kmod jq ethtool
      prometheus)  # prometheus: promtool checks deploy/monitoring, the e2e monitoring test runs the server
PKGS+=(iptables ipset)  # the lab's CNI stand-ins (lab/cni.py): iptables-nft, iptables-legacy, ipset
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  # --no-install-recommends: wireguard-tools would otherwise pull a kernel image and initramfs tooling
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # A package's install script may start its daemon on the host; the lab runs its own copies in namespaces.
  # Stop only the daemons of packages installed just now: a daemon that was already there (someone's own, or a
  # running lab's) is left alone.
  declare -A DAEMON=([bird2]=bird [frr]=frr [conntrackd]=conntrackd [etcd-server]=etcd [prometheus]=prometheus)
  for p in "${missing[@]}"; do
    if [ -n "${DAEMON[$p]:-}" ]; then pkill -x "${DAEMON[$p]}" 2>/dev/null || true; fi
  done
fi
