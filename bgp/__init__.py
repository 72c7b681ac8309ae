"""egressgw: bgp."""
