"""egressgw: k8s_sync."""
