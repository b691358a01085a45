"""Inline flows keep their interfaces: the engine notes where a flow's first decided packet
came in and would go out (Meta.iif/oif, NFQUEUE's names), its EVE flow record carries them
(`in_iface`, Suricata's field, and `ipsctl.out_iface`), so does its store row (`iface`,
`out_iface`), and the store's `interface` dimension counts the flow on each of them once:
`report top --by interface` and `report volume --interface IF` answer for inline traffic,
from the rollups and from the raw rows alike. Tap mode's interface (the sink's own) wins."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ips.core.build import build_packet
from ips.core.events import FlowEnd
from ips.core.packet import PROTO_TCP, PROTO_UDP
from ips.engine.engine import Engine, Meta
from ips.policy.resolve import load_policy_text
from ips.sinks.eve import flow_line, flow_record
from ips.store.backend import SqliteStore
from ips.store.query import history, top, volume
from ips.store.records import HomeNetworks, flow_row
from ips.store.schema import FLOW_COLUMNS
from ips.store.sink import StoreSink

LAN, DMZ = "lan0", "dmz0"
C, S = "10.10.1.20", "10.10.2.10"
SYN, ACK, PSH, SYNACK, FIN = 0x02, 0x10, 0x08, 0x12, 0x01
T0 = 1_765_000_000.0  # a whole minute: the flows below end in the same one
INBOUND, OUTBOUND = Meta(iif=LAN, oif=DMZ), Meta(iif=DMZ, oif=LAN)


def engine() -> Engine:
    return Engine(load_policy_text("set default accept\n", "t.rules"))


def exchange(e: Engine, sport: int, payload: bytes, now: float = T0) -> None:
    """A TCP connection from the LAN to the DMZ, each packet with the interfaces NFQUEUE
    gives: in on lan0 and out on dmz0, the replies the other way."""
    fwd = (PROTO_TCP, C, S, sport, 80)
    rev = (PROTO_TCP, S, C, 80, sport)
    for i, (way, flags, data) in enumerate(
        [
            (fwd, SYN, b""),
            (rev, SYNACK, b""),
            (fwd, ACK, b""),
            (fwd, ACK | PSH, payload),
            (rev, ACK | PSH, b"ok"),
            (fwd, ACK | FIN, b""),
        ]
    ):
        meta = INBOUND if way is fwd else OUTBOUND
        e.handle(build_packet(*way, flags=flags, payload=data), meta, now + i * 0.01)


def flow_ends(e: Engine, now: float = T0 + 1) -> list[FlowEnd]:
    return [ev for ev in e.drain(now) if isinstance(ev, FlowEnd)]


def test_the_engine_keeps_the_first_packets_interfaces_on_the_flow() -> None:
    e = engine()
    exchange(e, 40000, b"hello")
    (end,) = flow_ends(e)
    assert (end.flow.iif, end.flow.oif) == (LAN, DMZ)  # not the replies' (dmz0, lan0)


def test_a_flow_without_interfaces_has_none() -> None:
    e = engine()
    e.handle(build_packet(PROTO_UDP, C, S, 5000, 53, payload=b"q"), Meta(), T0)
    (end,) = flow_ends(e)
    assert (end.flow.iif, end.flow.oif) == (None, None)
    record = flow_record(end)
    assert "in_iface" not in record and "out_iface" not in record.get("ipsctl", {})
    assert json.loads(flow_line(end)) == record


def test_the_eve_flow_record_names_both_interfaces() -> None:
    e = engine()
    exchange(e, 40000, b"hello")
    (end,) = flow_ends(e)
    record = flow_record(end)
    assert record["in_iface"] == LAN and record["ipsctl"]["out_iface"] == DMZ
    # The fast writer says the same, to the byte.
    assert flow_line(end) == json.dumps(record, separators=(",", ":"))
    # Tap mode: the writer's interface (the one read) wins; there is no way out.
    tap = flow_record(end, "eth1")
    assert tap["in_iface"] == "eth1" and "ipsctl" not in tap
    assert flow_line(end, "eth1") == json.dumps(tap, separators=(",", ":"))


def test_the_store_row_has_both_and_tap_mode_keeps_its_own() -> None:
    e = engine()
    exchange(e, 40000, b"hello")
    (end,) = flow_ends(e)
    row = dict(zip(FLOW_COLUMNS, flow_row(end, None, HomeNetworks()), strict=True))
    assert (row["iface"], row["out_iface"]) == (LAN, DMZ)
    tap = dict(zip(FLOW_COLUMNS, flow_row(end, "eth1", HomeNetworks()), strict=True))
    assert (tap["iface"], tap["out_iface"]) == ("eth1", None)


def filled_store(path: Path) -> tuple[SqliteStore, list[FlowEnd]]:
    e = engine()
    exchange(e, 40000, b"x" * 1000)
    exchange(e, 40001, b"y" * 10)
    # A flow seen on other interfaces: a second LAN.
    e.handle(
        build_packet(PROTO_UDP, "10.10.3.5", S, 5000, 53, payload=b"q"),
        Meta(iif="lan1", oif=DMZ),
        T0,
    )
    ends = flow_ends(e)
    store = SqliteStore(path)
    sink = StoreSink(store, synchronous=True)
    sink.events(ends)
    sink.flush()
    assert sink.write_errors == 0, sink.last_error
    return store, ends


def _sums(ends: list[FlowEnd], iface: str) -> dict[str, int]:
    crossed = [x.flow for x in ends if iface in (x.flow.iif, x.flow.oif)]
    return {
        "flows": len(crossed),
        "bytes": sum(f.bytes_fwd + f.bytes_rev for f in crossed),
        "packets": sum(f.pkts_fwd + f.pkts_rev for f in crossed),
    }


def test_report_top_by_interface_and_volume_answer_for_inline_flows(tmp_path: Path) -> None:
    store, ends = filled_store(tmp_path / "s")
    period: dict[str, Any] = {"since": T0 - 60, "until": T0 + 120}
    got = top(store, by="interface", metric="bytes", **period)
    by_key = {r["key"]: r for r in got["rows"]}
    assert got["source"] == "rollups" and set(by_key) == {LAN, DMZ, "lan1"}
    for iface in (LAN, DMZ, "lan1"):
        want = _sums(ends, iface)
        assert {k: by_key[iface][k] for k in want} == want, iface
    # dmz0 carried all three flows (each once, though it is each flow's way out).
    assert by_key[DMZ]["flows"] == 3 and got["rows"][0]["key"] == DMZ
    # The raw rows (any filter reads them) give the same ranking.
    for metric in ("bytes", "packets", "flows"):
        raw = top(store, by="interface", metric=metric, filter_text="port 0-65535", **period)
        assert raw["source"] == "raw"
        assert raw["rows"] == top(store, by="interface", metric=metric, **period)["rows"]
    lan = volume(store, step="1m", interface=LAN, **period)
    assert sum(r["bytes"] for r in lan["rows"]) == _sums(ends, LAN)["bytes"]
    assert volume(store, step="1m", interface="nowhere", **period)["rows"] == []
    rows = list(history(store, "flows", **period))
    assert {(r["iface"], r["out_iface"]) for r in rows} == {(LAN, DMZ), ("lan1", DMZ)}
