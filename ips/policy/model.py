"""The resolved policy: every name looked up, every value checked and typed.

This is what the compiler (ips/policy/compile.py) turns into fast matchers, what
`ipsctl check` summarises, and what later issues translate into nftables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ips.policy.diagnostics import Diagnostic, Span
from ips.policy.domains import NameSet

# Verdicts (the strings the engine returns).
ACCEPT = "accept"
DROP = "drop"
REJECT = "reject"
REWRITE = "rewrite"
MATCH = "match"  # non-terminal: alert/log and go on
VERDICTS = (ACCEPT, DROP, REJECT, REWRITE)


@dataclass(frozen=True, slots=True)
class GeoLabels:
    """What a geo clause (`from country { RU, CN }`, `to asn 13335`, `from org contains
    "…"`) selected, for `ipsctl explain`: per family, sorted disjoint inclusive ranges, each
    with the value that put it there (`RU`, `AS13335 Cloudflare, Inc.`, `site HQ lab XX`)."""

    shown: str  # the clause's value as written: country { CN, RU }
    ranges4: tuple[tuple[int, int], ...] = ()
    labels4: tuple[str, ...] = ()
    ranges6: tuple[tuple[int, int], ...] = ()
    labels6: tuple[str, ...] = ()

    def label_of(self, addr: bytes) -> str | None:
        """The value that put ADDR (4 or 16 packed bytes) in the set; None when outside."""
        ranges, labels = (
            (self.ranges4, self.labels4) if len(addr) == 4 else (self.ranges6, self.labels6)
        )
        value = int.from_bytes(addr, "big")
        lo, hi = 0, len(ranges)
        while lo < hi:  # the last range that starts at or before value
            mid = (lo + hi) // 2
            if ranges[mid][0] <= value:
                lo = mid + 1
            else:
                hi = mid
        if lo and ranges[lo - 1][1] >= value:
            return labels[lo - 1]
        return None


@dataclass(frozen=True, slots=True)
class AddrSpec:
    """An address constraint for one endpoint.

    nets4/nets6 are (network as int, prefix length). dynamic names runtime tables whose
    members change while the policy runs (blocks). `negated` inverts the whole constraint,
    within the families it speaks of (as nftables: `ip saddr != 10.0.0.0/8` is IPv4 only)."""

    negated: bool
    nets4: tuple[tuple[int, int], ...] = ()
    nets6: tuple[tuple[int, int], ...] = ()
    dynamic: tuple[str, ...] = ()
    # The static tables whose networks nets4/nets6 include: the nft translator loads a large
    # one as named sets instead of writing its networks into the rule. Not part of the
    # meaning (the networks are), so not compared.
    tables: tuple[str, ...] = field(default=(), compare=False)
    # A geo clause's networks: which country, AS number or organisation put each there.
    geo: GeoLabels | None = field(default=None, compare=False)

    @property
    def families(self) -> frozenset[int] | None:
        """The families this constraint can match; None when a dynamic table keeps it open."""
        if self.dynamic or not (self.nets4 or self.nets6):
            return None  # a dynamic table, or an empty set (no family to speak of)
        fams = set()
        if self.nets4:
            fams.add(4)
        if self.nets6:
            fams.add(6)
        return frozenset(fams)


@dataclass(frozen=True, slots=True)
class PortSpec:
    negated: bool
    ranges: tuple[tuple[int, int], ...]  # inclusive, merged and sorted

    def contains(self, port: int) -> bool:
        inside = any(lo <= port <= hi for lo, hi in self.ranges)
        return inside != self.negated


@dataclass(frozen=True, slots=True)
class IfaceSpec:
    negated: bool
    names: tuple[str, ...]  # a trailing '*' is a prefix wildcard (as nftables' "eth*")

    def matches(self, name: str | None) -> bool:
        if name is None:
            return self.negated
        hit = any(name.startswith(n[:-1]) if n.endswith("*") else name == n for n in self.names)
        return hit != self.negated


@dataclass(frozen=True, slots=True)
class LimitSpec:
    rate: float  # packets per second
    burst: int
    per: str  # src | dst | flow | rule
    else_action: str | None  # verdict for packets over the rate; None: the rule does not match
    text: str


@dataclass(frozen=True, slots=True)
class RewriteSpec:
    ttl: int | None = None
    dscp: int | None = None
    dport: int | None = None
    daddr: bytes | None = None
    replace: tuple[tuple[bytes, bytes], ...] = ()


# The application-layer clauses: (protocol word, field word) -> (the AppFields attribute it
# reads, how its value is written). ips/core/app_fields.py says what each field holds.
APP_FIELDS: dict[tuple[str, str], tuple[str, str]] = {
    ("tls", "sni"): ("tls_sni", "names"),
    ("tls", "ja3"): ("tls_ja3", "exact"),
    ("tls", "ja4"): ("tls_ja4", "exact"),
    ("quic", "sni"): ("quic_sni", "names"),
    ("dns", "query"): ("dns_queries", "names"),
    ("http", "host"): ("http_host", "names"),
    ("http", "method"): ("http_method", "exact"),
    ("http", "uri"): ("http_uri", "contains"),
    ("http", "user-agent"): ("http_user_agent", "contains"),
}
APP_PROTOS = ("tls", "http", "dns", "ssh", "quic", "unknown")
# What a pending clause waits for, by its protocol word (`ipsctl explain` says it).
APP_NEEDS = {
    "app": "the first bytes of the flow",
    "tls": "the ClientHello",
    "quic": "the client's QUIC Initial",
    "dns": "the DNS query",
    "http": "the HTTP request",
}


@dataclass(frozen=True, slots=True)
class AppCondition:
    """One application-layer clause of a rule: `app tls`, `tls sni "*.bad.lab"`, `http uri
    contains "/admin"`. It reads one field of the flow's AppFields (or, for `app`, the
    flow's app_proto) and holds as a whole or not at all; `negated` inverts a known value.

    kind      names: a NameSet (suffix lookup); exact: one of `values`; contains: `text` is
              in the field (both lower-case with nocase); proto: app_proto is in `values`
    clause    how it is named: "tls sni", "dns query", "app", "http uri contains"
    shown     its value as written, for explain"""

    clause: str
    field: str
    kind: str
    negated: bool = False
    names: NameSet | None = None
    values: frozenset[str] = frozenset()
    text: str = ""
    nocase: bool = False
    shown: str = ""

    @property
    def proto_word(self) -> str:
        return self.clause.split(" ", 1)[0]

    @property
    def needs(self) -> str:
        """What the clause waits for while it is pending."""
        return APP_NEEDS.get(self.proto_word, "the application layer")


@dataclass(slots=True)
class RuleSpec:
    index: int  # position in first-match order, from 0
    action: str  # accept | drop | reject | rewrite | match
    span: Span
    text: str
    families: frozenset[int] = frozenset((4, 6))
    protos: frozenset[int] | None = None  # None: any protocol
    src: AddrSpec | None = None
    dst: AddrSpec | None = None
    sport: PortSpec | None = None
    dport: PortSpec | None = None
    iif: IfaceSpec | None = None  # `in on X`
    oif: IfaceSpec | None = None  # `out on X`
    anyif: IfaceSpec | None = None  # `on X`: either way
    direction: str | None = None  # `in` / `out` without an interface
    flags: tuple[int, int] | None = None  # (value, mask)
    icmp_types: frozenset[int] | None = None
    icmp_code: int | None = None
    length: tuple[str, int, int] | None = None  # (op, lo, hi)
    states: frozenset[str] | None = None
    fragment: bool = False
    contains: tuple[tuple[bytes, bool], ...] = ()
    # How far into each direction of a flow `contains` reads, in bytes (`depth 8k`); None:
    # the policy's `set payload-depth`; UNLIMITED_DEPTH: the whole flow.
    depth: int | None = None
    limit: LimitSpec | None = None
    rewrite: RewriteSpec | None = None
    reject_with: tuple[str, int | None] | None = None  # ("tcp-reset"|"icmp"|"icmpv6", code)
    alert: bool = False
    message: str | None = None
    log: bool = False
    inspect: bool = False  # flows this rule could match are never offloaded
    app: tuple[AppCondition, ...] = ()  # application-layer clauses (all must hold)
    sid: int | None = None
    severity: int = 2
    label: str | None = None

    @property
    def name(self) -> str:
        """How the rule is named in counters and events."""
        return self.label or f"{self.span.file}:{self.span.line}"

    @property
    def has_dynamic(self) -> bool:
        """True when the rule needs more than the flow's addresses, ports and interfaces."""
        return bool(
            self.flags
            or self.icmp_types is not None
            or self.length
            or self.states
            or self.fragment
            or self.contains
            or self.limit
            or self.app
            or (self.src and self.src.dynamic)
            or (self.dst and self.dst.dynamic)
        )


@dataclass(slots=True)
class TableSpec:
    name: str
    kind: str  # static | file | dynamic | geo (the networks of a geo clause, made by ipsctl)
    span: Span
    nets4: tuple[tuple[int, int], ...] = ()
    nets6: tuple[tuple[int, int], ...] = ()
    timeout: float | None = None  # dynamic: default entry lifetime in seconds
    size: int = 65536
    # A table of domain name patterns (used by `tls sni @t`, `dns query @t`, ...) instead of
    # addresses: which one a table is follows from the clauses that use it.
    names: NameSet | None = None
    # A file table (a reputation list): where it was read from, how often the daemon reads
    # it again (seconds; None: only at apply), whether a bad line refuses the whole file
    # ("refuse") or only itself ("skip"), and whether a file without entries may empty it.
    path: str | None = None
    refresh: float | None = None
    on_error: str = "refuse"
    allow_empty: bool = False

    @property
    def entries(self) -> int:
        return len(self.names) if self.names is not None else len(self.nets4) + len(self.nets6)


@dataclass(slots=True)
class DetectSpec:
    name: str  # the detector (portscan, udpflood, volume …)
    span: Span
    params: dict[str, object]
    # Its key in Policy.detectors, stats and `detector:KEY` drop reasons: the name, but for the
    # second flood line of a name (NAME-src or NAME-dst: a flood measured per source and per
    # destination) and the later `detect volume` lines (volume-2, volume-3 …).
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = self.name

    def number(self, key: str) -> float:
        """A numeric parameter (a count, a rate, a duration in seconds). The resolver stores
        only numbers under these keys; anything else is a bug, said as such."""
        value = self.params[key]
        if not isinstance(value, int | float):
            raise TypeError(f"detector {self.name}: {key} is {value!r}, not a number")
        return float(value)


@dataclass(frozen=True, slots=True)
class DetectorSchema:
    options: frozenset[str]
    defaults: dict[str, object]
    response: str  # block | limit | alert


# The UDP services that answer a small request with a large (or many) datagrams, after
# US-CERT TA14-017A "UDP-Based Amplification Attacks": QOTD 17, CharGEN 19, DNS 53, portmap
# 111, NTP 123, NetBIOS 137, SNMP 161, CLDAP 389, ISAKMP 500, RIPv1 520, SSDP 1900, ARD 3283,
# WS-Discovery 3702, mDNS 5353, CoAP 5683, memcached 11211 (as inclusive port ranges).
AMPLIFIER_PORTS: tuple[tuple[int, int], ...] = tuple(
    (p, p)
    for p in (17, 19, 53, 111, 123, 137, 161, 389, 500, 520, 1900, 3283, 3702, 5353, 5683, 11211)
)

# What each detector accepts, and its defaults. The reasons for these numbers are in the
# detector table of docs/language.md; the detectors themselves are in ips/detect/.
DETECTORS: dict[str, DetectorSchema] = {
    "portscan": DetectorSchema(
        frozenset({"ports", "within", "block", "alert", "ignore"}),
        {"ports": 15, "within": 60.0, "block": 600.0},
        "block",
    ),
    "sweep": DetectorSchema(
        frozenset({"hosts", "within", "block", "alert", "ignore"}),
        {"hosts": 25, "within": 60.0, "block": 600.0},
        "block",
    ),
    "stealth": DetectorSchema(
        frozenset({"count", "within", "block", "alert", "ignore"}),
        {"count": 3, "within": 60.0, "block": 3600.0},
        "block",
    ),
    "icmpflood": DetectorSchema(
        frozenset({"rate", "per", "block", "limit", "alert", "ignore"}),
        {"rate": 200.0, "per": "src"},
        "limit",
    ),
    "synflood": DetectorSchema(
        frozenset({"rate", "per", "block", "limit", "alert", "ignore"}),
        {"rate": 500.0, "per": "dst"},
        "limit",
    ),
    "udpflood": DetectorSchema(
        frozenset({"rate", "per", "block", "limit", "alert", "ignore"}),
        {"rate": 5000.0, "per": "src"},
        "limit",
    ),
    # A long window over what portscan and sweep weigh (ips/detect/slowscan.py); "distributed"
    # is None when off. It only alerts unless told to block: its evidence is hours old.
    "slowscan": DetectorSchema(
        frozenset({"ports", "hosts", "distributed", "within", "block", "alert", "ignore"}),
        {"ports": 15, "hosts": 50, "distributed": 20, "within": 21600.0},
        "alert",
    ),
    # Unsolicited answers converging on one destination (ips/detect/reflection.py). It limits
    # at the victim and bans nobody: the packets come from real amplifiers (or servers)
    # answering a forged address, and banning them is what the attacker wants.
    "reflection": DetectorSchema(
        frozenset({"rate", "sources", "within", "port", "block", "limit", "alert", "ignore"}),
        {"rate": 100.0, "sources": 20, "within": 10.0, "port": AMPLIFIER_PORTS},
        "limit",
    ),
    # Bare ACKs (nmap -sA/-sW/-sM) of flows never seen opening, judged without answers
    # (ips/detect/ackscan.py); it alerts: silence is weak evidence, and ACKs are forged freely.
    "ackscan": DetectorSchema(
        frozenset({"ports", "within", "block", "alert", "ignore"}),
        {"ports": 25, "within": 60.0},
        "alert",
    ),
    # Volume over a rate (ips/detect/volume.py): `bytes` or `packets` (one of them, no default).
    "volume": DetectorSchema(
        frozenset({"bytes", "packets", "per", "port", "block", "limit", "alert", "ignore"}),
        {"per": "dst"},
        "alert",
    ),
}

# Detectors that may be given more than once: a flood once per source and once per
# destination (its `per` tells the lines apart), volume any number of times.
REPEATABLE = frozenset({"icmpflood", "synflood", "udpflood", "volume"})
# A flood line's default rate when its `per` is not the detector's default (packets/s). The
# reasons are in docs/language.md: per destination the rate is the sum over every source.
FLOOD_RATES: dict[tuple[str, str], float] = {
    ("icmpflood", "dst"): 500.0,
    ("synflood", "src"): 200.0,
    ("udpflood", "dst"): 10000.0,
}

# Detector alerts use signature ids from this reserved range (one block of 100 per detector,
# in DETECTORS order: portscan 9000100-9000199, sweep 9000200-..., udpflood 9000600-...), so
# a rule's `sid` may not take one of them.
DETECTOR_SID_FIRST = 9_000_000
DETECTOR_SID_LAST = 9_000_999
DETECTOR_SID_BASE: dict[str, int] = {
    name: DETECTOR_SID_FIRST + 100 * (i + 1) for i, name in enumerate(list(DETECTORS)[:7])
}
# The block of 100 at 9000900 is the supervisor's (unjudged packets, 9000901): the detectors
# added after slowscan share the block at 9000800, 20 ids each.
DETECTOR_SID_BASE |= {"reflection": 9_000_800, "ackscan": 9_000_820, "volume": 9_000_840}
assert set(DETECTOR_SID_BASE) == set(DETECTORS)

# The alert of a forged source (ips/engine/evidence.py): from the reserved range's first block.
SPOOF_SID = DETECTOR_SID_FIRST + 1

# Table names with a fixed meaning for the detectors.
BAN_TABLE = "banned"  # dynamic: where detector (and manual) blocks go; mirrored in nftables
TRUSTED_TABLE = "trusted"  # never blocked by a detector
# The MACs of the real senders of forged packets (ips/engine/evidence.py): an nftables set of
# ether addresses (not a policy table), dropped on the interfaces packets come in on.
ETHER_BAN_TABLE = "banned_ether"


@dataclass(frozen=True, slots=True)
class OptionSchema:
    """A `set NAME VALUE` option.

    kind    choice: one of `choices`; int: a whole number; duration: 30s, 10m, 24h (seconds);
            text: a quoted string; size: 64k, 1M, a number of bytes, or `unlimited` (0)
    minimum/maximum bound int and duration values (inclusive)."""

    choices: tuple[str, ...]
    default: str | int | float
    help: str
    kind: str = "choice"
    minimum: float = 0
    maximum: float = 0


DEFAULT_TABLE_MAX_ENTRIES = 2_000_000

# `payload contains` reads the first bytes of each direction of a flow, as Suricata's stream
# depth (stream.reassembly.depth, 1 MiB by default); past them it matches nothing, and a flow
# whose candidate rules are all past their depth may be offloaded (docs/offload.md).
DEFAULT_PAYLOAD_DEPTH = 1 << 20
MAX_PAYLOAD_DEPTH = 1 << 30
UNLIMITED_DEPTH = 0  # `unlimited`: every byte of the flow (and never offloaded by depth)
# The application protocols whose payload is ciphertext once their handshake is done: with
# `set encrypted-payload skip` (the default, as Suricata's `encryption-handling: default`),
# `payload contains` does not read a flow the inspector named one of these.
ENCRYPTED_APPS = frozenset({"tls", "ssh", "quic"})

OPTIONS: dict[str, OptionSchema] = {
    "default": OptionSchema(
        ("accept", "drop", "reject"), "accept", "verdict for packets no rule matched"
    ),
    "on-error": OptionSchema(
        ("accept", "drop"), "accept", "verdict when the engine fails on a packet (fail-open)"
    ),
    "malformed": OptionSchema(
        ("drop", "accept"), "drop", "verdict for packets the decoder cannot make sense of"
    ),
    # A spoofed-source attack can make a detector want to ban thousands of addresses; the
    # budget caps the damage of a false positive at N bans a minute (manual blocks are free).
    "ban-budget": OptionSchema(
        (), 30, "most new detector blocks per minute", kind="int", minimum=1, maximum=1_000_000
    ),
    # Repeat offenders: each new block of the same address lasts FACTOR times the last one.
    "ban-escalation": OptionSchema(
        (),
        2,
        "block duration factor for a repeat offender (1: none)",
        kind="int",
        minimum=1,
        maximum=100,
    ),
    "ban-max": OptionSchema(
        (),
        86_400.0,
        "longest block escalation may reach",
        kind="duration",
        minimum=1,
        maximum=365 * 86_400,
    ),
    # Detector state is per source (or source and target): bounded so that a flood of spoofed
    # sources cannot grow it without limit; the oldest entries are evicted (and counted).
    "detect-memory": OptionSchema(
        (),
        65_536,
        "most addresses each detector tracks",
        kind="int",
        minimum=16,
        maximum=16_777_216,
    ),
    # Each scan detector holds every probe until its answer is weighed (2 s): with its flow.
    # A flood of spoofed sources makes one probe each; this caps them (the oldest is
    # forgotten, counted in `probes_dropped`), and one key (a source, or a source and host)
    # may hold at most 4 x its threshold of them (`probes_skipped`). See ips/detect/scan.py.
    "detect-probes": OptionSchema(
        (),
        16_384,
        "most probes each scan detector holds while their answers are due",
        kind="int",
        minimum=16,
        maximum=16_777_216,
    ),
    # A tap only watches: detector blocks are reported (ipsctl_block, enforced false) unless
    # the policy asks for them to go into the kernel's block sets of the tap host itself.
    # Offload: an accepted flow whose later packets no rule needs to see goes on in the
    # kernel (a conntrack mark) instead of through the queue. See docs/offload.md.
    "offload": OptionSchema(
        ("on", "off"), "on", "let the kernel pass decided flows without the queue"
    ),
    # With the queue's fail-open flag (the default), a full queue lets packets through
    # without inspection: an alert (and a `stats` event) says so when it starts, and at most
    # once a minute while it lasts. See docs/operations.md, "Fail mode".
    "fail-open-alert": OptionSchema(
        ("on", "off"), "on", "alert when packets pass without inspection (the queue was full)"
    ),
    # Floods absorbed in the kernel, before the queue: TCP connections through the gateway
    # are answered by the kernel's SYN proxy (syncookies) and reach the queue only once the
    # client completed its handshake. See docs/operations.md, "Floods".
    "synproxy": OptionSchema(
        ("off", "on"), "off", "complete TCP handshakes in the kernel (nftables synproxy)"
    ),
    # A static or file table is held by the engine and loaded into the kernel: 1,000,000
    # entries apply in seconds; a larger table is refused at check time, before any of it
    # reaches the kernel (docs/language.md, "Tables").
    "table-max-entries": OptionSchema(
        (),
        DEFAULT_TABLE_MAX_ENTRIES,
        "most entries a static or file table may have",
        kind="int",
        minimum=1,
        maximum=16_777_216,
    ),
    # A detector's block needs evidence that the address really sent the packets (the MAC
    # of the neighbour entry, a handshake): forged sources are never blocked, their sender is
    # (by MAC). strict: an address of the segment needs proof; proof: every address; loose:
    # only what is shown forged is refused. See ips/engine/evidence.py, docs/language.md.
    "block-evidence": OptionSchema(
        ("strict", "proof", "loose"), "strict", "what a detector's block needs as evidence"
    ),
    # What a `reject` decided by a `dns query` clause answers a DNS query over UDP with: a
    # response from the server's address saying the name does not exist, or that the
    # server refuses to answer (docs/language.md, "Application layer").
    "dns-reject": OptionSchema(
        ("nxdomain", "refused"), "nxdomain", "the answer a rejected DNS query gets"
    ),
    "tap-blocks": OptionSchema(
        ("report", "enforce"), "report", "tap mode: report detector blocks, or enforce them"
    ),
    # The application layer (ips/app/inspect.py, docs/application-layer.md): protocol
    # detection, the first bytes of each TCP direction reassembled and read by the TLS,
    # HTTP, SSH and DNS parsers, QUIC Initials, DNS datagrams; events and L7 fields. off:
    # none of it (no app_proto, no events, L7 clauses never match).
    "app-layer": OptionSchema(
        ("on", "off"), "on", "application-layer detection, parsing and events"
    ),
    "app-stream-bytes": OptionSchema(
        (),
        4096,
        "bytes reassembled from the start of each direction of a TCP flow",
        kind="int",
        minimum=64,
        maximum=1 << 20,
    ),
    "app-memcap": OptionSchema(
        (),
        32 * 1024 * 1024,
        "bytes of reassembly all flows may hold together",
        kind="int",
        minimum=4096,
        maximum=1 << 34,
    ),
    # How far into each direction of a flow `payload contains` reads (a rule's `depth`
    # overrides it): a size (64k, 1M), a number of bytes, or `unlimited`. See docs/offload.md.
    "payload-depth": OptionSchema(
        (),
        DEFAULT_PAYLOAD_DEPTH,
        "bytes of each direction of a flow that `payload contains` reads",
        kind="size",
        minimum=1,
        maximum=MAX_PAYLOAD_DEPTH,
    ),
    # TLS, SSH and QUIC carry ciphertext past their handshake: `payload contains` does not
    # read a flow named one of them (skip), unless told to (inspect).
    "encrypted-payload": OptionSchema(
        ("skip", "inspect"), "skip", "whether `payload contains` reads TLS, SSH and QUIC flows"
    ),
    # Where the country and ASN databases of geo clauses (`from country RU`) are read
    # (docs/geo.md): "" is $IPSCTL_GEO_DIR, else /var/lib/ipsctl/geo. The site file, whose
    # networks come before the databases', is named relative to the policy file.
    "geo-dir": OptionSchema((), "", "the directory of the geo databases", kind="text"),
    "geo-site": OptionSchema((), "", "a site file naming local networks", kind="text"),
    # Reverse DNS of the responders that passive DNS has no name for, for display (flows,
    # top, EVE's ipsctl.dst_rdns): asked of the system resolver in the background by the
    # daemon, cached and bounded (ips/geo/rdns.py, docs/geo.md). Off: no query is ever sent.
    "reverse-dns": OptionSchema(
        ("on", "off"), "off", "reverse DNS names of responders, for display"
    ),
}

# Table files that a table's `on-error` may say: the whole file refused, or the bad line only.
TABLE_ON_ERROR = ("refuse", "skip")


@dataclass(slots=True)
class Policy:
    rules: list[RuleSpec] = field(default_factory=list)
    tables: dict[str, TableSpec] = field(default_factory=dict)
    options: dict[str, str | int | float] = field(default_factory=dict)
    detectors: dict[str, DetectSpec] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # file -> text, for diagnostics
    files: list[str] = field(default_factory=list)  # in include order
    digest: str = ""  # sha256 of the sources, to tell which policy is running
    warnings: list[Diagnostic] = field(default_factory=list)
    # Where the fields of who is on the other end come from (ips/geo/enrich.py): the geo
    # databases' directory and the site map, as `set geo-dir` / `set geo-site` say (else
    # $IPSCTL_GEO_DIR or the default, and no site map). Set by the resolver.
    geo_dir: str = ""
    geo_sites: Any = None

    def option(self, name: str) -> str | int | float:
        """The value of `set NAME`, or its default."""
        return self.options.get(name, OPTIONS[name].default)

    @property
    def default_verdict(self) -> str:
        return str(self.option("default"))

    @property
    def on_error(self) -> str:
        return str(self.option("on-error"))

    @property
    def malformed_verdict(self) -> str:
        return str(self.option("malformed"))

    @property
    def ban_budget(self) -> int:
        return int(self.option("ban-budget"))

    @property
    def ban_escalation(self) -> int:
        return int(self.option("ban-escalation"))

    @property
    def ban_max(self) -> float:
        return float(self.option("ban-max"))

    @property
    def offload(self) -> bool:
        return self.option("offload") == "on"

    @property
    def fail_open_alert(self) -> bool:
        return self.option("fail-open-alert") == "on"

    @property
    def synproxy(self) -> bool:
        return self.option("synproxy") == "on"

    @property
    def tap_blocks_enforced(self) -> bool:
        return self.option("tap-blocks") == "enforce"

    @property
    def block_evidence(self) -> str:
        return str(self.option("block-evidence"))

    @property
    def dns_reject_rcode(self) -> int:
        """The RCODE of the answer to a rejected DNS query: NXDOMAIN (3) or REFUSED (5)."""
        return 5 if self.option("dns-reject") == "refused" else 3

    @property
    def detect_memory(self) -> int:
        return int(self.option("detect-memory"))

    @property
    def detect_probes(self) -> int:
        return int(self.option("detect-probes"))

    @property
    def app_layer(self) -> bool:
        return self.option("app-layer") == "on"

    @property
    def app_stream_bytes(self) -> int:
        return int(self.option("app-stream-bytes"))

    @property
    def app_memcap(self) -> int:
        return int(self.option("app-memcap"))

    @property
    def payload_depth(self) -> int:
        """Bytes of each direction `payload contains` reads; UNLIMITED_DEPTH (0): all."""
        return int(self.option("payload-depth"))

    @property
    def encrypted_payload_skipped(self) -> bool:
        return self.option("encrypted-payload") == "skip"

    def depth_of(self, rule: RuleSpec) -> int:
        """The depth a rule's `payload contains` reads to: its own, or the policy's."""
        return self.payload_depth if rule.depth is None else rule.depth
