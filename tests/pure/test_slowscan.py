"""`detect slowscan` (ips/detect/slowscan.py): the long window over portscan's and sweep's
weights sees what their one-minute windows let through — `nmap -T1` pacing, a scan split
across sources — alerts without blocking by default, stays bounded under a spoofed flood, and
stays quiet on benign captures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packets import ip, ping, tcp, udp
from playbook import Playbook, alert, packet, tick

from ips.core import craft
from ips.core.decode import decode_l3
from ips.core.events import Alert, Block
from ips.core.packet import TCP_ACK, TCP_PSH, TCP_SYN
from ips.detect.scan import GRACE
from ips.detect.slowscan import SHARE_AFTER
from ips.engine import Engine
from ips.policy.diagnostics import PolicyError
from ips.policy.model import DETECTOR_SID_BASE
from ips.policy.resolve import load_policy_text
from ips.replay import replay_captures

SCANNER = "10.0.0.66"
VICTIM = "10.0.0.10"
CLIENT = "10.0.0.20"
T0 = 1_700_000_000.0
HOURS = 3600.0
# The shipped detector lines, and the long window with its defaults.
SHORT = (
    "detect portscan ports 15 within 60s block 10m",
    "detect sweep hosts 25 within 60s block 10m",
)


def make(slow: str = "detect slowscan", *extra: str, short: tuple[str, ...] = SHORT) -> Engine:
    text = "\n".join(
        [
            "table banned dynamic timeout 1h",
            "set default accept",
            "drop from @banned",
            *extra,
            *short,
            slow,
        ]
    )
    return Engine(load_policy_text(text, "t.rules"))


def rst_for(probe: bytes) -> bytes:
    answer = craft.tcp_reset_for(decode_l3(probe))  # type: ignore[arg-type]
    assert answer is not None
    return answer


def alerts(effects: list[object], sid: int | None = None) -> list[Alert]:
    return [e for e in effects if isinstance(e, Alert) and sid in (None, e.signature_id)]


def probe_ports(e: Engine, src: str, ports: list[int], t: float, every: float) -> list[object]:
    """A SYN to each port, `every` seconds apart, each reset by the target; ticks between."""
    effects: list[object] = []
    for port in ports:
        syn = tcp(src, VICTIM, 40000 + port, port)
        effects += e.handle(syn, now=t).effects
        effects += e.handle(rst_for(syn), now=t).effects
        effects += e.tick(t + min(every / 2, 0.5))
        t += every
    return effects


SLOW_PORTS = DETECTOR_SID_BASE["slowscan"] + 1
SLOW_HOSTS = DETECTOR_SID_BASE["slowscan"] + 2
DISTRIBUTED = DETECTOR_SID_BASE["slowscan"] + 3


# ---- nmap -T1: one probe every 15 s ---------------------------------------------------------


@pytest.mark.parametrize("answer", ["reset", "silence"])
def test_nmap_T1_pacing_is_seen_by_the_long_window_not_the_short_one(answer: str) -> None:
    """20 ports, one every 15 s (four a minute: under portscan's 15 per 60 s): the long window
    alerts at the 15th failed port, without a block; portscan never fires."""
    story = Playbook(make(), now=T0)
    for n, port in enumerate(range(1, 21), start=1):
        syn = tcp(SCANNER, VICTIM, 40000 + port, port)
        at = T0 + 15 * (n - 1)
        story >> packet(syn, at=at)
        if answer == "reset":
            story >> packet(rst_for(syn), at=at + 0.001)  # a closed port: counted at once
        else:
            story >> tick(at=at + GRACE + 1)  # a filtered port: weighed when overdue
        if n == 15:
            story << alert(
                sid=SLOW_PORTS,
                category="slowscan",
                action="allowed",
                src=SCANNER,
                dst=VICTIM,
                check=lambda a: (
                    a.extra["view"] == "ports"
                    and a.extra["count"] == 15
                    and a.extra["targets"] == list(range(1, 16))
                    and a.extra["window"] == 6 * HOURS
                ),
            )
    assert story  # every other step: no effect at all (no portscan alert, no block)
    assert set(story.engine.tables["banned"].members) == set()
    stats = story.engine.detect.stats()  # type: ignore[union-attr]
    assert stats["portscan"]["alerts"] == 0 and stats["slowscan"]["alerts"] == 1


def test_long_window_fires_at_its_threshold_and_not_below_and_forgets_after_it() -> None:
    e = make("detect slowscan ports 10 within 1h")
    effects = probe_ports(e, SCANNER, list(range(1, 10)), T0, every=300)  # 9 in 45 min
    assert alerts(effects) == []
    # the 10th comes after the window (1 h from the first probe): a new window, 1 port in it
    effects = probe_ports(e, SCANNER, [10], T0 + HOURS + 1, every=300)
    assert alerts(effects) == []
    pair = e.detect.by_name["slowscan"].pairs[(ip(SCANNER), ip(VICTIM))]  # type: ignore[union-attr, attr-defined]
    assert pair.score == 1.0
    effects = probe_ports(e, SCANNER, list(range(11, 20)), T0 + HOURS + 100, every=60)
    (found,) = alerts(effects)
    assert (found.signature_id, found.extra["count"]) == (SLOW_PORTS, 10)  # type: ignore[index]
    e.tick(T0 + 3 * HOURS)  # windows over: nothing left
    assert e.detect.stats()["slowscan"]["tracked"] == 0  # type: ignore[union-attr]


def test_a_fast_scan_is_told_once_by_the_short_window() -> None:
    e = make()
    effects = probe_ports(e, SCANNER, list(range(1, 41)), T0, every=0.01)
    assert [a.category for a in alerts(effects)] == ["portscan"]
    assert len([x for x in effects if isinstance(x, Block)]) == 1


def test_slow_sweep_of_hosts_and_used_targets_taken_back() -> None:
    e = make("detect slowscan hosts 20")
    effects: list[object] = []
    t = T0
    for i in range(1, 20):  # 19 hosts pinged, one a minute (sweep: 25 per 60 s)
        effects += e.handle(ping(SCANNER, f"10.0.1.{i}", ident=i), now=t).effects
        effects += e.tick(t + 1)
        t += 60
    assert alerts(effects) == []
    effects = e.handle(ping(SCANNER, "10.0.1.20", ident=20), now=t).effects
    (found,) = alerts(effects)
    assert found.signature_id == SLOW_HOSTS and found.extra["count"] == 20  # type: ignore[index]
    # a client whose SYNs to 30 hosts went unanswered once, and who then used each of them
    e = make("detect slowscan hosts 20")
    t = T0
    effects = []
    for i in range(1, 31):
        host = f"10.0.2.{i}"
        effects += e.handle(tcp(CLIENT, host, 41000 + i, 443), now=t).effects  # lost
        effects += e.tick(t + GRACE + 1)
        used = [
            tcp(CLIENT, host, 42000 + i, 443),
            tcp(host, CLIENT, 443, 42000 + i, TCP_SYN | TCP_ACK),
            tcp(CLIENT, host, 42000 + i, 443, TCP_ACK | TCP_PSH, payload=b"hi"),
            tcp(host, CLIENT, 443, 42000 + i, TCP_ACK | TCP_PSH, payload=b"ok"),
        ]
        for n, pkt in enumerate(used):
            effects += e.handle(pkt, now=t + 30 + n * 0.01).effects
        effects += e.tick(t + 30 + GRACE + 1)
        t += 120
    assert alerts(effects) == []


# ---- split across sources -------------------------------------------------------------------


def split_scan(e: Engine, sources: int, ports_each: int, t: float = T0) -> list[object]:
    """`sources` scanners, each with its own `ports_each` ports of VICTIM, taking turns."""
    effects: list[object] = []
    for k in range(ports_each):
        for s in range(sources):
            port = 1 + s * ports_each + k
            effects += probe_ports(e, f"10.9.0.{s + 1}", [port], t, every=0)
            t += 0.2
    return effects


def test_a_scan_split_across_three_sources_is_seen_as_distributed() -> None:
    e = make()
    effects = split_scan(e, 3, 14)  # 42 ports, 14 each: under every per-source threshold
    (found,) = alerts(effects)
    assert (found.signature_id, found.category, found.action) == (
        DISTRIBUTED,
        "slowscan",
        "allowed",
    )
    extra = found.extra
    assert extra is not None and extra["view"] == "distributed" and extra["target"] == VICTIM
    assert extra["count"] == extra["threshold"] == 20
    assert extra["sources"] == ["10.9.0.1", "10.9.0.2", "10.9.0.3"]
    assert [x for x in effects if isinstance(x, Block)] == []  # never a block: many sources


def test_what_the_distributed_view_lets_through() -> None:
    # off
    assert alerts(split_scan(make("detect slowscan distributed off"), 3, 14)) == []
    # sources that probe fewer than SHARE_AFTER (3) ports each: background, not counted
    assert SHARE_AFTER == 3
    assert alerts(split_scan(make(), 20, 2)) == []
    # a split that covers fewer ports than the threshold
    assert alerts(split_scan(make(), 3, 6)) == []  # 18 < 20
    assert len(alerts(split_scan(make(), 3, 7), DISTRIBUTED)) == 1  # 21
    # one source alone is the ports view's (here above 25 ports: none), never "distributed"
    assert (
        alerts(
            probe_ports(make("detect slowscan ports 30"), SCANNER, list(range(1, 26)), T0, every=5)
        )
        == []
    )


def test_even_with_block_the_distributed_view_only_alerts() -> None:
    e = make("detect slowscan block 1h")
    effects = split_scan(e, 3, 14)
    assert [a.signature_id for a in alerts(effects)] == [DISTRIBUTED]
    assert [x for x in effects if isinstance(x, Block)] == []
    # while a slow single scanner is blocked when asked to
    effects = probe_ports(e, SCANNER, list(range(100, 115)), T0 + 100, every=15)
    (found,) = alerts(effects)
    assert found.signature_id == SLOW_PORTS and found.action == "blocked"
    (block,) = [x for x in effects if isinstance(x, Block)]
    assert (block.addr_text, block.detector, block.ttl) == (SCANNER, "slowscan", 3600.0)


# ---- memory ----------------------------------------------------------------------------------


def test_memory_bound_holds_under_a_spoofed_flood_of_distinct_sources() -> None:
    """5,000 spoofed sources, each failing on 3 ports of the victim: each view keeps at most
    `detect-memory` keys and counts what it let go (the short windows' alerts aside)."""
    e = make(
        "detect slowscan",
        "set detect-memory 1000",
        short=("detect portscan alert", "detect sweep alert"),
    )
    t = T0
    effects: list[object] = []
    for i in range(5000):
        src = f"11.{i // 256 % 256}.{i % 256}.1"
        for port in (1000 + 3 * i % 60000, 1001 + 3 * i % 60000, 1002 + 3 * i % 60000):
            syn = tcp(src, VICTIM, 40000, port)
            effects += e.handle(syn, now=t).effects
            effects += e.handle(rst_for(syn), now=t).effects
        t += 0.001
    stats = e.detect.stats()["slowscan"]  # type: ignore[union-attr]
    assert (stats["pairs"], stats["sources"], stats["spreads"]) == (1000, 1000, 1)
    assert stats["evicted"] == 4000 + 4000  # source+host windows, source windows
    assert stats["tracked"] == 2001 <= 3 * stats["memory"]
    slow = e.detect.by_name["slowscan"]  # type: ignore[union-attr]
    (spread,) = slow.spreads.values()  # type: ignore[attr-defined]
    assert spread.fired and len(spread.ports) == 21 and len(spread.sources) == 7
    assert [a.signature_id for a in alerts(effects, DISTRIBUTED)] == [DISTRIBUTED]


# ---- policy ----------------------------------------------------------------------------------


def test_defaults_and_options() -> None:
    policy = load_policy_text("detect portscan alert\ndetect sweep alert\ndetect slowscan", "t")
    assert policy.detectors["slowscan"].params == {
        "ports": 15,
        "hosts": 50,
        "distributed": 20,
        "within": 6 * HOURS,
        "response": "alert",
    }
    assert policy.warnings == []
    policy = load_policy_text(
        "table banned dynamic\ndetect portscan alert\ndetect sweep alert\n"
        "detect slowscan ports 20 hosts 40 distributed off within 12h block 2h ignore 10.0.0.0/8",
        "t",
    )
    params = policy.detectors["slowscan"].params
    assert (params["ports"], params["hosts"], params["distributed"], params["within"]) == (
        20,
        40,
        None,
        12 * HOURS,
    )
    assert (params["response"], params["block"]) == ("block", 7200.0)


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        (
            "detect slowscan",
            "detector 'slowscan' has nothing to count",
            "add `detect portscan` and `detect sweep`",
        ),
        (
            "detect portscan alert\ndetect slowscan distributed many",
            "'distributed many': give a number of ports (at least 1) or off",
            None,
        ),
        (
            "detect portscan alert\ndetect slowscan distributed 0",
            "'distributed 0': give a number of ports (at least 1) or off",
            None,
        ),
        ("detect portscan alert\ndetect slowscan ports 0", "'ports' must be at least 1", None),
        (
            "detect portscan distributed 5 alert",
            "'distributed' is not an option of detector 'portscan'",
            None,
        ),
        ("detect portscan alert\ndetect slowscan rate 5/s", "'rate' is not an option", None),
        ("detect portscan alert\ndetect slowscan block 1h", "no dynamic table 'banned'", None),
    ],
)
def test_policy_errors(text: str, message: str, hint: str | None) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "t.rules")
    (diag,) = info.value.diagnostics
    assert message in diag.message, diag.message
    if hint is not None:
        assert hint in (diag.hint or "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "detect portscan alert\ndetect slowscan hosts 30",
            "slowscan's 'hosts' counts the probes that sweep weighs, "
            "but there is no `detect sweep`",
        ),
        (
            "detect sweep alert\ndetect slowscan distributed 30",
            "slowscan's 'distributed' counts the probes that portscan weighs",
        ),
        (
            "detect portscan within 10m alert\ndetect slowscan within 5m",
            "slowscan's window (300s) is no longer than portscan's (600s)",
        ),
    ],
)
def test_policy_warnings(text: str, message: str) -> None:
    (warning,) = load_policy_text(text, "t.rules").warnings
    assert message in warning.message, warning.message
    line, col = text.splitlines()[warning.span.line - 1], warning.span.col
    assert line[col - 1 :].split()[0] in ("hosts", "distributed", "within")


def test_reload_keeps_the_long_window_and_removing_it_stops_the_feed() -> None:
    text = "\n".join(["table banned dynamic timeout 1h", "set default accept", *SHORT])
    e = Engine(load_policy_text(text + "\ndetect slowscan", "t.rules"))
    probe_ports(e, SCANNER, list(range(1, 11)), T0, every=15)
    e.load(load_policy_text(text + "\ndetect slowscan\ndrop proto tcp to port 23", "t.rules"))
    effects = probe_ports(e, SCANNER, list(range(11, 16)), T0 + 200, every=15)
    assert [a.signature_id for a in alerts(effects)] == [SLOW_PORTS]
    e.load(load_policy_text(text, "t.rules"))  # portscan kept as it was, slowscan gone
    assert e.detect.portscan.slow is None  # type: ignore[union-attr]


# ---- benign captures --------------------------------------------------------------------------


def test_benign_captures_raise_no_slowscan_alert(pcaps_dir: Path, tmp_path: Path) -> None:
    """All benign shared captures through one engine (a long window spans them all) raise
    nothing; the same policy sees a slow scan written as a capture."""
    from ips.io.pcap import write_pcap  # type: ignore[attr-defined]

    attacks = set()
    for line in (pcaps_dir / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*(\S+\.pcap\S*)\s*\|[^|]*\|([^|]*)\|", line)
        if m and "ATTACK" in m.group(2):
            attacks.add(m.group(1))
    benign = [
        str(p)
        for p in sorted(pcaps_dir.iterdir())
        if p.suffix in (".pcap", ".pcapng") and p.name not in attacks
    ]
    assert len(benign) > 20
    policy = load_policy_text(
        "set default accept\ndetect portscan alert\ndetect sweep alert\ndetect slowscan", "t"
    )
    result = replay_captures(policy, benign, progress=False)
    assert dict(result.detector_alerts) == {}
    records = []
    for n, port in enumerate(range(1, 21)):
        syn = tcp(SCANNER, VICTIM, 40000 + port, port)
        records += [(T0 + 15 * n, syn), (T0 + 15 * n + 0.001, rst_for(syn))]
    records.append((T0 + 400, udp(CLIENT, VICTIM, 40000, 53)))  # the clock runs on
    capture = tmp_path / "slow.pcap"
    write_pcap(capture, records)
    seen = replay_captures(policy, [str(capture)], progress=False)
    assert dict(seen.detector_alerts) == {"slowscan": 1}
