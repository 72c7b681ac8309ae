"""Policy resolution: selection, precedence, EIP allocation, placement, cluster CIDRs, incremental updates, explain.
Pure."""
