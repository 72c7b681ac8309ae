"""egressgw BGP: announce egress IPs upstream with ExaBGP, fail over by withdrawal, BFD via a BIRD sidecar, drain.

Public API (see docs/bgp.md): `settings.parse_bgp_settings`, `announcing.plan_announcements`,
`speaker.BgpSpeaker`, `bfd_sidecar.BfdSidecar`, `health.step_health`, `draining.drain_announcements`,
`metrics.BgpMetrics`.
"""
