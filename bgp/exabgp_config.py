"""Render the ExaBGP 5 configuration file from `BgpSettings` (pure: settings in, text out).

ExaBGP holds no routes of its own in our design: every announcement comes through its API process (our bridge,
`bgp.api_bridge`), so the config only describes the sessions: router id, ASNs, hold time, TCP-MD5, families, and the
`api` block that subscribes the bridge to neighbor up/down events, and the graceful-restart capability (with
`manual-eor`: the speaker sends End-of-RIB itself, after the resent routes). The text encoder is used because its acks
(`done`/`error`) and neighbor events (`neighbor X up`, `neighbor X down - reason`) are one short line each, and
because ExaBGP 5.0 only acknowledges in text anyway. The rendering is deterministic (golden-file tested).
"""

from __future__ import annotations

from collections.abc import Sequence

from bgp.settings import BgpSettings, Family, PeerSettings

#: name of the API process in the ExaBGP config (also used in log lines)
PROCESS_NAME = "egressgw"

_FAMILY_LINE = {Family.IPV4_UNICAST: "ipv4 unicast;", Family.IPV6_UNICAST: "ipv6 unicast;"}


def _quote_arg(arg: str) -> str:
    """ExaBGP's tokeniser splits on blanks and strips quotes; reject what it cannot carry."""
    if not arg or any(c in arg for c in " \t\n;{}\"'"):
        raise ValueError(f"argument {arg!r} cannot be passed through an ExaBGP run line")
    return arg


def _neighbor(settings: BgpSettings, peer: PeerSettings) -> list[str]:
    lines = [
        f"neighbor {peer.address} {{",
        '    description "egressgw upstream";',
        f"    router-id {settings.router_id};",
    ]
    if peer.local_address is not None:
        lines.append(f"    local-address {peer.local_address};")
    lines += [
        f"    local-as {settings.local_asn};",
        f"    peer-as {peer.asn};",
        f"    hold-time {peer.hold_time};",
        f"    passive {'true' if peer.passive else 'false'};",
        # we import nothing: do not keep what a (misconfigured) router might send us, e.g. a full table
        "    adj-rib-in false;",
    ]
    if peer.md5_password is not None:
        lines.append(f'    md5-password "{peer.md5_password}";')
    gr = settings.graceful_restart
    if gr.enabled:
        # the routers keep our routes while ExaBGP restarts; they flush the stale ones at our End-of-RIB, which
        # the speaker sends itself once the session's routes are acknowledged (ExaBGP would send it right after
        # the OPEN, before the API has resent anything: the routers would drop every route for that moment)
        lines += ["    manual-eor true;", "    capability {", f"        graceful-restart {gr.restart_time_s};", "    }"]
    lines.append("    family {")
    lines += [f"        {_FAMILY_LINE[f]}" for f in peer.families]
    lines += [
        "    }",
        "    api {",
        f"        processes [ {PROCESS_NAME} ];",
        "        neighbor-changes;",
        "    }",
        "}",
    ]
    return lines


def render_exabgp_config(settings: BgpSettings, *, bridge_command: Sequence[str]) -> str:
    """The whole ExaBGP config: one API process (the bridge) and one neighbor block per peer."""
    run = " ".join(_quote_arg(a) for a in bridge_command)
    if not bridge_command or not bridge_command[0].startswith("/"):
        raise ValueError("the bridge command must start with an absolute path")
    lines = [
        "# rendered by egressgw (bgp.exabgp_config); do not edit: it is rewritten on every start",
        f"process {PROCESS_NAME} {{",
        f"    run {run};",
        "    encoder text;",
        "}",
    ]
    for peer in sorted(settings.peers, key=lambda p: (p.address.version, p.address)):
        lines.append("")
        lines += _neighbor(settings, peer)
    return "\n".join(lines) + "\n"


def listen_addresses(settings: BgpSettings) -> str:
    """ExaBGP's `tcp.bind`: listen only when a peer is passive on our side (then on its local address)."""
    passive = [p for p in settings.peers if p.passive]
    if not passive:
        return ""
    if any(p.local_address is None for p in passive):
        return "0.0.0.0 ::"
    return " ".join(sorted({str(p.local_address) for p in passive}))


def exabgp_environment(
    settings: BgpSettings, *, api_ack: bool = True, log_destination: str = "stdout"
) -> dict[str, str]:
    """Environment variables for ExaBGP (its settings that are not part of the config file).

    Root without privilege drop (we run inside the gateway's network namespace as root and need TCP-MD5 sockets),
    no CLI pipe (several instances may share a host; our bridge is the only control channel), acks on (the
    announcer's state machine is driven by them), a listening socket only for passive peers.
    """
    return {
        "exabgp_daemon_user": "root",
        "exabgp_daemon_drop": "false",
        "exabgp_daemon_daemonize": "false",
        "exabgp_api_ack": "true" if api_ack else "false",
        "exabgp_api_cli": "false",
        "exabgp_api_encoder": "text",
        "exabgp_tcp_bind": listen_addresses(settings),
        "exabgp_log_destination": log_destination,
        "exabgp_log_level": "INFO",
    }
