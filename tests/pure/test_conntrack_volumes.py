"""Offloaded flows' real volumes from conntrack's accounting (ips/io/conntrack.py): the
ctnetlink messages parsed (built here with the netlink helpers, malformed ones counted), the
hold of an offloaded flow's record whether the DESTROY event comes before or after the
engine's FlowEnd (or never: the GET's counts, else the engine's), and the kernel's counts in
the EVE flow record and the store's row."""

from __future__ import annotations

import ipaddress
import socket
import struct

from test_offload import C, S, engine, tcp_exchange

from ips.core.events import FlowEnd
from ips.io.conntrack import (
    CTA_COUNTERS_BYTES,
    CTA_COUNTERS_ORIG,
    CTA_COUNTERS_PACKETS,
    CTA_COUNTERS_REPLY,
    CTA_IP_V4_DST,
    CTA_IP_V4_SRC,
    CTA_PROTO_DST_PORT,
    CTA_PROTO_NUM,
    CTA_PROTO_SRC_PORT,
    CTA_TUPLE_IP,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_PROTO,
    IPCTNL_MSG_CT_DELETE,
    NFNL_SUBSYS_CTNETLINK,
    ConntrackCounts,
    ConntrackVolumes,
    get_request,
    parse_messages,
)
from ips.io.netlink import NLMSGHDR, attr, nfnl_message
from ips.sinks.eve import flow_record
from ips.store.records import HomeNetworks, flow_row
from ips.store.schema import FLOW_COLUMNS

NESTED = 0x8000
BE16, BE64 = struct.Struct("!H"), struct.Struct("!Q")


def addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def destroy_message(
    src: str, sport: int, dst: str, dport: int, counts: tuple[int, int, int, int], proto: int = 6
) -> bytes:
    """A DESTROY event as the kernel sends it (only the attributes we read)."""
    ip = attr(CTA_IP_V4_SRC, addr(src)) + attr(CTA_IP_V4_DST, addr(dst))
    ports = (
        attr(CTA_PROTO_NUM, bytes([proto]))
        + attr(CTA_PROTO_SRC_PORT, BE16.pack(sport))
        + attr(CTA_PROTO_DST_PORT, BE16.pack(dport))
    )
    tup = attr(CTA_TUPLE_IP | NESTED, ip) + attr(CTA_TUPLE_PROTO | NESTED, ports)
    po, bo, pr, br = counts
    orig = attr(CTA_COUNTERS_PACKETS, BE64.pack(po)) + attr(CTA_COUNTERS_BYTES, BE64.pack(bo))
    reply = attr(CTA_COUNTERS_PACKETS, BE64.pack(pr)) + attr(CTA_COUNTERS_BYTES, BE64.pack(br))
    body = (
        attr(CTA_TUPLE_ORIG | NESTED, tup)
        + attr(CTA_COUNTERS_ORIG | NESTED, orig)
        + attr(CTA_COUNTERS_REPLY | NESTED, reply)
    )
    return nfnl_message(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE, 0, body, 0, 0, socket.AF_INET)


def test_a_destroy_event_is_parsed_with_its_tuple_and_both_ways_counts() -> None:
    msg = destroy_message(C, 40000, S, 5201, (15000, 21_000_000, 7000, 400_000))
    two = msg + destroy_message(C, 40001, S, 53, (1, 60, 1, 90), proto=17)
    entries, bad = parse_messages(two, len(two))
    assert bad == 0
    assert entries == [
        ConntrackCounts((6, addr(C), 40000, addr(S), 5201), 15000, 21_000_000, 7000, 400_000),
        ConntrackCounts((17, addr(C), 40001, addr(S), 53), 1, 60, 1, 90),
    ]


def test_malformed_messages_are_counted_and_the_good_ones_kept() -> None:
    good = destroy_message(C, 40000, S, 5201, (1, 2, 3, 4))
    # An attribute whose length runs past its message.
    body = struct.pack("=HH", 200, CTA_TUPLE_ORIG | NESTED) + b"\0" * 8
    broken = nfnl_message(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE, 0, body, 0)
    buf = broken + good
    entries, bad = parse_messages(buf, len(buf))
    assert bad == 1 and len(entries) == 1
    # A message cut short: the rest of the buffer is not read, and it is counted.
    entries, bad = parse_messages(good, len(good) - 8)
    assert entries == [] and bad == 1
    # Without counters (accounting off): nothing to say, not malformed.
    no_counts = nfnl_message(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE, 0, b"", 0)
    assert parse_messages(no_counts, len(no_counts)) == ([], 0)


def test_the_get_request_names_the_original_tuple() -> None:
    msg = get_request((6, addr(C), 40000, addr(S), 5201), seq=7)
    length, msg_type, _flags, seq, _pid = NLMSGHDR.unpack_from(msg, 0)
    assert length == len(msg) and seq == 7 and msg_type == (NFNL_SUBSYS_CTNETLINK << 8) | 1
    # Its tuple parses back with the same code as the kernel's answers.
    body = msg[20:] + attr(CTA_COUNTERS_ORIG | NESTED, b"")
    reply = nfnl_message(NFNL_SUBSYS_CTNETLINK, 0, 0, body, 0)
    entries, _ = parse_messages(reply, len(reply))
    assert entries[0].tuple5 == (6, addr(C), 40000, addr(S), 5201)


def offloaded_end() -> FlowEnd:
    e = engine("set default accept\n")
    tcp_exchange(e)
    flow = next(iter(e.flows.flows()))
    assert flow.offloaded
    return FlowEnd(flow, "timeout", 100.0)


def counts_of(end: FlowEnd, big: int = 20_971_520) -> ConntrackCounts:
    return ConntrackCounts(ConntrackVolumes.key(end), 15000, big + 800_000, 7000, 364_000)


def test_a_destroy_after_the_flow_end_completes_the_held_record() -> None:
    v = ConntrackVolumes(hold_seconds=3.0)
    end = offloaded_end()
    assert v.hold(end, 100.0, None) == []  # held
    assert v.due(102.0) == []
    out = v.destroyed(counts_of(end))
    assert out == [end] and end.kernel is not None and end.kernel.source == "destroy"
    assert end.kernel.bytes_fwd == 21_771_520 and end.kernel.pkts_rev == 7000
    assert v.due(200.0) == [] and v.stats()["held"] == 0


def test_a_destroy_before_the_flow_end_is_kept_and_used_at_once() -> None:
    v = ConntrackVolumes()
    end = offloaded_end()
    assert v.destroyed(counts_of(end)) == []
    assert v.hold(end, 100.0, None) == [end]
    assert end.kernel is not None and end.kernel.source == "destroy"
    assert v.counted["destroy"] == 1


def test_without_a_destroy_the_get_counts_go_at_the_deadline_else_the_engines() -> None:
    v = ConntrackVolumes(hold_seconds=3.0)
    with_get, without = offloaded_end(), offloaded_end()
    assert v.hold(with_get, 100.0, counts_of(with_get)) == []
    assert v.due(102.9) == []
    assert v.due(103.0) == [with_get]
    assert with_get.kernel is not None and with_get.kernel.source == "get"
    v.hold(without, 104.0, None)
    assert v.drain() == [without] and without.kernel is None
    assert v.counted == {"destroy": 0, "get": 1, "engine": 1, "destroy_unmatched": 0}


def test_flows_not_offloaded_pass_at_once_untouched() -> None:
    e = engine("set offload off\nset default accept\n")
    tcp_exchange(e)
    end = FlowEnd(next(iter(e.flows.flows())), "timeout", 100.0)
    v = ConntrackVolumes()
    assert v.hold(end, 100.0, None) == [end] and end.kernel is None


def test_the_eve_record_and_the_store_row_carry_the_kernels_counts() -> None:
    end = offloaded_end()
    engine_bytes = end.flow.bytes_fwd + end.flow.bytes_rev
    before = flow_record(end)["flow"]
    assert before["bytes_toserver"] + before["bytes_toclient"] == engine_bytes  # type: ignore[index]
    v = ConntrackVolumes()
    v.destroyed(counts_of(end))
    v.hold(end, 100.0, None)
    record = flow_record(end)
    flow = record["flow"]
    assert flow["pkts_toserver"] == 15000 and flow["bytes_toserver"] == 21_771_520  # type: ignore[index]
    assert flow["pkts_toclient"] == 7000 and flow["bytes_toclient"] == 364_000  # type: ignore[index]
    assert flow["bypass"] == "capture"  # type: ignore[index]
    bypassed = flow["bypassed"]  # type: ignore[index]
    assert bypassed["bytes_toserver"] == 21_771_520 - end.flow.bytes_fwd
    assert record["ipsctl"]["counted_by"] == "conntrack-destroy"  # type: ignore[index]
    row = dict(zip(FLOW_COLUMNS, flow_row(end, None, HomeNetworks()), strict=True))
    assert (row["pkts_fwd"], row["bytes_fwd"], row["pkts_rev"], row["bytes_rev"]) == (
        15000,
        21_771_520,
        7000,
        364_000,
    )


def test_the_fast_eve_line_says_the_same_as_the_record() -> None:
    import json

    from ips.sinks.eve import flow_line

    end = offloaded_end()
    ConntrackVolumes().hold(end, 100.0, counts_of(end))
    v = ConntrackVolumes(hold_seconds=0.0)
    v.hold(end, 100.0, counts_of(end))
    assert v.due(100.0) == [end]
    assert json.loads(flow_line(end)) == flow_record(end)


def test_the_fast_eve_line_of_an_offloaded_flow_is_the_records_json_to_the_byte() -> None:
    """flow_line writes offloaded flows' records itself (they were json.dumps of
    flow_record): the same text, byte for byte, for counts from a DESTROY and from a GET,
    with interfaces, names and the `ipsctl` object's order (names, out_iface, counted_by)."""
    import json

    from ips.core.app_fields import AppFields
    from ips.sinks.eve import flow_line

    for source in ("destroy", "get"):
        for named in (False, True):
            for ifaces in ((None, None), ("lan0", "dmz0")):
                end = offloaded_end()
                flow = end.flow
                flow.iif, flow.oif = ifaces
                if named:
                    flow.dst_name = "svc.example"
                    flow.app = AppFields()
                    flow.app.http_host = 'host "quoted"'
                v = ConntrackVolumes(hold_seconds=0.0)
                if source == "destroy":
                    v.hold(end, 100.0, None)
                    assert v.destroyed(counts_of(end)) == [end]
                else:
                    v.hold(end, 100.0, counts_of(end))
                    assert v.due(100.0) == [end]
                assert end.kernel is not None and end.kernel.source == source
                want = json.dumps(flow_record(end), separators=(",", ":"))
                assert flow_line(end) == want
                assert flow_line(end, "eth9") == json.dumps(
                    flow_record(end, "eth9"), separators=(",", ":")
                )


class _CountingWatch:
    """A ConntrackWatch stand-in: GETs counted and answered with fixed counts."""

    def __init__(self, answer: ConntrackCounts | None) -> None:
        self.answer = answer
        self.gets = 0

    def get(self, _tuple5: object) -> ConntrackCounts | None:
        self.gets += 1
        return self.answer


def test_the_worker_asks_conntrack_only_for_flows_whose_destroy_is_not_known() -> None:
    """OffloadedVolumes.filter: a flow whose DESTROY was read already is completed with it
    and costs no GET (a netlink round trip); one whose DESTROY is not known yet is held with
    the GET's counts, which go out at the deadline."""
    from ips.io.conntrack import OffloadedVolumes

    delivered: list[object] = []
    known, unknown = offloaded_end(), offloaded_end()
    watch = _CountingWatch(counts_of(unknown))
    vols = OffloadedVolumes(delivered.extend, watch, ConntrackVolumes(hold_seconds=3.0))  # type: ignore[arg-type]
    vols.volumes.destroyed(counts_of(known))
    assert vols.filter([known], 100.0) == [known] and watch.gets == 0
    assert known.kernel is not None and known.kernel.source == "destroy"
    assert vols.filter([unknown], 100.0) == [] and watch.gets == 1
    assert vols.volumes.due(103.0) == [unknown]
    assert unknown.kernel is not None and unknown.kernel.source == "get"
