"""Host utilities shared by the I/O layers (bgp, k8s_sync, the data-path appliers): child-process supervision.

Not pure (it spawns and signals processes), so the pure layers never import it; it imports only appliance.core.
"""
