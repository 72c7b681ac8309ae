"""Data-path planners: Intent + this node -> the desired kernel state (nftables, routes, tunnels, WireGuard). Pure."""
