"""`ipsctl geo`: country, AS number and site of addresses; the databases checked and replaced.

    ipsctl geo lookup ADDR…           text, or --json (one object per address)
    ipsctl geo update FILE…           check new .mmdb files and swap them in atomically
    ipsctl geo build KIND CSV… -o OUT an .mmdb from range CSV files (what the set-up runs)

No daemon is asked: these read and write the data directory (docs/geo.md).
"""

from __future__ import annotations

import json
import sys
import time

import click
import maxminddb

from ips.cli.common import EXIT_POLICY, EXIT_USAGE
from ips.geo.csvdata import KINDS, CsvDataError, build_from_csv
from ips.geo.db import GEO_DIR_ENV, GeoDb, default_geo_dir
from ips.geo.site import SiteFileError, SiteMap, load_site_file
from ips.geo.update import GeoDataError, install_databases
from ips.safefile import UnsafePathError, replace_private_file

GEO_DIR_OPTION = click.option(
    "--geo-dir",
    default=None,
    metavar="DIR",
    help=f"data directory (default: ${GEO_DIR_ENV} or {default_geo_dir()})",
)


@click.group()
def geo() -> None:
    """Country, AS number and organisation of addresses (offline data).

    \b
    lookup   what the data says about addresses
    update   check new database files and swap them in
    build    a database file from range CSV files
    """


def _sites(path: str | None) -> SiteMap | None:
    if path is None:
        return None
    try:
        return load_site_file(path)
    except SiteFileError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        click.echo(f"{path}: {len(exc.problems)} error(s); nothing looked up", err=True)
        sys.exit(EXIT_POLICY)
    except OSError as exc:
        click.echo(f"ipsctl: {path}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_POLICY)


@geo.command()
@click.argument("addresses", nargs=-1, required=True, metavar="ADDR…")
@GEO_DIR_OPTION
@click.option("--site", "site_file", metavar="FILE", help="site file, consulted first")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per address, a line each")
def lookup(
    addresses: tuple[str, ...], geo_dir: str | None, site_file: str | None, as_json: bool
) -> None:
    """What the site file and the databases say about ADDR…"""
    sites = _sites(site_file)
    try:
        db = GeoDb.open(geo_dir, sites)
    except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
        click.echo(f"ipsctl: cannot open the geo data: {exc}", err=True)
        sys.exit(EXIT_POLICY)
    for name in db.missing:
        click.echo(
            f"ipsctl: warning: no {name} in {db.directory} (scripts/setup.sh installs it; "
            "`ipsctl geo update FILE` puts one there)",
            err=True,
        )
    bad = 0
    try:
        for text in addresses:
            try:
                info = db.lookup_text(text)
            except ValueError:
                click.echo(f"ipsctl: {text!r} is not an IP address", err=True)
                bad += 1
                continue
            if as_json:
                click.echo(json.dumps(info.as_dict(), ensure_ascii=False))
            else:
                click.echo(f"{info.address}  {info.label()}")
    finally:
        db.close()
    if bad:
        sys.exit(EXIT_USAGE)


@geo.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE…")
@GEO_DIR_OPTION
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default=None,
    help="the database's kind (default: told by its records)",
)
def update(files: tuple[str, ...], geo_dir: str | None, kind: str | None) -> None:
    """Check new .mmdb FILE… and swap them in atomically.

    Every file is opened, its metadata checked, sample addresses looked up and its whole
    tree read, before anything is replaced; one bad file and nothing changes (exit 1)."""
    directory = geo_dir or default_geo_dir()
    try:
        installed = install_databases(list(files), directory, kind)
    except GeoDataError as exc:
        click.echo(f"ipsctl: {exc}", err=True)
        click.echo(f"geo data NOT updated; {directory} is unchanged", err=True)
        sys.exit(EXIT_POLICY)
    except (UnsafePathError, OSError) as exc:
        click.echo(f"ipsctl: cannot write to {directory}: {exc}", err=True)
        sys.exit(EXIT_POLICY)
    for checked, target in installed:
        built = time.strftime("%Y-%m-%d", time.gmtime(checked.build_epoch))
        click.echo(
            f"{target}: {checked.kind} database {checked.database_type!r} built {built}, "
            f"{checked.node_count} nodes, IPv{checked.ip_version} (from {checked.path})"
        )


@geo.command()
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("csv_files", nargs=-1, required=True, metavar="CSV…")
@click.option("-o", "--output", required=True, metavar="FILE", help="the .mmdb to write")
@click.option("--description", default="", help="the database's description (metadata)")
def build(kind: str, csv_files: tuple[str, ...], output: str, description: str) -> None:
    """An .mmdb of KIND (country or asn) from range CSV files (start,end,value…).

    The format of ip-location-db's CSVs: `start,end,asn,organisation` or `start,end,CC`.
    Overlapping ranges: the later-starting (inner) one wins, counted in the summary."""
    try:
        data, ranges, overlaps = build_from_csv(csv_files, kind, description, int(time.time()))
    except CsvDataError as exc:
        click.echo(f"ipsctl: {exc}", err=True)
        sys.exit(EXIT_POLICY)
    except OSError as exc:
        click.echo(f"ipsctl: {exc.filename}: {exc.strerror}", err=True)
        sys.exit(EXIT_POLICY)
    try:
        replace_private_file(output, data, mode=0o644)
    except OSError as exc:
        click.echo(f"ipsctl: cannot write {output}: {exc}", err=True)
        sys.exit(EXIT_POLICY)
    plural = "" if overlaps == 1 else "s"
    click.echo(
        f"{output}: {kind} database, {ranges} ranges ({overlaps} overlap{plural} resolved), "
        f"{len(data)} bytes"
    )
