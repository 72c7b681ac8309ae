"""The service runtime shared by the agent and the gateway: config, the reconcile loop, metrics server, underlay
detection."""
