"""egressgw: lab."""
