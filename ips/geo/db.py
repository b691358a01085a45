"""Who is on the other end: country, AS number and organisation of an address.

`GeoDb` answers from, in order: the address's scope (a private, loopback, link-local,
multicast or reserved address never gets a country: the databases give some of them garbage,
e.g. one published database places 192.168.0.0/16 in Australia), the site file
(ips/geo/site.py), then two MaxMind DB files read with `maxminddb`: a country database
(`country_code`, as ip-location-db's, or MaxMind's `country.iso_code`) and an ASN database
(`autonomous_system_number`, `autonomous_system_organization`). Either may be missing: its
fields are then None.

Addresses are packed bytes (4 or 16), as ips/core hands them out; `lookup_text` takes text.
An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is looked up as the IPv4 address it carries.
Answers are cached in a bounded LRU (functools.lru_cache): a repeated address costs a dict
probe, far under 2 µs (docs/geo.md has the figures of bench/geo.py).
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import maxminddb

from ips.geo.site import SiteEntry, SiteMap

__all__ = [
    "ASN_FILE",
    "COUNTRY_FILE",
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_GEO_DIR",
    "GeoDb",
    "GeoInfo",
    "default_geo_dir",
    "scope_of",
]

DEFAULT_GEO_DIR = "/var/lib/ipsctl/geo"  # where scripts/setup.sh installs the data
GEO_DIR_ENV = "IPSCTL_GEO_DIR"
COUNTRY_FILE = "country.mmdb"
ASN_FILE = "asn.mmdb"
DEFAULT_CACHE_SIZE = 16384  # addresses; an entry is about 300 bytes: ~5 MB when full

_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"

# Scopes, most specific first. CGNAT (100.64.0.0/10) counts as private: it is as local as
# RFC 1918 space to whoever sees it. Anything else not globally routable is "reserved"
# (documentation, benchmarking, 0.0.0.0/8, 240.0.0.0/4, ...).
_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
SCOPES = ("public", "private", "loopback", "link-local", "multicast", "reserved")


def default_geo_dir() -> str:
    """The data directory: $IPSCTL_GEO_DIR, else /var/lib/ipsctl/geo."""
    return os.environ.get(GEO_DIR_ENV) or DEFAULT_GEO_DIR


def scope_of(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """One of SCOPES: only "public" addresses are looked up in the databases."""
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if any(address in net for net in _PRIVATE):
        return "private"
    if address.is_unspecified or not address.is_global:
        return "reserved"
    return "public"


@dataclass(frozen=True, slots=True)
class GeoInfo:
    """What is known of one address. `site` is the site file's name for its network."""

    address: str
    scope: str
    country: str | None = None
    asn: int | None = None
    org: str | None = None
    site: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "scope": self.scope,
            "country": self.country,
            "asn": self.asn,
            "org": self.org,
            "site": self.site,
        }

    def label(self) -> str:
        """A short text for tables: `US AS15169 Google LLC`, `HQ`, `private`, or `-`."""
        parts = [self.site] if self.site else []
        if self.country:
            parts.append(self.country)
        if self.asn is not None:
            parts.append(f"AS{self.asn}")
        if self.org:
            parts.append(self.org)
        if parts:
            return " ".join(parts)
        return self.scope if self.scope != "public" else "-"


def country_of_record(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    code = record.get("country_code")
    if code is None and isinstance(record.get("country"), dict):
        code = record["country"].get("iso_code")  # MaxMind's layout
    return code if isinstance(code, str) and code else None


def asn_of_record(record: Any) -> tuple[int | None, str | None]:
    if not isinstance(record, dict):
        return None, None
    number = record.get("autonomous_system_number")
    org = record.get("autonomous_system_organization")
    return (
        number if isinstance(number, int) else None,
        org if isinstance(org, str) and org else None,
    )


class GeoDb:
    """Country, ASN and site of addresses; see the module's docstring."""

    def __init__(
        self,
        country: maxminddb.Reader | None = None,
        asn: maxminddb.Reader | None = None,
        sites: SiteMap | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        directory: str | None = None,
    ) -> None:
        self.directory = directory  # where the files came from, for messages
        self.country = country
        self.asn = asn
        self.sites = sites
        self.lookup: Callable[[bytes], GeoInfo] = functools.lru_cache(maxsize=cache_size)(
            self._lookup
        )

    @classmethod
    def open(
        cls,
        directory: str | None = None,
        sites: SiteMap | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> GeoDb:
        """The databases of DIRECTORY (default_geo_dir()); a missing file leaves its part None
        (`missing` says which). A file that is there but unreadable raises (maxminddb's
        InvalidDatabaseError, a ValueError, or OSError)."""
        directory = directory or default_geo_dir()
        readers: dict[str, maxminddb.Reader | None] = {}
        for name in (COUNTRY_FILE, ASN_FILE):
            path = os.path.join(directory, name)
            readers[name] = maxminddb.open_database(path) if os.path.exists(path) else None
        return cls(readers[COUNTRY_FILE], readers[ASN_FILE], sites, cache_size, directory)

    @property
    def missing(self) -> list[str]:
        """The database files this instance has no reader for."""
        return [
            name
            for name, reader in ((COUNTRY_FILE, self.country), (ASN_FILE, self.asn))
            if reader is None
        ]

    def close(self) -> None:
        for reader in (self.country, self.asn):
            if reader is not None:
                reader.close()

    def lookup_text(self, text: str) -> GeoInfo:
        """`lookup` for an address in text; ValueError when TEXT is not an address."""
        return self.lookup(ipaddress.ip_address(text.strip()).packed)

    def cache_info(self) -> Any:
        return self.lookup.cache_info()  # type: ignore[attr-defined]

    def _lookup(self, addr: bytes) -> GeoInfo:
        if len(addr) == 16 and addr.startswith(_V4_MAPPED):
            addr = addr[12:]
        address: ipaddress.IPv4Address | ipaddress.IPv6Address
        if len(addr) == 4:
            address = ipaddress.IPv4Address(addr)
        elif len(addr) == 16:
            address = ipaddress.IPv6Address(addr)
        else:
            raise ValueError(f"an address is 4 or 16 bytes, not {len(addr)}")
        scope = scope_of(address)
        site: SiteEntry | None = self.sites.lookup(addr) if self.sites is not None else None
        country: str | None = None
        asn: int | None = None
        org: str | None = None
        if scope == "public":
            if self.country is not None:
                country = country_of_record(self.country.get(address))
            if self.asn is not None:
                asn, org = asn_of_record(self.asn.get(address))
        if site is not None:  # the operator's word first, the databases for what it leaves out
            country = site.country or country
            if site.asn is not None:  # the database's organisation belongs to its own number
                asn, org = site.asn, site.org
            elif site.org:
                org = site.org
        return GeoInfo(str(address), scope, country, asn, org, site.name if site else None)
