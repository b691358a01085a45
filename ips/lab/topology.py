"""Lab topologies: a small YAML file describing segments (L2 networks) and nodes (hosts).

Pure: parsing and validation only; `ips.lab.netns` brings a topology up. Every problem is
reported with the file, the line and the dotted key that holds it, all in one pass:

    labs/x.yaml:14: nodes.client.interfaces[0].segment: unknown segment 'lam' (did you mean 'lan'?)

The format (see labs/gateway.yaml for a commented example):

    name: gateway                     # optional; defaults to the file's stem
    segments: [lan, dmz]              # each a bridge in the lab's hidden switch namespace
    nodes:
      NODE:
        forwarding: true              # optional: net.ipv4.ip_forward, ipv6 all.forwarding
        sysctls: {KEY: VALUE}         # optional: written inside the node's namespace
        interfaces:
          - name: eth0                # interface name inside the node (<= 15 characters)
            segment: lan
            addresses: [10.10.1.20/24, fd00:10:1::20/64]     # with prefix length
            extra_addresses: 10.10.2.100-10.10.2.131         # optional: host (/32, /128)
                                                             # addresses, ranges or single
        routes:
          - {to: default, via: 10.10.1.1}                    # `to`: default or a network
        services:
          - {kind: http, port: 80}     # http | tcp-echo | udp-echo
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SERVICE_KINDS = ("http", "tcp-echo", "udp-echo")
SERVICE_PROTO = {"http": "tcp", "tcp-echo": "tcp", "udp-echo": "udp"}

# Names become namespace names, bridge names ("br-" + segment) and switch port names, so they
# are kept short and shell-safe. Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
IFNAMSIZ = 15
MAX_SEGMENT = IFNAMSIZ - len("br-")
MAX_NODE = 24
RESERVED_NODES = {"sw"}  # `{prefix}sw` is the switch namespace
MAX_EXTRA = 4096  # a range is for sweep targets, not for a /16 of host routes

TOP_KEYS = ("name", "segments", "nodes")
NODE_KEYS = ("interfaces", "routes", "forwarding", "sysctls", "services")
IFACE_KEYS = ("name", "segment", "addresses", "extra_addresses")
ROUTE_KEYS = ("to", "via")
SERVICE_KEYS = ("kind", "port")


# ---- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interface:
    name: str
    segment: str
    addresses: tuple[IPInterface, ...]  # with their prefix: these make the connected routes
    extra_addresses: tuple[IPAddress, ...] = ()  # host addresses (/32, /128), e.g. sweep targets
    extra_spec: tuple[str, ...] = ()  # as written ("a-b"), for short listings


@dataclass(frozen=True)
class Route:
    to: IPNetwork  # 0.0.0.0/0 or ::/0 for `default`
    via: IPAddress

    @property
    def is_default(self) -> bool:
        return self.to.prefixlen == 0


@dataclass(frozen=True)
class Service:
    kind: str  # http | tcp-echo | udp-echo
    port: int

    @property
    def proto(self) -> str:
        return SERVICE_PROTO[self.kind]


@dataclass(frozen=True)
class Node:
    name: str
    interfaces: tuple[Interface, ...]
    routes: tuple[Route, ...] = ()
    forwarding: bool = False
    sysctls: Mapping[str, str] = field(default_factory=dict)
    services: tuple[Service, ...] = ()

    def all_sysctls(self) -> dict[str, str]:
        """The sysctls to write: `forwarding` expanded first, so explicit ones can override."""
        out: dict[str, str] = {}
        if self.forwarding:
            out["net.ipv4.ip_forward"] = "1"
            out["net.ipv6.conf.all.forwarding"] = "1"
        out.update(self.sysctls)
        return out

    def addresses(self) -> list[IPAddress]:
        """Every address of the node (primary, then extra), in file order."""
        out: list[IPAddress] = []
        for iface in self.interfaces:
            out.extend(a.ip for a in iface.addresses)
            out.extend(iface.extra_addresses)
        return out


@dataclass(frozen=True)
class Topology:
    name: str
    segments: tuple[str, ...]
    nodes: Mapping[str, Node]
    path: str | None = None  # the file it came from, if any

    def node(self, name: str) -> Node:
        return self.nodes[name]


# ---- errors ------------------------------------------------------------------------------------


class TopologyError(ValueError):
    """All problems of one topology file; str() is one line per problem."""

    def __init__(self, source: str, problems: list[tuple[int | None, str, str]]) -> None:
        self.source = source
        self.problems = problems  # (line or None, dotted key, message)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        out = []
        for line, key, message in self.problems:
            where = f"{self.source}:{line}" if line else self.source
            out.append(f"{where}: {key}: {message}" if key else f"{where}: {message}")
        return out


def did_you_mean(word: str, choices: Iterator[str] | list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---- loading -----------------------------------------------------------------------------------


def load(path: str | Path) -> Topology:
    """Read and validate a topology file; raises TopologyError (also for a missing file)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(str(path), [(None, "", f"cannot read: {exc.strerror}")]) from None
    return parse(text, source=str(path), default_name=path.stem)


def parse(text: str, source: str = "<topology>", default_name: str = "lab") -> Topology:
    """Validate a topology given as YAML text; `source` names it in errors."""
    try:
        root_node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise TopologyError(source, [(line, "", f"not valid YAML: {problem}")]) from None
    checker = _Checker(source, root_node)
    # YAML itself lets a repeated key replace the earlier one without a word: two nodes of one
    # name would merge into one and an address would be lost. Each repeat is a problem here.
    checker.problems.extend(_duplicate_keys(root_node))
    topo = checker.topology(data, default_name)
    if checker.problems:
        raise TopologyError(source, checker.problems)
    assert topo is not None
    path = source if source != "<topology>" else None
    return Topology(topo.name, topo.segments, topo.nodes, path)


Key = tuple[str | int, ...]


def _dotted(key: Key) -> str:
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _duplicate_keys(root: yaml.Node | None) -> list[tuple[int | None, str, str]]:
    """Every key that repeats one earlier in the same mapping, anywhere in the document, with
    the line of the repeat and of the first one (the composed tree keeps both; safe_load keeps
    only the last value)."""
    problems: list[tuple[int | None, str, str]] = []
    seen_nodes: set[int] = set()  # an alias repeats a node: walk each once (and stop cycles)
    stack: list[tuple[yaml.Node, Key]] = [(root, ())] if root is not None else []
    while stack:
        node, key = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
                    continue
                line = k.start_mark.line + 1
                where = (*key, k.value)
                if k.value in first_line:
                    what = "node" if key == ("nodes",) else "key"
                    problems.append(
                        (
                            line,
                            _dotted(where),
                            (
                                f"{what} '{k.value}' is defined twice (first at line "
                                f"{first_line[k.value]}); YAML would keep only this one"
                            ),
                        )
                    )
                else:
                    first_line[k.value] = line
                stack.append((v, where))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*key, i)) for i, item in enumerate(node.value))
    return sorted(problems, key=lambda p: p[0] or 0)


class _Checker:
    """Walks the parsed YAML; records problems with the line of the offending key (found in
    the composed node tree, which keeps source positions that safe_load drops)."""

    def __init__(self, source: str, root: yaml.Node | None) -> None:
        self.source = source
        self.root = root
        self.problems: list[tuple[int | None, str, str]] = []

    def line_of(self, key: Key) -> int | None:
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        for part in key:
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == part:
                        node, line = v, k.start_mark.line + 1
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    return line
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def error(self, key: Key, message: str) -> None:
        self.problems.append((self.line_of(key), _dotted(key), message))

    # -- shapes --

    def mapping(self, value: Any, key: Key, allowed: tuple[str, ...], what: str) -> dict | None:
        if not isinstance(value, dict):
            self.error(key, f"{what} must be a mapping (key: value), not {_kind(value)}")
            return None
        for k in value:
            if not isinstance(k, str) or k not in allowed:
                hint = did_you_mean(str(k), allowed) or f" (expected one of: {', '.join(allowed)})"
                self.error((*key, str(k)), f"unknown key '{k}' in {what}{hint}")
        return value

    def seq(self, value: Any, key: Key, what: str) -> list | None:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(key, f"{what} must be a list, not {_kind(value)}")
            return None
        return value

    def name(self, value: Any, key: Key, what: str, max_len: int, pattern: re.Pattern) -> bool:
        if not isinstance(value, str) or not value:
            self.error(key, f"{what} must be a non-empty string, not {_kind(value)}")
            return False
        if not pattern.match(value):
            self.error(
                key,
                f"{what} '{value}' may only use letters, digits, '-' and '_'"
                + (" (lower case)" if pattern is NAME_RE else ""),
            )
            return False
        if len(value) > max_len:
            self.error(key, f"{what} '{value}' is longer than {max_len} characters")
            return False
        return True

    # -- the document --

    def topology(self, data: Any, default_name: str) -> Topology | None:
        if data is None:
            self.error((), "the file is empty: expected 'segments' and 'nodes'")
            return None
        doc = self.mapping(data, (), TOP_KEYS, "the topology")
        if doc is None:
            return None
        name = doc.get("name", default_name)
        if not isinstance(name, str) or not name:
            self.error(("name",), f"name must be a non-empty string, not {_kind(name)}")
        for required in ("segments", "nodes"):
            if required not in doc:
                self.error((), f"missing key '{required}'")
        segments = self.segments(doc.get("segments"))
        nodes: dict[str, Node] = {}
        raw_nodes = doc.get("nodes")
        if "nodes" in doc and not isinstance(raw_nodes, dict):
            self.error(
                ("nodes",), f"nodes must be a mapping of node name to node, not {_kind(raw_nodes)}"
            )
        elif isinstance(raw_nodes, dict):
            if not raw_nodes:
                self.error(("nodes",), "no nodes")
            for node_name, raw in raw_nodes.items():
                key: Key = ("nodes", str(node_name))
                if not self.name(node_name, key, "node name", MAX_NODE, NAME_RE):
                    continue
                if node_name in RESERVED_NODES:
                    self.error(key, f"node name '{node_name}' is reserved (the switch namespace)")
                    continue
                node = self.node(node_name, raw, key, segments)
                if node is not None:
                    nodes[node_name] = node
        self.cross_checks(nodes)
        if self.problems:
            return None
        return Topology(str(name), tuple(segments), nodes)

    def segments(self, value: Any) -> list[str]:
        items = self.seq(value, ("segments",), "segments") if value is not None else None
        out: list[str] = []
        for i, seg in enumerate(items or []):
            if not self.name(seg, ("segments", i), "segment name", MAX_SEGMENT, NAME_RE):
                continue
            if seg in out:
                self.error(("segments", i), f"segment '{seg}' is listed twice")
                continue
            out.append(seg)
        if value is not None and items is not None and not items:
            self.error(("segments",), "no segments")
        return out

    def node(self, name: str, raw: Any, key: Key, segments: list[str]) -> Node | None:
        if raw is None:
            self.error(key, "a node needs 'interfaces'")
            return None
        doc = self.mapping(raw, key, NODE_KEYS, f"node '{name}'")
        if doc is None:
            return None
        start = len(self.problems)
        if "interfaces" not in doc:
            self.error(key, f"node '{name}' has no 'interfaces'")
        interfaces: list[Interface] = []
        for i, raw_if in enumerate(
            self.seq(doc.get("interfaces"), (*key, "interfaces"), "interfaces") or []
        ):
            iface = self.interface(raw_if, (*key, "interfaces", i), segments)
            if iface is None:
                continue
            if any(x.name == iface.name for x in interfaces):
                self.error(
                    (*key, "interfaces", i, "name"),
                    f"interface '{iface.name}' is defined twice on node '{name}'",
                )
                continue
            interfaces.append(iface)
        if "interfaces" in doc and not interfaces and len(self.problems) == start:
            self.error((*key, "interfaces"), f"node '{name}' has no interfaces")

        routes: list[Route] = []
        for i, raw_r in enumerate(self.seq(doc.get("routes"), (*key, "routes"), "routes") or []):
            route = self.route(raw_r, (*key, "routes", i), interfaces)
            if route is not None:
                if any(r.to == route.to for r in routes):
                    self.error((*key, "routes", i, "to"), f"a second route to {route.to}")
                    continue
                routes.append(route)

        forwarding = doc.get("forwarding", False)
        if not isinstance(forwarding, bool):
            self.error(
                (*key, "forwarding"), f"forwarding must be true or false, not {_kind(forwarding)}"
            )
            forwarding = False

        sysctls: dict[str, str] = {}
        raw_sys = doc.get("sysctls") or {}
        if not isinstance(raw_sys, dict):
            self.error(
                (*key, "sysctls"), f"sysctls must be a mapping (key: value), not {_kind(raw_sys)}"
            )
        else:
            for k, v in raw_sys.items():
                skey = (*key, "sysctls", str(k))
                if (
                    not isinstance(k, str)
                    or not re.match(r"^[A-Za-z0-9_.\-/]+$", k)
                    or ".." in k
                    or k.startswith(("/", "."))
                ):
                    self.error(skey, f"'{k}' is not a sysctl name (like net.ipv4.ip_forward)")
                elif not k.startswith("net."):
                    # Only net.* is per network namespace: anything else would change the host.
                    self.error(
                        skey,
                        f"'{k}' is not a net.* sysctl; only those belong to a network namespace",
                    )
                elif isinstance(v, bool):
                    sysctls[k] = "1" if v else "0"
                elif isinstance(v, int | str) and str(v).strip():
                    sysctls[k] = str(v)
                else:
                    self.error(skey, f"sysctl value must be a number or a string, not {_kind(v)}")

        services: list[Service] = []
        for i, raw_s in enumerate(
            self.seq(doc.get("services"), (*key, "services"), "services") or []
        ):
            svc = self.service(raw_s, (*key, "services", i))
            if svc is None:
                continue
            clash = next((s for s in services if s.proto == svc.proto and s.port == svc.port), None)
            if clash is not None:
                self.error(
                    (*key, "services", i, "port"),
                    f"{svc.proto} port {svc.port} is already used by {clash.kind}",
                )
                continue
            services.append(svc)
        if len(self.problems) > start:
            return None
        return Node(name, tuple(interfaces), tuple(routes), forwarding, sysctls, tuple(services))

    def interface(self, raw: Any, key: Key, segments: list[str]) -> Interface | None:
        doc = self.mapping(raw, key, IFACE_KEYS, "an interface")
        if doc is None:
            return None
        start = len(self.problems)
        for required in ("name", "segment"):
            if required not in doc:
                self.error(key, f"an interface needs '{required}'")
        name = doc.get("name")
        if (
            "name" in doc
            and self.name(name, (*key, "name"), "interface name", IFNAMSIZ, IFNAME_RE)
            and name == "lo"
        ):
            self.error((*key, "name"), "'lo' is the loopback interface; it is always there")
        seg = doc.get("segment")
        if "segment" in doc and seg not in segments:
            self.error(
                (*key, "segment"),
                f"unknown segment '{seg}'{did_you_mean(str(seg), segments)}"
                + ("" if segments else " (no segments are declared)"),
            )
        addrs: list[IPInterface] = []
        for i, raw_a in enumerate(
            self.seq(doc.get("addresses"), (*key, "addresses"), "addresses") or []
        ):
            addr = self.cidr(raw_a, (*key, "addresses", i))
            if addr is not None:
                addrs.append(addr)
        extra: list[IPAddress] = []
        spec: list[str] = []
        raw_extra = doc.get("extra_addresses")
        items = [raw_extra] if isinstance(raw_extra, str) else raw_extra
        for i, raw_x in enumerate(
            self.seq(items, (*key, "extra_addresses"), "extra_addresses") or []
        ):
            xkey = (
                (*key, "extra_addresses")
                if isinstance(raw_extra, str)
                else (*key, "extra_addresses", i)
            )
            got = self.address_range(raw_x, xkey)
            if got is not None:
                extra.extend(got)
                spec.append(str(raw_x))
        if len(extra) > MAX_EXTRA:
            self.error(
                (*key, "extra_addresses"), f"{len(extra)} extra addresses; at most {MAX_EXTRA}"
            )
        if len(self.problems) > start:
            return None
        return Interface(str(name), str(seg), tuple(addrs), tuple(extra), tuple(spec))

    def cidr(self, raw: Any, key: Key) -> IPInterface | None:
        if not isinstance(raw, str):
            self.error(
                key,
                f"expected an address with prefix length like 10.0.0.1/24, "
                f"not {_kind(raw)}{_ipv6_hint(raw)}",
            )
            return None
        if "/" not in raw:
            self.error(
                key,
                f"'{raw}' needs a prefix length (like {raw}/24 or {raw}/64); "
                "use extra_addresses for single host addresses",
            )
            return None
        try:
            return ipaddress.ip_interface(raw)
        except ValueError:
            self.error(key, f"'{raw}' is not an IPv4 or IPv6 address with prefix length")
            return None

    def address(self, raw: Any, key: Key, what: str = "an address") -> IPAddress | None:
        if not isinstance(raw, str):
            self.error(key, f"expected {what}, not {_kind(raw)}{_ipv6_hint(raw)}")
            return None
        try:
            return ipaddress.ip_address(raw.strip())
        except ValueError:
            self.error(key, f"'{raw}' is not an IPv4 or IPv6 address")
            return None

    def address_range(self, raw: Any, key: Key) -> list[IPAddress] | None:
        if not isinstance(raw, str):
            self.error(
                key,
                f"expected an address or a range 'first-last', not {_kind(raw)}{_ipv6_hint(raw)}",
            )
            return None
        first_s, sep, last_s = raw.partition("-")
        first = self.address(first_s, key)
        last = self.address(last_s, key) if sep else first
        if first is None or last is None:
            return None
        if first.version != last.version:
            self.error(key, f"range '{raw}' mixes IPv4 and IPv6")
            return None
        if int(last) < int(first):
            self.error(key, f"range '{raw}' ends before it starts")
            return None
        if int(last) - int(first) >= MAX_EXTRA:
            self.error(
                key,
                f"range '{raw}' has {int(last) - int(first) + 1} addresses; at most {MAX_EXTRA}",
            )
            return None
        cls = type(first)
        return [cls(n) for n in range(int(first), int(last) + 1)]

    def route(self, raw: Any, key: Key, interfaces: list[Interface]) -> Route | None:
        doc = self.mapping(raw, key, ROUTE_KEYS, "a route")
        if doc is None:
            return None
        if "to" not in doc or "via" not in doc:
            self.error(key, "a route needs 'to' (default or a network) and 'via'")
            return None
        via = self.address(doc["via"], (*key, "via"), "a gateway address")
        if via is None:
            return None
        to_raw = doc["to"]
        if to_raw == "default":
            to: IPNetwork = ipaddress.ip_network("0.0.0.0/0" if via.version == 4 else "::/0")
        elif isinstance(to_raw, str):
            try:
                to = ipaddress.ip_network(to_raw, strict=True)
            except ValueError as exc:
                self.error((*key, "to"), f"'{to_raw}' is not 'default' or a network ({exc})")
                return None
        else:
            self.error((*key, "to"), f"expected 'default' or a network, not {_kind(to_raw)}")
            return None
        if to.version != via.version:
            self.error(
                (*key, "via"), f"gateway {via} is IPv{via.version} but {to} is IPv{to.version}"
            )
            return None
        # The kernel refuses a gateway it cannot reach directly; say so here, by name.
        if not any(via in a.network for i in interfaces for a in i.addresses):
            self.error((*key, "via"), f"gateway {via} is not on a subnet of this node's interfaces")
            return None
        return Route(to, via)

    def service(self, raw: Any, key: Key) -> Service | None:
        doc = self.mapping(raw, key, SERVICE_KEYS, "a service")
        if doc is None:
            return None
        kind, port = doc.get("kind"), doc.get("port")
        ok = True
        if kind not in SERVICE_KINDS:
            self.error(
                (*key, "kind"),
                f"unknown service kind '{kind}'"
                f"{did_you_mean(str(kind), SERVICE_KINDS)} "
                f"(one of: {', '.join(SERVICE_KINDS)})",
            )
            ok = False
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            self.error((*key, "port"), f"port must be a number 1-65535, not {port!r}")
            ok = False
        if not ok or not isinstance(port, int):  # (not ok already when port is no int)
            return None
        return Service(str(kind), port)

    def cross_checks(self, nodes: dict[str, Node]) -> None:
        """Problems between nodes: the same address twice in the lab."""
        seen: dict[IPAddress, str] = {}
        for node in nodes.values():
            for i, iface in enumerate(node.interfaces):
                for j, addr in enumerate(iface.addresses):
                    self._claim(
                        seen,
                        addr.ip,
                        node.name,
                        ("nodes", node.name, "interfaces", i, "addresses", j),
                    )
                for extra in iface.extra_addresses:
                    self._claim(
                        seen,
                        extra,
                        node.name,
                        ("nodes", node.name, "interfaces", i, "extra_addresses"),
                    )

    def _claim(self, seen: dict[IPAddress, str], addr: IPAddress, node: str, key: Key) -> None:
        if addr in seen:
            where = "this node" if seen[addr] == node else f"node '{seen[addr]}'"
            self.error(key, f"address {addr} is already used by {where}")
        else:
            seen[addr] = node


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ('{value}')"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _ipv6_hint(value: Any) -> str:
    # YAML 1.1 reads an unquoted 1:2:3 as a base-60 number: a short IPv6 address can vanish so.
    return (
        "; quote IPv6 addresses" if isinstance(value, int) and not isinstance(value, bool) else ""
    )
