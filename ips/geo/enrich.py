"""Who is on the other end, as the fields of a record: where a record is written (the EVE
sink) or a view is drawn (`ipsctl flows`, `ipsctl top`), never on the packet path.

For each end of a flow an object `{"country": "DE", "asn": 3320, "org": "…", "site": "HQ"}`
(only the keys that are known; a non-public address gets `{"scope": "private"}` and nothing
else, whatever a database says: ips/geo/db.py), the IANA service name of the responder's
port (`service`: 5432/tcp -> "postgresql", ips/geo/services.py), and, when reverse DNS is on
and passive DNS has no name for the responder, its PTR name (`dst_rdns`, ips/geo/rdns.py,
only what the cache holds: a new address is asked in the background and named later).

Suricata's EVE schema has no place for any of these (no `geoip`), so they go in ipsctl's own
top-level object: `ipsctl.src_geo`, `ipsctl.dst_geo`, `ipsctl.service`, `ipsctl.dst_rdns`.

Lookups go through GeoDb's LRU (a repeated address costs a dict probe); the objects, and
their JSON text for the flow line, are cached per answer as well.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import maxminddb

from ips.core.packet import PORT_PROTOS
from ips.geo.db import ASN_FILE, COUNTRY_FILE, GeoDb, GeoInfo, default_geo_dir
from ips.geo.rdns import ReverseDns
from ips.geo.services import service_name

__all__ = ["Enricher", "geo_object", "open_enricher"]

_OBJECTS_KEPT = 16384
_RDNS_SCOPES = frozenset({"public", "private"})  # worth a PTR query


@functools.lru_cache(maxsize=_OBJECTS_KEPT)
def geo_object(info: GeoInfo) -> dict[str, Any] | None:
    """One end's object (see the module's docstring), None when nothing is known of a public
    address. Cached per answer: callers must not change it."""
    if info.scope != "public":
        obj: dict[str, Any] = {"scope": info.scope}
        if info.site:  # the operator named the network: that is worth showing
            obj["site"] = info.site
        return obj
    obj = {}
    if info.country:
        obj["country"] = info.country
    if info.asn is not None:
        obj["asn"] = info.asn
    if info.org:
        obj["org"] = info.org
    if info.site:
        obj["site"] = info.site
    return obj or None


@functools.lru_cache(maxsize=_OBJECTS_KEPT)
def _geo_json(info: GeoInfo) -> str | None:
    obj = geo_object(info)
    return None if obj is None else json.dumps(obj, separators=(",", ":"))


@functools.lru_cache(maxsize=4096)
def _service_json(port: int, proto: int) -> str | None:
    name = service_name(port, proto)
    return None if name is None else '"service":' + json.dumps(name)


def short_label(obj: dict[str, Any] | None) -> str:
    """A table cell: `DE AS3320`, `HQ`, `HQ DE`, `private`, or `-`."""
    if not obj:
        return "-"
    parts = [str(obj["site"])] if obj.get("site") else []
    if obj.get("country"):
        parts.append(str(obj["country"]))
    if obj.get("asn") is not None:
        parts.append(f"AS{obj['asn']}")
    if not parts and obj.get("scope"):
        parts.append(str(obj["scope"]))
    return " ".join(parts) or "-"


def flow_service(proto: int, sport: int, dport: int, responder_known: bool = True) -> str | None:
    """The IANA name of the responder's port. A flow's responder is its destination; for a
    packet of an alert, whose direction is not known, the lower port's name, else the
    other's (a server's port is usually the lower: many ephemeral ports are registered
    too, 40000 as safetynetp)."""
    if proto not in PORT_PROTOS:
        return None
    if responder_known:
        return service_name(dport, proto)
    low, high = (sport, dport) if sport < dport else (dport, sport)
    return service_name(low, proto) or service_name(high, proto)


class Enricher:
    """The fields of one flow or packet; see the module's docstring. `geo` None: no
    geolocation at all (not even scopes); `problem` says why the data is missing."""

    def __init__(
        self,
        geo: GeoDb | None = None,
        rdns: ReverseDns | None = None,
        problem: str | None = None,
    ) -> None:
        self.geo = geo
        self.rdns = rdns
        self.problem = problem
        # address -> its object and JSON text: one dict probe for an end seen before (the
        # GeoDb's own cache answers by address too, but the answer's hash costs more).
        self._ends: dict[bytes, tuple[dict[str, Any] | None, str | None]] = {}

    def _end(self, addr: bytes) -> tuple[dict[str, Any] | None, str | None]:
        known = self._ends.get(addr)
        if known is None:
            assert self.geo is not None
            info = self.geo.lookup(addr)
            known = (geo_object(info), _geo_json(info))
            if len(self._ends) >= _OBJECTS_KEPT:
                self._ends.clear()  # rare; the GeoDb's LRU keeps the answers meanwhile
            self._ends[addr] = known
        return known

    def endpoint(self, addr: bytes) -> dict[str, Any] | None:
        if self.geo is None:
            return None
        return self._end(addr)[0]

    def reverse_name(self, addr: bytes) -> str | None:
        """The cached PTR name of ADDR (asked in the background when not cached); None when
        reverse DNS is off or no name is known yet."""
        if self.rdns is None:
            return None
        if self.geo is not None and self.geo.lookup(addr).scope not in _RDNS_SCOPES:
            return None  # loopback, multicast, documentation space: no one to ask
        return self.rdns.name(addr)

    def fields(
        self,
        proto: int,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        *,
        named: bool = False,
        responder_known: bool = True,
    ) -> dict[str, Any]:
        """src_geo, dst_geo, service and dst_rdns, each when known. `named`: passive DNS (or
        the application layer) already named the responder, so no reverse name is looked
        up."""
        out: dict[str, Any] = {}
        if self.geo is not None:
            src_obj = self._end(src)[0]
            if src_obj is not None:
                out["src_geo"] = src_obj
            dst_obj = self._end(dst)[0]
            if dst_obj is not None:
                out["dst_geo"] = dst_obj
        service = flow_service(proto, sport, dport, responder_known)
        if service is not None:
            out["service"] = service
        if not named and self.rdns is not None:
            rdns = self.reverse_name(dst)
            if rdns is not None:
                out["dst_rdns"] = rdns
        return out

    def fields_json(
        self, proto: int, src: bytes, dst: bytes, sport: int, dport: int, named: bool
    ) -> str:
        """`fields` as the members of a JSON object (`"src_geo":{…},"service":"https"`, no
        braces; "" when nothing is known), the text json.dumps with separators (",", ":")
        gives, from cached pieces: the flow line (ips/sinks/eve.py) is the commonest record."""
        parts: list[str] = []
        if self.geo is not None:
            text = self._end(src)[1]
            if text is not None:
                parts.append('"src_geo":' + text)
            text = self._end(dst)[1]
            if text is not None:
                parts.append('"dst_geo":' + text)
        if proto in PORT_PROTOS:
            service = _service_json(dport, proto)
            if service is not None:
                parts.append(service)
        if not named and self.rdns is not None:
            rdns = self.reverse_name(dst)
            if rdns is not None:
                parts.append('"dst_rdns":' + json.dumps(rdns))
        return ",".join(parts)

    def status(self) -> dict[str, Any]:
        """status `geo`: where the data is, what is missing, the cache and reverse DNS."""
        out: dict[str, Any] = {"enabled": self.geo is not None}
        if self.geo is not None:
            info = self.geo.cache_info()
            out.update(
                directory=self.geo.directory,
                missing=self.geo.missing,
                site=self.geo.sites is not None,
                cache={"entries": info.currsize, "hits": info.hits, "misses": info.misses},
            )
        if self.problem:
            out["problem"] = self.problem
        out["reverse_dns"] = self.rdns.snapshot() if self.rdns is not None else None
        return out

    def close(self) -> None:
        if self.geo is not None:
            self.geo.close()
        if self.rdns is not None:
            self.rdns.close()


def open_enricher(
    directory: str | None = None,
    sites: Any = None,
    *,
    reverse_dns: bool = False,
    rdns: ReverseDns | None = None,
) -> Enricher:
    """An Enricher over the databases of DIRECTORY ($IPSCTL_GEO_DIR, else the default) and
    the site map. Missing data is not an error for display: the fields are absent (scopes
    and sites still answer) and `problem` says what is missing; an unreadable file is
    treated the same, with its reason. `reverse_dns`: start a ReverseDns of the system
    resolver (or use RDNS, already made)."""
    directory = directory or default_geo_dir()
    problem: str | None = None
    try:
        geo = GeoDb.open(directory, sites)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        geo = GeoDb(None, None, sites, directory=directory)
        problem = f"cannot read the geo data in {directory}: {exc}"
    if problem is None and geo.missing:
        missing = ", ".join(os.path.join(directory, name) for name in geo.missing)
        problem = f"geo data missing: {missing}"
        if len(geo.missing) == len((COUNTRY_FILE, ASN_FILE)):
            problem += " (scripts/setup.sh or `ipsctl geo update FILE…` installs it)"
    if rdns is None and reverse_dns:
        rdns = ReverseDns().start()
    return Enricher(geo, rdns, problem)
