"""Kernel appliers: observe, diff against a plan and converge (netlink, nftables, WireGuard, conntrack)."""
