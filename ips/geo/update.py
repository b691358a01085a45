"""Checking a new database file, and putting it in place without ever leaving a broken one.

`check_database` reads the whole file once and checks, before anything is replaced:
  * that maxminddb opens it (a truncated file has lost its metadata, at the end: refused);
  * the metadata: binary format 2, ip_version 4 or 6, record size 24/28/32, a node count
    whose search tree fits in the file, a database_type;
  * lookups: well-known public addresses (one of each of several networks) must all answer
    a record of the database's kind, and 2,048 addresses spread over the address space must
    answer without an error (a corrupt tree or data section shows there) and, where they
    answer, with a map;
  * the whole tree, walked once (a few seconds for a country database): every node and every
    record must read back, every record a map, and no node may point back up the tree.
The kind (country or asn) comes from the records found, or from `--kind`.

`install_databases` checks every file first and replaces nothing unless all pass; then each
goes in with ips/safefile.replace_private_file (a new file beside the old one, flushed, then
renamed over it): a reader that has the old file open keeps reading the old data, a new
reader gets the new one, nobody sees half a file.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import maxminddb

from ips.geo.db import ASN_FILE, COUNTRY_FILE, asn_of_record, country_of_record
from ips.safefile import replace_private_file

__all__ = ["Checked", "GeoDataError", "check_database", "install_databases"]

MAX_FILE = 1 << 30  # a country or ASN database is tens of MB; a bigger file is not one
DATA_MODE = 0o644  # public data: any user may read it (ipsctl geo lookup as a user)
KIND_FILES = {"country": COUNTRY_FILE, "asn": ASN_FILE}

# Addresses every real country or ASN database answers (DNS resolvers of large operators).
_WELL_KNOWN_V4 = ("1.1.1.1", "8.8.8.8", "9.9.9.9")
_WELL_KNOWN_V6 = ("2606:4700:4700::1111", "2001:4860:4860::8888")
_SPREAD = 1024  # addresses sampled per family


class GeoDataError(ValueError):
    """A database file that must not be installed; str() names the file and the reason."""


@dataclass(frozen=True)
class Checked:
    path: str
    kind: str  # "country" or "asn"
    data: bytes  # the very bytes checked: these are what get installed
    database_type: str
    ip_version: int
    node_count: int
    build_epoch: int
    found: int  # sample addresses that had a record


def _kind_of(record: Any) -> str | None:
    if country_of_record(record) is not None:
        return "country"
    if asn_of_record(record)[0] is not None:
        return "asn"
    return None


def _samples(ip_version: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
        ipaddress.IPv4Address((i * (1 << 32)) // _SPREAD + 0x10203) for i in range(_SPREAD)
    ]
    if ip_version == 6:  # spread over 2000::/3, the global unicast space
        base = int(ipaddress.IPv6Address("2000::"))
        out += [
            ipaddress.IPv6Address(base + (i * (1 << 125)) // _SPREAD + 0x1234)
            for i in range(_SPREAD)
        ]
    return out


def check_database(path: str, kind: str | None = None) -> Checked:
    """The file at PATH, checked as the module says; GeoDataError when it must be refused."""
    if kind is not None and kind not in KIND_FILES:
        raise GeoDataError(f"unknown kind {kind!r} (country or asn)")
    try:
        size = os.stat(path).st_size
        if size > MAX_FILE:
            raise GeoDataError(f"{path}: {size} bytes is too large for a geo database")
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE + 1)
    except OSError as exc:
        raise GeoDataError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    # The C reader wants a path: the bytes read above go to a private temporary file, so what
    # is checked is exactly what gets installed, even if PATH changes meanwhile.
    with tempfile.NamedTemporaryFile(prefix="ipsctl-geo-", suffix=".mmdb") as copy:
        copy.write(data)
        copy.flush()
        try:
            reader = maxminddb.open_database(copy.name, maxminddb.MODE_MMAP_EXT)
        except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
            reason = str(exc).replace(copy.name, path)  # name the user's file, not our copy
            raise GeoDataError(
                f"{path}: not a valid MaxMind DB file (truncated or corrupt?): {reason}"
            ) from None
        try:
            return _check_reader(path, data, reader, kind)
        finally:
            reader.close()


def _check_reader(path: str, data: bytes, reader: maxminddb.Reader, kind: str | None) -> Checked:
    meta = reader.metadata()
    if meta.binary_format_major_version != 2:
        raise GeoDataError(f"{path}: binary format {meta.binary_format_major_version}, not 2")
    if meta.ip_version not in (4, 6):
        raise GeoDataError(f"{path}: ip_version {meta.ip_version} is neither 4 nor 6")
    if meta.record_size not in (24, 28, 32):
        raise GeoDataError(f"{path}: record size {meta.record_size} is not 24, 28 or 32")
    tree_bytes = meta.node_count * meta.record_size // 4
    if meta.node_count <= 0 or tree_bytes + 16 > len(data):
        raise GeoDataError(
            f"{path}: its search tree ({meta.node_count} nodes) does not fit in its "
            f"{len(data)} bytes (truncated?)"
        )
    if not meta.database_type:
        raise GeoDataError(f"{path}: the metadata has no database_type")

    kinds_found: dict[str, int] = {"country": 0, "asn": 0}
    found = 0
    well_known = [*_WELL_KNOWN_V4, *(_WELL_KNOWN_V6 if meta.ip_version == 6 else ())]
    well_known_records: dict[str, Any] = {}
    try:
        for text in well_known:
            well_known_records[text] = reader.get(text)
            record_kind = _kind_of(well_known_records[text])
            if record_kind is not None:
                kinds_found[record_kind] += 1
        for address in _samples(meta.ip_version):
            record = reader.get(address)
            if record is None:
                continue
            if not isinstance(record, dict):
                raise GeoDataError(
                    f"{path}: {address} answers a {type(record).__name__}, not a map (corrupt?)"
                )
            found += 1
            record_kind = _kind_of(record)
            if record_kind is not None:
                kinds_found[record_kind] += 1
    except (maxminddb.InvalidDatabaseError, ValueError, TypeError, IndexError) as exc:
        raise GeoDataError(f"{path}: a lookup failed, the file is corrupt: {exc}") from None
    if kind is None:
        present = [k for k, n in kinds_found.items() if n]
        if len(present) != 1:
            raise GeoDataError(
                f"{path}: cannot tell whether it is a country or an ASN database "
                f"({kinds_found['country']} country and {kinds_found['asn']} ASN records "
                "among the sample addresses); give --kind"
            )
        kind = present[0]
    _walk(path, reader, int(meta.node_count))
    missing = [text for text, rec in well_known_records.items() if _kind_of(rec) != kind]
    if missing:
        raise GeoDataError(
            f"{path}: no {kind} record for {', '.join(missing)}: not a usable {kind} database"
        )
    return Checked(
        path=path,
        kind=kind,
        data=data,
        database_type=str(meta.database_type),
        ip_version=int(meta.ip_version),
        node_count=int(meta.node_count),
        build_epoch=int(meta.build_epoch),
        found=found,
    )


def _walk(path: str, reader: maxminddb.Reader, node_count: int) -> None:
    """Every network of the tree, read once: a bad node or record anywhere raises. A tree has
    at most node_count + 1 leaves; more means a node points back up (a loop: corrupt)."""
    networks = 0
    try:
        for network, record in reader:
            networks += 1
            if networks > node_count + 1:
                raise GeoDataError(f"{path}: the search tree loops (corrupt)")
            if not isinstance(record, dict):
                raise GeoDataError(
                    f"{path}: {network} has a {type(record).__name__}, not a map (corrupt?)"
                )
    except (maxminddb.InvalidDatabaseError, ValueError, TypeError, IndexError) as exc:
        if isinstance(exc, GeoDataError):
            raise
        raise GeoDataError(
            f"{path}: the file is corrupt after {networks} networks: {exc}"
        ) from None


def install_databases(
    paths: list[str], directory: str, kind: str | None = None
) -> list[tuple[Checked, str]]:
    """Check every file of PATHS, then install each as DIRECTORY/country.mmdb or asn.mmdb
    (by its kind). [(checked, installed path)]. GeoDataError before anything is replaced when a
    file is refused or two files are of the same kind."""
    checked = [check_database(path, kind) for path in paths]
    kinds = [c.kind for c in checked]
    for k in KIND_FILES:
        if kinds.count(k) > 1:
            raise GeoDataError(f"two {k} databases given; install one of each kind at a time")
    os.makedirs(directory, mode=0o755, exist_ok=True)
    installed = []
    for item in checked:
        target = os.path.join(directory, KIND_FILES[item.kind])
        replace_private_file(target, item.data, mode=DATA_MODE)
        installed.append((item, target))
    return installed
