"""`ipsctl replay --store` fills the store from captures: the same captures twice give
identical reports; the store's commands at the command line; `ipsctl run --store` with a
store that cannot be opened is a usage error (exit 2) before anything else is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ips.cli import main
from ips.daemon.config import ConfigError, DaemonConfig, Problem, RunOptions
from ips.store.backend import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
POLICY = str(ROOT / "policies" / "tap.rules")
EVERYTHING = ["--since", "@0", "--until", "@2000000000"]


def _reports(store: str) -> list[str]:
    runner = CliRunner()
    out = []
    for command in (
        ["report", "top", "--by", "src", "--json"],
        ["report", "top", "--by", "port", "--metric", "packets"],
        ["report", "top", "--by", "app", "--metric", "flows", "--csv"],
        ["report", "top", "--by", "dst", "--filter", "proto tcp and dport 443"],
        ["report", "volume", "--step", "1m", "--json"],
        ["history", "flows", "--json", "--limit", "100000"],
        ["history", "alerts", "--csv"],
        ["history", "app", "--json"],
        ["export", "blocks"],
    ):
        result = runner.invoke(main, [*command, *EVERYTHING, "--store", store])
        assert result.exit_code == 0, result.output
        out.append(result.output)
    return out


def test_replay_twice_gives_identical_reports(pcaps_dir: Path, tmp_path: Path) -> None:
    captures = sorted(str(p) for p in pcaps_dir.glob("*.pcap"))[:12]
    runner = CliRunner()
    stores = []
    for name in ("a", "b"):
        store = str(tmp_path / name)
        result = runner.invoke(main, ["replay", POLICY, *captures, "--store", store])
        assert result.exit_code == 0, result.output
        stores.append(store)
    first, second = _reports(stores[0]), _reports(stores[1])
    assert first == second
    assert '"rows": [' in first[0] and "443/tcp" in first[1]


def test_the_report_commands_explain_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["report", "top", "--store", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "no store here" in missing.output
    SqliteStore(tmp_path / "s").close()  # an empty store
    bad = runner.invoke(main, ["history", "flows", "--filter", "colour red", "--store",
                               str(tmp_path / "s")])  # fmt: skip
    assert bad.exit_code == 2 and "unknown filter word" in bad.output
    when = runner.invoke(main, ["report", "volume", "--since", "yesterday-ish", "--store",
                                str(tmp_path / "s")])  # fmt: skip
    assert when.exit_code == 2 and "not a time" in when.output


def test_run_with_a_store_that_cannot_be_opened_exits_2(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    bad = str(tmp_path / "file" / "store")
    with pytest.raises(ConfigError) as caught:
        DaemonConfig.from_options(RunOptions(policy_path=POLICY, store=bad), lambda _p: None)
    assert caught.value.problem is Problem.USAGE and "cannot open the store" in str(caught.value)
    result = CliRunner().invoke(main, ["run", "--policy", POLICY, "--store", bad])
    assert result.exit_code == 2 and "--store: cannot open the store" in result.output
    retention = CliRunner().invoke(
        main,
        [
            "run",
            "--policy",
            POLICY,
            "--store",
            str(tmp_path / "ok"),
            "--store-retention",
            "raw forever-ish",
        ],
    )
    assert retention.exit_code == 2 and "not an age" in retention.output


def test_volume_svg(pcaps_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    store = str(tmp_path / "s")
    captures = sorted(str(p) for p in pcaps_dir.glob("*.pcap"))[:6]
    assert runner.invoke(main, ["replay", POLICY, *captures, "--store", store]).exit_code == 0
    svg = tmp_path / "v.svg"
    result = runner.invoke(main, ["report", "volume", "--step", "1h", *EVERYTHING, "--svg",
                                  str(svg), "--store", store])  # fmt: skip
    assert result.exit_code == 0, result.output
    text = svg.read_text()
    assert text.startswith("<svg") and "peak" in text and text.count("<rect") >= 2
    import xml.etree.ElementTree as ET

    ET.fromstring(text)  # well-formed
