"""Which nftables ruleset a node gets: MODERN (the default on current kernels) or COMPAT (older kernels).

Why two: the modern ruleset keeps NAT chains in the `inet` table (Linux 5.2), looks pod -> destination pairs up in
interval sets with concatenated keys (pipapo, 5.6) and keeps its structure fingerprint in the table comment (5.10),
which leaves out RHEL 8 (4.18) and Ubuntu 20.04 (5.4). The compat ruleset expresses the same decisions with older
parts: the NAT chains live in per-family `ip`/`ip6 egressgw` tables, a (pod, destination) lookup becomes a verdict map
pod -> `jump` to a chain of the pod's *group* (pods with the same destinations share one chain and one single-key
interval set/map, named by a hash of their contents), the fingerprint is the name of an empty chain, and the VXLAN
(source, VNI) admission is a per-VTEP chain instead of a `typeof` map (nft 0.9.4). Both variants make the same
decisions and count into the same named counters (docs/datapath.md "Kernel floor").

`FEATURES` lists every nftables feature either ruleset uses with the kernel (and nft) version that introduced it;
`features_used` finds the late ones in rendered text, so a test keeps the compat ruleset honest. `choose_variant`
picks the variant from the kernel release (`auto`) or the `datapath.ruleset` setting.

Pure: no I/O; the services pass `os.uname().release` in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar


class RulesetVariant(Enum):
    MODERN = "modern"
    COMPAT = "compat"


#: the values of `datapath.ruleset` (`auto`: chosen from the running kernel)
RULESET_SETTINGS = ("auto", "modern", "compat")

Version = tuple[int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Feature:
    name: str
    #: the first Linux release with it
    kernel: Version
    #: the first nft (userspace) release that accepts our syntax for it
    nft: tuple[int, int, int]
    modern: bool
    compat: bool


#: every nftables feature our rulesets (worker inet + bridge tables, gateway inet table, compat NAT tables) rely on
FEATURES: tuple[Feature, ...] = (
    Feature(name="inet family tables (filter chains)", kernel=(3, 14), nft=(0, 2, 0), modern=True, compat=True),
    Feature(name="bridge family tables", kernel=(3, 14), nft=(0, 2, 0), modern=True, compat=True),
    Feature(name="verdict maps (vmap with jump)", kernel=(3, 13), nft=(0, 2, 0), modern=False, compat=True),
    Feature(name="single-key interval sets and maps (rbtree)", kernel=(3, 13), nft=(0, 2, 0), modern=True, compat=True),
    Feature(name="raw transport-header payload (@th,96,24)", kernel=(3, 13), nft=(0, 7, 0), modern=True, compat=True),
    Feature(name="meta mark set / ct mark set, map lookups", kernel=(3, 14), nft=(0, 5, 0), modern=True, compat=True),
    Feature(name="NAT chains in ip/ip6 tables (snat to expression, masquerade)", kernel=(3, 18), nft=(0, 4, 0),
            modern=False, compat=True),
    Feature(name="concatenated keys in hash sets (mark . addr, addr . ifname)", kernel=(4, 1), nft=(0, 5, 0),
            modern=True, compat=True),
    Feature(name="dynamic sets with timeout and a limit per element (update @set)", kernel=(4, 3), nft=(0, 8, 1),
            modern=True, compat=True),
    Feature(name="named counters and counter maps (counter name ... map)", kernel=(4, 10), nft=(0, 8, 1),
            modern=True, compat=True),
    Feature(name="fib expression (fib saddr . iif oif)", kernel=(4, 10), nft=(0, 7, 0), modern=True, compat=True),
    Feature(name="ct event set", kernel=(4, 11), nft=(0, 8, 0), modern=True, compat=True),
    Feature(name="tcp option maxseg size set rt mtu", kernel=(4, 14), nft=(0, 8, 0), modern=True, compat=True),
    Feature(name="ct original ip saddr / ip6 saddr (family-typed ct keys)", kernel=(4, 17), nft=(0, 9, 0),
            modern=True, compat=True),
    Feature(name="named chain priorities (mangle, filter, srcnat - 10)", kernel=(3, 13), nft=(0, 9, 1),
            modern=True, compat=True),
    Feature(name="NAT chains in inet tables", kernel=(5, 2), nft=(0, 9, 1), modern=True, compat=False),
    Feature(name="interval sets with concatenated keys (pipapo)", kernel=(5, 6), nft=(0, 9, 4), modern=True,
            compat=False),
    Feature(name="typeof set declarations (ip saddr . @th,96,24)", kernel=(4, 1), nft=(0, 9, 4), modern=True,
            compat=False),
    Feature(name="table comments (structure fingerprint)", kernel=(5, 10), nft=(0, 9, 7), modern=True, compat=False),
)


def _uses(variant: RulesetVariant, f: Feature) -> bool:
    return f.modern if variant is RulesetVariant.MODERN else f.compat


def floor(variant: RulesetVariant) -> Version:
    """The oldest kernel release the variant's ruleset loads on (the latest feature it uses)."""
    return max(f.kernel for f in FEATURES if _uses(variant, f))


def nft_floor(variant: RulesetVariant) -> tuple[int, int, int]:
    """The oldest nft (userspace) release that reads the variant's ruleset."""
    return max(f.nft for f in FEATURES if _uses(variant, f))


_RELEASE = re.compile(r"^\s*(\d+)\.(\d+)")


def kernel_version(release: str) -> Version | None:
    """`4.18.0-553.el8_10.x86_64` -> (4, 18); None when the text does not start with `MAJOR.MINOR`."""
    m = _RELEASE.match(release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def choose_variant(kernel_release: str, override: str | None) -> RulesetVariant:
    """The ruleset for this node: `override` (`modern`/`compat`) wins; `auto` or None picks MODERN when the kernel
    has every feature it needs (`floor(MODERN)`), else COMPAT (also for a release that cannot be read: compat loads
    everywhere modern does). Raises ValueError naming `datapath.ruleset` for any other override."""
    if override is not None and override != "auto":
        try:
            return RulesetVariant(override)
        except ValueError:
            raise ValueError(
                f"datapath.ruleset: must be one of {', '.join(RULESET_SETTINGS)}, got {override!r}") from None
    version = kernel_version(kernel_release)
    if version is not None and version >= floor(RulesetVariant.MODERN):
        return RulesetVariant.MODERN
    return RulesetVariant.COMPAT


# ----- detecting the late features in rendered text (for tests and diagnostics) -----

_TABLE_START = re.compile(r"^table (\w+) (\S+) \{$", re.M)
_NAT_CHAIN = re.compile(r"type nat hook")
_CONCAT_INTERVAL = re.compile(r"^\s*(?:set|map) \S+ \{ (?:type|typeof) [^;]* \. [^;]*;[^}]*flags interval", re.M)
_TYPEOF = re.compile(r"\btypeof\b")
_TABLE_COMMENT = re.compile(r"^\tcomment \"", re.M)


def features_used(nft_text: str) -> frozenset[str]:
    """The names (`FEATURES`) of the late features (not in the compat floor) found in an `nft -f` text."""
    found: set[str] = set()
    starts = list(_TABLE_START.finditer(nft_text))
    for i, m in enumerate(starts):
        body = nft_text[m.end(): starts[i + 1].start() if i + 1 < len(starts) else len(nft_text)]
        if m.group(1) == "inet" and _NAT_CHAIN.search(body):
            found.add("NAT chains in inet tables")
    if _CONCAT_INTERVAL.search(nft_text):
        found.add("interval sets with concatenated keys (pipapo)")
    if _TYPEOF.search(nft_text):
        found.add("typeof set declarations (ip saddr . @th,96,24)")
    if _TABLE_COMMENT.search(nft_text):
        found.add("table comments (structure fingerprint)")
    return frozenset(found)


# ----- compat: (pod, destination) lookups as pod -> group chain -----

T = TypeVar("T", bound=Hashable)


def group_name(prefix: str, members: Iterable[object]) -> str:
    """A bounded, stable name for a group of lookup entries (set and chain names stay under 32 bytes: the limit of
    kernels before 4.14)."""
    digest = hashlib.sha256("\n".join(sorted(str(m) for m in members)).encode()).hexdigest()[:10]
    return f"{prefix}_{digest}"


def source_groups(prefix: str, entries: Iterable[tuple[str, T]]) -> tuple[dict[str, str], dict[str, frozenset[T]]]:
    """Split (source, member) entries by source: (source -> group name, group name -> members). Sources with the
    same members share one group, so the number of groups follows the policies, not the pods."""
    by_source: dict[str, set[T]] = {}
    for source, member in entries:
        by_source.setdefault(source, set()).add(member)
    names: dict[str, str] = {}
    groups: dict[str, frozenset[T]] = {}
    for source, members in by_source.items():
        frozen = frozenset(members)
        name = group_name(prefix, frozen)
        names[source] = name
        groups[name] = frozen
    return names, groups


def split_concat(key: str) -> tuple[str, str]:
    """`100.64.1.10 . 0.0.0.0/0` -> (`100.64.1.10`, `0.0.0.0/0`)."""
    first, _, rest = key.partition(" . ")
    return first, rest


def jump_elements(names: Mapping[str, str]) -> frozenset[tuple[str, str | None]]:
    """Verdict map elements source -> `jump <group>`."""
    return frozenset((source, f"jump {name}") for source, name in names.items())
