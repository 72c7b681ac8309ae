"""The announcement planner (pure): which EIP routes this member announces, with which preference.

Every healthy member of a gateway instance announces every EIP of that instance as a host route (/32, /128) with
next hop self, so the routers always hold the backups next to the primary and failover is a local best-path change
on the router (no API-server round trip). The preference comes from the member's position in the instance's ranking
(`GatewayInstance.ranking`, rendezvous hashing over all members, best first): position 0 gets the lowest MED / no
prepends. Members that must not carry traffic get the *worst* preference, still ordered by their ranking so the
router never sees a tie among them:

- unhealthy: withdraw, or announce with the worst preference when `withdraw_on_unhealthy` is false;
- draining: withdraw (a drain ends with this member gone; the backups are already in the router's table);
- in failback hold-down: worst preference, so a returning member does not take its primaries back at once;
- stepped back (its cluster view is stale while another member of the instance has a fresh one, `bgp.freshness`):
  the stale preference, a band below even the worst one, for the EIPs of that instance.

Only EIPs inside the instance's pools of an enabled family are announced; everything else is skipped with a reason.
Communities come from the gateway spec (`EgressGateway.bgp`).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from appliance.core.intent import GatewayInstance
from appliance.core.model import EgressGateway, IPAddress, IPNetwork
from bgp.settings import BgpSettings, Family, PreferenceMode, PreferenceSettings


class MemberMode(enum.StrEnum):
    """How this member takes part in announcing; also the `reason` in `eip.announced` log lines."""

    #: healthy, past hold-down: preference from the ranking
    RANKED = "ranked"
    #: healthy but in failback hold-down: worst preference
    HOLD_DOWN = "hold_down"
    #: unhealthy and configured to stay reachable: worst preference
    UNHEALTHY_DEPREFERRED = "unhealthy_depreferred"
    #: unhealthy: nothing announced
    UNHEALTHY_WITHDRAWN = "unhealthy_withdrawn"
    #: draining: nothing announced
    DRAINING = "draining"


class SkipReason(enum.StrEnum):
    NOT_IN_POOL = "NotInPool"
    FAMILY_DISABLED = "FamilyDisabled"
    NOT_A_MEMBER = "NotAMember"
    NO_GATEWAY_SPEC = "NoGatewaySpec"
    DUPLICATE_EIP = "DuplicateEIP"


@dataclass(frozen=True, slots=True, kw_only=True)
class Announcement:
    """One route we want ExaBGP to announce (next hop self, or the peer's configured next hop)."""

    prefix: IPNetwork
    med: int | None = None
    as_path_prepends: int = 0
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()

    @property
    def family(self) -> Family:
        return Family.of(self.prefix.network_address)

    @property
    def eip(self) -> IPAddress:
        return self.prefix.network_address


def announcement_sort_key(a: Announcement) -> tuple[int, int]:
    return (a.prefix.version, int(a.prefix.network_address))


@dataclass(frozen=True, slots=True, kw_only=True)
class AnnouncementPlan:
    mode: MemberMode
    announcements: frozenset[Announcement]
    #: (instance name, EIP, reason) for everything not announced although an instance lists it
    skipped: tuple[tuple[str, IPAddress, SkipReason], ...] = ()


def member_mode(*, healthy: bool, draining: bool, in_hold_down: bool, settings: BgpSettings) -> MemberMode:
    if draining:
        return MemberMode.DRAINING
    if not healthy:
        return MemberMode.UNHEALTHY_WITHDRAWN if settings.withdraw_on_unhealthy else MemberMode.UNHEALTHY_DEPREFERRED
    return MemberMode.HOLD_DOWN if in_hold_down else MemberMode.RANKED


def preference(position: int, *, worst: bool, pref: PreferenceSettings, stale: bool = False) -> tuple[int | None, int]:
    """(MED, prepends) for a ranking position; `worst` shifts the whole ranking below every ranked member, `stale`
    below every member that is not stale too (the order inside each band still follows the ranking)."""
    use_med = pref.mode in (PreferenceMode.MED, PreferenceMode.BOTH)
    use_prepend = pref.mode in (PreferenceMode.AS_PATH_PREPEND, PreferenceMode.BOTH)
    med: int | None = None
    prepends = 0
    if use_med:
        base = pref.stale_med if stale else pref.worst_med if worst else pref.base_med
        med = base + pref.med_step * min(position, 999)
    if use_prepend:
        band = 2 if stale else 1 if worst else 0
        prepends = pref.max_prepends + band if band else min(position, pref.max_prepends)
    return med, prepends


def _host_prefix(ip: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")


def _spec_of(
    inst: GatewayInstance, gateways: Mapping[str, EgressGateway] | None
) -> EgressGateway | GatewayInstance | None:
    if gateways is None:
        return inst
    return gateways.get(inst.name)


def plan_announcements(
    *,
    instances: Iterable[GatewayInstance],
    gateways: Mapping[str, EgressGateway] | None = None,
    me: str,
    healthy: bool,
    draining: bool,
    in_hold_down: bool,
    settings: BgpSettings,
    stepped_back: frozenset[str] = frozenset(),
) -> AnnouncementPlan:
    """Whole desired announcement set of member `me` over the instances it belongs to (deterministic).

    `stepped_back`: names of the instances in which this member's cluster view is stale while another member's is
    fresh (`bgp.freshness.steps_back`); their EIPs get the stale preference.

    Pools and communities come from `gateways[instance.name]` when `gateways` is given, else from the instance
    itself (`GatewayInstance.ipv4_pool/ipv6_pool/bgp`, filled by the resolution from the same EgressGateway).
    """
    mode = member_mode(healthy=healthy, draining=draining, in_hold_down=in_hold_down, settings=settings)
    enabled = {f for p in settings.peers for f in p.families}
    out: dict[IPNetwork, Announcement] = {}
    skipped: list[tuple[str, IPAddress, SkipReason]] = []
    for inst in sorted(instances, key=lambda i: i.name):
        gw = _spec_of(inst, gateways)
        member_names = {m.name for m in inst.members}
        for eip in inst.eips:
            if gw is None:
                skipped.append((inst.name, eip, SkipReason.NO_GATEWAY_SPEC))
                continue
            if me not in member_names:
                skipped.append((inst.name, eip, SkipReason.NOT_A_MEMBER))
                continue
            if eip not in (gw.ipv4_pool if eip.version == 4 else gw.ipv6_pool):
                skipped.append((inst.name, eip, SkipReason.NOT_IN_POOL))
                continue
            if Family.of(eip) not in enabled:
                skipped.append((inst.name, eip, SkipReason.FAMILY_DISABLED))
                continue
            prefix = _host_prefix(eip)
            if prefix in out:
                skipped.append((inst.name, eip, SkipReason.DUPLICATE_EIP))
                continue
            if mode in (MemberMode.DRAINING, MemberMode.UNHEALTHY_WITHDRAWN):
                continue
            ranking = inst.rank_of(eip)
            position = ranking.index(me) if me in ranking else len(inst.members)
            med, prepends = preference(position, worst=mode is not MemberMode.RANKED, pref=settings.preference,
                                       stale=inst.name in stepped_back)  # fmt: skip
            out[prefix] = Announcement(
                prefix=prefix,
                med=med,
                as_path_prepends=prepends,
                communities=tuple(sorted(set(gw.bgp.communities))),
                large_communities=tuple(sorted(set(gw.bgp.large_communities))),
            )
    return AnnouncementPlan(mode=mode, announcements=frozenset(out.values()), skipped=tuple(skipped))


def announcements_for(
    *,
    instances: Iterable[GatewayInstance],
    gateways: Mapping[str, EgressGateway] | None = None,
    me: str,
    healthy: bool,
    draining: bool,
    in_hold_down: bool,
    settings: BgpSettings,
    stepped_back: frozenset[str] = frozenset(),
) -> frozenset[Announcement]:
    """Just the announcement set (see `plan_announcements` for the mode and the skipped EIPs)."""
    return plan_announcements(
        instances=instances,
        gateways=gateways,
        me=me,
        healthy=healthy,
        draining=draining,
        in_hold_down=in_hold_down,
        settings=settings,
        stepped_back=stepped_back,
    ).announcements
