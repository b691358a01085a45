"""Geo clauses: `from country { RU, CN }`, `to asn 13335`, `from org contains "…"`.

Each becomes an ordinary address constraint at load time: the networks that the country
and ASN databases, and before them the site file, map to the values asked for
(ips/geo/networks.py walks the databases, once per database file and query). The networks
go into a table of kind "geo" named after the clause (`country.CN.RU`), which the nftables
translation loads as interval sets, so the kernel matches them; the engine's index sees
plain networks. Which value put each network there is kept for `ipsctl explain`.

Where the data comes from: `set geo-dir "DIR"` (relative to the policy file), else
$IPSCTL_GEO_DIR, else /var/lib/ipsctl/geo (scripts/setup.sh installs it); `set geo-site
"FILE"` names a site file, read like a table file (so `ipsctl apply` hands it to the daemon
with the policy). A clause whose database is missing is an error, unless a site file is
given (then only its networks count, with a warning).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ips.geo.db import ASN_FILE, COUNTRY_FILE, default_geo_dir
from ips.geo.networks import GeoQuery, database_identity, ranges_to_networks, select_networks
from ips.geo.site import SiteFileError, SiteMap, parse_site_text
from ips.policy import ast, names
from ips.policy.diagnostics import Span, did_you_mean
from ips.policy.model import AddrSpec, GeoLabels, TableSpec
from ips.policy.resolve.files import SourceFiles, os_reason

# Values.flatten: a value with its $variables expanded -> (items, negated)
Flatten = Callable[[ast.Value], tuple[list[ast.Item], bool]]

_AS_WORD = re.compile(r"(?i)as(\d{1,10})")
MAX_ASN = 4_294_967_295
_INSTALL_HINT = (
    "install the data: make setup (scripts/setup.sh), or ipsctl geo update FILE…; "
    'or point the policy at it: set geo-dir "DIR"'
)


class GeoResolver:
    def __init__(self, files: SourceFiles, tables: dict[str, TableSpec], flatten: Flatten) -> None:
        self.files = files
        self.diags = files.diags
        self.tables = tables  # the policy's: a clause's networks become a table of kind geo
        self.flatten = flatten
        self.options: dict[str, ast.OptionStmt] = {}  # geo-dir, geo-site (the last of each)
        self._data: tuple[str, SiteMap | None] | None = None
        self._data_failed = False
        self._specs: dict[tuple[str, frozenset[Any], bool], AddrSpec | None] = {}
        self._warned_missing: set[str] = set()

    # ---- the data ------------------------------------------------------------------------------

    def _relative(self, text: str, span: Span) -> Path:
        path = Path(text)
        if not path.is_absolute():
            declaring = self.files.real_path(span.file)
            path = declaring.parent / path
        return path.resolve()

    def data(self) -> tuple[str, SiteMap | None] | None:
        """(directory of the databases, the site map or None), read once per policy."""
        if self._data is not None or self._data_failed:
            return self._data
        directory = default_geo_dir()
        option = self.options.get("geo-dir")
        if option is not None and option.value.kind == "string" and option.value.text:
            directory = str(self._relative(option.value.text, option.value.span))
        sites: SiteMap | None = None
        site_opt = self.options.get("geo-site")
        if site_opt is not None and site_opt.value.kind == "string" and site_opt.value.text:
            sites = self._read_sites(site_opt.value)
            if sites is None:
                self._data_failed = True
                return None
        self._data = (directory, sites)
        files = self.files
        for name in (COUNTRY_FILE, ASN_FILE):  # new data is a new policy (status says so)
            identity = database_identity(os.path.join(directory, name))
            files.table_texts[f"geo:{directory}/{name}"] = repr(identity)
        return self._data

    def display_data(self) -> tuple[str, SiteMap | None]:
        """(directory, site map) for the fields of records and views (ips/geo/enrich.py):
        the clauses' data when the policy says where it is, else the default directory and
        no site map (read without touching the digest: display is not policy)."""
        if self.options:
            data = self.data()
            if data is not None:
                return data
        return default_geo_dir(), None

    def _read_sites(self, item: ast.Item) -> SiteMap | None:
        path = self._relative(item.text, item.span)
        try:
            text = self.files.reader(path)
        except (OSError, ValueError) as exc:
            self.diags.error(
                item.span, f"cannot read site file '{item.text}': {os_reason(exc)}", code="io"
            )
            return None
        self.files.table_texts[str(path)] = text
        try:
            return parse_site_text(text, str(path))
        except SiteFileError as exc:
            for problem in exc.problems:
                self.diags.error(item.span, f"site file: {problem}", code="bad-value")
            return None

    # ---- one clause ----------------------------------------------------------------------------

    def addr(self, clause: ast.EndpointClause) -> AddrSpec | None:
        """The address constraint of a geo clause; None after an error (reported)."""
        kind = clause.geo
        assert kind is not None and clause.addr is not None
        query, negated, shown = self._query(kind, clause.addr)
        if query is None:
            return None
        key = (kind, query.values, negated)
        if key in self._specs:
            return self._specs[key]
        spec = self._resolve(query, negated, shown, clause.span)
        self._specs[key] = spec
        return spec

    def _query(self, kind: str, value: ast.Value) -> tuple[GeoQuery | None, bool, str]:
        items, negated = self.flatten(value)
        found: set[Any] = set()
        ok = True
        for item in items:
            checked = {"country": self._country, "asn": self._asn, "org": self._org}[kind](item)
            if checked is None:
                ok = False
            else:
                found.add(checked)
        if not items:
            self.diags.error(value.span, f"'{kind}' needs at least one value", code="bad-value")
            return None, negated, ""
        if not ok:
            return None, negated, ""
        words = sorted(str(v) for v in found)
        if kind == "org":
            shown = f'org contains "{words[0]}"'
        else:
            body = words[0] if len(words) == 1 else "{ " + ", ".join(words) + " }"
            shown = f"{kind} {body}"
        return GeoQuery(kind, frozenset(found)), negated, ("!" if negated else "") + shown

    def _country(self, item: ast.Item) -> str | None:
        code = item.text.upper() if item.kind in ("word", "string") else ""
        if code in names.COUNTRY_CODES or (
            len(code) == 2 and code.isalpha() and names.user_assigned_country(code)
        ):
            return code
        hint = None
        if code in names.COUNTRY_ALIASES:
            hint = f"did you mean '{names.COUNTRY_ALIASES[code]}'? (ISO 3166-1 spells it so)"
        elif len(code) == 3 and code[:2] in names.COUNTRY_CODES:
            hint = f"did you mean '{code[:2]}'? (two letters, ISO 3166-1 alpha-2)"
        elif code:
            hint = did_you_mean(code, sorted(names.COUNTRY_CODES))
        self.diags.error(
            item.span,
            f"'{item.text}' is not a country code",
            hint or "a country is its ISO 3166-1 alpha-2 code: RU, CN, US, DE …",
            code="unknown-name",
        )
        return None

    def _asn(self, item: ast.Item) -> int | None:
        number: int | None = None
        if item.kind == "int" and len(item.text) <= 10:
            number = item.lo
        elif item.kind == "word" and (m := _AS_WORD.fullmatch(item.text)):
            number = int(m.group(1))
        if number is None or not 1 <= number <= MAX_ASN:
            self.diags.error(
                item.span,
                f"'{item.text}' is not an AS number",
                f"an AS number is 1 to {MAX_ASN} (13335, or AS13335)",
                code="bad-value",
            )
            return None
        return number

    def _org(self, item: ast.Item) -> str | None:
        text = item.text.strip().lower() if item.kind == "string" else ""
        if not text:
            self.diags.error(
                item.span,
                "org contains needs a non-empty quoted text",
                'e.g. from org contains "cloudflare"',
                code="bad-value",
            )
            return None
        return text

    def _resolve(self, query: GeoQuery, negated: bool, shown: str, span: Span) -> AddrSpec | None:
        data = self.data()
        if data is None:
            return None
        directory, sites = data
        db_file = COUNTRY_FILE if query.kind == "country" else ASN_FILE
        db_path = os.path.join(directory, db_file)
        if not os.path.exists(db_path):
            what = "country" if query.kind == "country" else "ASN"
            if sites is None:
                self.diags.error(
                    span,
                    f"no geo data for '{shown}': the {what} database {db_path} is missing",
                    _INSTALL_HINT,
                    code="geo-data",
                )
                return None
            if db_path not in self._warned_missing:
                self._warned_missing.add(db_path)
                self.diags.warning(
                    span,
                    f"the {what} database {db_path} is missing: only the site file's "
                    "networks count",
                    _INSTALL_HINT,
                    code="geo-data",
                )
        try:
            selection = select_networks(query, directory, sites)
        except (OSError, ValueError) as exc:
            self.diags.error(
                span,
                f"cannot read the geo data in {directory}: {os_reason(exc)}",
                "check it with ipsctl geo lookup 1.1.1.1; reinstall: ipsctl geo update FILE…",
                code="geo-data",
            )
            return None
        nets4 = tuple(ranges_to_networks(selection.v4.ranges, 32))
        nets6 = tuple(ranges_to_networks(selection.v6.ranges, 128))
        labels = GeoLabels(
            shown.lstrip("!"),
            tuple(selection.v4.ranges),
            tuple(selection.v4.labels),
            tuple(selection.v6.ranges),
            tuple(selection.v6.labels),
        )
        if not nets4 and not nets6:
            self.diags.warning(
                span,
                f"'{shown.lstrip('!')}' has no network in the geo data "
                f"({', '.join(selection.sources) or 'none'}): it matches nothing",
                code="empty",
            )
            return AddrSpec(negated, geo=labels)
        name = _table_name(query)
        tables = self.tables
        if name not in tables:
            tables[name] = TableSpec(name, "geo", span, nets4, nets6)
        table = tables[name]
        return AddrSpec(negated, table.nets4, table.nets6, (), (name,), geo=labels)


def _table_name(query: GeoQuery) -> str:
    """`country.CN.RU`, `asn.13335`; a hash when that would be long (and for org texts,
    which may hold any character): a name nft takes for its sets, and no policy table's
    (those have no dot)."""
    words = sorted(str(v) for v in query.values)
    plain = f"{query.kind}." + ".".join(words)
    if query.kind != "org" and len(plain) <= 40:
        return plain
    digest = hashlib.sha256("\0".join(words).encode()).hexdigest()[:12]
    return f"{query.kind}.{digest}"
