"""`ipsctl geo update`: a new database is checked before it replaces anything; a corrupt or
truncated one is refused with exit 1 and a clear message, and the old data keeps working.
And the mmdb writer, read back by maxminddb and by mmdblookup."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import maxminddb
import pytest
from click.testing import CliRunner, Result

from ips.cli import main
from ips.geo.csvdata import CsvDataError, build_from_csv, without_overlaps
from ips.geo.db import GeoDb, default_geo_dir
from ips.geo.mmdb_writer import build_mmdb, range_of
from ips.geo.update import GeoDataError, check_database

EPOCH = 1_700_000_000
INSTALLED = Path(default_geo_dir())


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def asn_record(number: int, org: str) -> dict[str, object]:
    return {"autonomous_system_number": number, "autonomous_system_organization": org}


def small_asn_db() -> bytes:
    """An ASN database that answers the checker's well-known addresses (and little else)."""
    return build_mmdb(
        [
            (*range_of("1.1.1.0", "1.1.1.255"), asn_record(13335, "Cloudflare")),
            (*range_of("8.8.8.0", "8.8.8.255"), asn_record(15169, "Google")),
            (*range_of("9.9.9.0", "9.9.9.255"), asn_record(19281, "Quad9")),
            (*range_of("2001:4860::", "2001:4860:ffff::"), asn_record(15169, "Google")),
            (*range_of("2606:4700::", "2606:4700:ffff::"), asn_record(13335, "Cloudflare")),
        ],
        "asn",
        EPOCH,
    )


@pytest.fixture
def old_data(tmp_path: Path) -> Path:
    """A data directory holding the installed country database and a small ASN one."""
    directory = tmp_path / "geo"
    directory.mkdir(mode=0o755)
    country = INSTALLED / "country.mmdb"
    if not country.exists():
        pytest.fail(f"no {country}: scripts/setup.sh installs the geo data")
    shutil.copyfile(country, directory / "country.mmdb")
    (directory / "asn.mmdb").write_bytes(small_asn_db())
    return directory


def broken_copies(source: Path, into: Path) -> dict[str, Path]:
    data = source.read_bytes()
    rnd = random.Random(22)
    flipped = bytearray(data)
    for _ in range(2000):
        flipped[rnd.randrange(len(data) - 4096)] ^= 0xFF
    zeroed = bytearray(data)
    zeroed[len(data) // 2 : len(data) // 2 + 65536] = bytes(65536)
    variants = {
        "half": data[: len(data) // 2],
        "short-by-ten": data[:-10],
        "empty": b"",
        "flipped": bytes(flipped),
        "zeroed": bytes(zeroed),
        "text": b"1.0.0.0,1.0.0.255,AU\n" * 100,
    }
    paths = {}
    for name, content in variants.items():
        path = into / f"{name}.mmdb"
        path.write_bytes(content)
        paths[name] = path
    return paths


@pytest.mark.parametrize("variant", ["half", "short-by-ten", "empty", "flipped", "zeroed", "text"])
def test_a_broken_file_is_refused_and_the_old_data_kept(
    old_data: Path, tmp_path: Path, variant: str
) -> None:
    before = (old_data / "country.mmdb").read_bytes()
    bad = broken_copies(old_data / "country.mmdb", tmp_path)[variant]
    result = cli("geo", "update", "--geo-dir", str(old_data), str(bad))
    assert result.exit_code == 1, result.output
    assert str(bad) in result.stderr
    assert "NOT updated" in result.stderr and "unchanged" in result.stderr
    assert (old_data / "country.mmdb").read_bytes() == before
    assert sorted(os.listdir(old_data)) == ["asn.mmdb", "country.mmdb"]  # no temporary left
    db = GeoDb.open(str(old_data))
    assert db.lookup_text("8.8.8.8").country == "US"
    db.close()


def test_one_bad_file_and_nothing_is_replaced(old_data: Path, tmp_path: Path) -> None:
    good_asn = tmp_path / "asn-new.mmdb"
    good_asn.write_bytes(
        build_mmdb(
            [
                (*range_of("1.1.1.0", "1.1.1.255"), asn_record(1, "New")),
                (*range_of("8.8.8.0", "8.8.8.255"), asn_record(2, "New")),
                (*range_of("9.9.9.0", "9.9.9.255"), asn_record(3, "New")),
                (*range_of("2001:4860::", "2001:4860:ffff::"), asn_record(2, "New")),
                (*range_of("2606:4700::", "2606:4700:ffff::"), asn_record(1, "New")),
            ],
            "asn",
            EPOCH,
        )
    )
    bad = broken_copies(old_data / "country.mmdb", tmp_path)["half"]
    before = (old_data / "asn.mmdb").read_bytes()
    result = cli("geo", "update", "--geo-dir", str(old_data), str(good_asn), str(bad))
    assert result.exit_code == 1
    assert (old_data / "asn.mmdb").read_bytes() == before
    # Alone, the good one goes in, and new readers see it.
    result = cli("geo", "update", "--geo-dir", str(old_data), str(good_asn))
    assert result.exit_code == 0, result.output
    assert "asn database" in result.output
    assert GeoDb.open(str(old_data)).lookup_text("8.8.8.8").asn == 2


def test_a_reader_of_the_old_file_keeps_its_data_across_an_update(
    old_data: Path, tmp_path: Path
) -> None:
    before = GeoDb.open(str(old_data))
    assert before.lookup_text("9.9.9.9").asn == 19281
    new = tmp_path / "asn.mmdb"
    new.write_bytes(
        build_mmdb(
            [
                (*range_of("1.0.0.0", "9.255.255.255"), asn_record(64500, "Everyone")),
                (*range_of("2000::", "2fff::"), asn_record(64500, "Everyone")),
            ],
            "asn",
            EPOCH,
        )
    )
    assert cli("geo", "update", "--geo-dir", str(old_data), str(new)).exit_code == 0
    assert before.asn is not None and before.asn.get("9.9.9.9") == asn_record(19281, "Quad9")
    assert GeoDb.open(str(old_data)).lookup_text("9.9.9.9").asn == 64500


def test_kind_is_told_by_the_records_or_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.mmdb"
    path.write_bytes(small_asn_db())
    assert check_database(str(path)).kind == "asn"
    with pytest.raises(GeoDataError, match=r"no country record for 1\.1\.1\.1"):
        check_database(str(path), "country")
    odd = tmp_path / "odd.mmdb"
    odd.write_bytes(build_mmdb([(*range_of("1.0.0.0", "9.0.0.0"), {"x": 1})], "odd", EPOCH))
    with pytest.raises(GeoDataError, match="cannot tell"):
        check_database(str(odd))


def test_two_databases_of_one_kind_are_refused(old_data: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.mmdb", tmp_path / "b.mmdb"
    a.write_bytes(small_asn_db())
    b.write_bytes(small_asn_db())
    result = cli("geo", "update", "--geo-dir", str(old_data), str(a), str(b))
    assert result.exit_code == 1 and "two asn databases" in result.stderr


# ---- the writer, read back -----------------------------------------------------------------


def test_writer_round_trip_through_maxminddb_and_mmdblookup(tmp_path: Path) -> None:
    ranges = [
        (*range_of("1.0.0.0", "1.0.0.255"), asn_record(13335, "Cloudflare, Inc.")),
        (*range_of("1.0.1.5", "1.0.2.7"), asn_record(70000, "Odd bounds")),
        (*range_of("2001::", "2001::ffff:ffff:ffff:ffff:ffff:ffff"), asn_record(6939, "HE")),
        (*range_of("2001:db8::5", "2001:db8::5"), asn_record(4200000000, "Ünïcode")),
    ]
    path = tmp_path / "t.mmdb"
    path.write_bytes(build_mmdb(ranges, "asn", EPOCH, "test"))
    reader = maxminddb.open_database(str(path))
    expected = {
        "1.0.0.7": 13335,
        "1.0.1.4": None,
        "1.0.1.5": 70000,
        "1.0.2.7": 70000,
        "1.0.2.8": None,
        "2001::1": 6939,
        "2001:1::1": None,
        "2001:db8::4": None,
        "2001:db8::5": 4200000000,
        "2001:db8::6": None,
    }
    for address, number in expected.items():
        record = reader.get(address)
        assert (record or {}).get("autonomous_system_number") == number, address
    meta = reader.metadata()
    assert (meta.database_type, meta.ip_version, meta.build_epoch) == ("asn", 6, EPOCH)
    if shutil.which("mmdblookup"):
        for address, number in expected.items():
            proc = subprocess.run(
                ["mmdblookup", "-f", str(path), "-i", address, "autonomous_system_number"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            got = int(proc.stdout.split()[0]) if proc.returncode == 0 else None
            assert got == number, address
    # The same input gives the same bytes.
    assert build_mmdb(ranges, "asn", EPOCH, "test") == path.read_bytes()


def test_writer_refuses_overlaps_and_a_zero_epoch() -> None:
    with pytest.raises(ValueError, match="overlap"):
        build_mmdb(
            [(*range_of("1.0.0.0", "1.0.0.9"), {}), (*range_of("1.0.0.5", "1.0.0.20"), {})],
            "x",
            EPOCH,
        )
    with pytest.raises(ValueError, match="build_epoch"):
        build_mmdb([], "x", 0)


def test_overlapping_csv_ranges_the_inner_one_wins(tmp_path: Path) -> None:
    merged, overlaps = without_overlaps(
        [
            (100, 200, {"a": 1}),
            (150, 160, {"a": 2}),  # nested: the inner one wins, the outer keeps both sides
            (195, 250, {"a": 3}),  # partial: the later-starting one wins
        ]
    )
    assert overlaps == 2
    assert merged == [
        (100, 149, {"a": 1}),
        (150, 160, {"a": 2}),
        (161, 194, {"a": 1}),
        (195, 250, {"a": 3}),
    ]
    csv = tmp_path / "r.csv"
    csv.write_text('1.0.0.0,1.0.0.255,13335,"Cloudflare, Inc."\n1.0.4.0,1.0.7.255,38803,X\n')
    data, ranges, overlaps = build_from_csv([str(csv)], "asn", "", EPOCH)
    assert (ranges, overlaps) == (2, 0)
    out = tmp_path / "r.mmdb"
    out.write_bytes(data)
    assert maxminddb.open_database(str(out)).get("1.0.0.9") == asn_record(13335, "Cloudflare, Inc.")
    csv.write_text("1.0.0.0,1.0.0.255,13335,A\n1.0.4.0,nope,1,B\n")
    with pytest.raises(CsvDataError, match=r"r\.csv:2: "):
        build_from_csv([str(csv)], "asn", "", EPOCH)
