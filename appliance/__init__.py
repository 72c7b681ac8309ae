"""egressgw: appliance."""
