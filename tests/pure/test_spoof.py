"""Issue 19, item 1: forged scans must not block innocent hosts.

A block is decided on evidence the source cannot forge (ips/engine/evidence.py): the MAC the
packets came from against the neighbour table, the route, a completed handshake and its hop
count. A forged address is never blocked: a "spoofed source" alert, and its real sender is
blocked by MAC when it is a host of the segment.

The lab: client 10.10.1.20 (and its second address 10.10.1.21), attacker 10.10.1.66 on the
LAN; the server 10.10.2.10 in the DMZ; a router 10.10.1.254 towards the Internet.
"""

from __future__ import annotations

import io
import json

from packets import tcp
from playbook import Playbook, accept, alert, block, drop, mac_block, packet, tick

from ips.core.craft import tcp_reset_for
from ips.core.decode import decode_l3
from ips.core.events import Alert
from ips.core.link import link_view
from ips.engine import Engine, Meta
from ips.engine.evidence import EVIDENCE_WAIT, hops
from ips.kernel.neighbours import view_from_messages
from ips.policy.model import SPOOF_SID
from ips.policy.resolve import load_policy_text
from ips.sinks.eve import EveWriter

CLIENT, DECOY, ATTACKER, SERVER = "10.10.1.20", "10.10.1.21", "10.10.1.66", "10.10.2.10"
ROUTER, REMOTE = "10.10.1.254", "203.0.113.5"
CLIENT_MAC = bytes.fromhex("020000000020")
ATTACKER_MAC = bytes.fromhex("020000000066")
SERVER_MAC = bytes.fromhex("020000000010")
ROUTER_MAC = bytes.fromhex("0200000000fe")
ATTACKER_MAC_TEXT = "02:00:00:00:00:66"
T0 = 1_700_000_000.0


def packed(text: str) -> bytes:
    import ipaddress

    return ipaddress.ip_address(text).packed


def lab_view(**extra: bytes) -> object:
    """The gateway's neighbour table once everyone talked (extra: more address -> MAC)."""
    table = {CLIENT: CLIENT_MAC, ATTACKER: ATTACKER_MAC, SERVER: SERVER_MAC, ROUTER: ROUTER_MAC}
    table.update(extra)
    return link_view(
        [(packed(a), m) for a, m in table.items()],
        [(packed("10.10.1.0"), 24), (packed("10.10.2.0"), 24)],
        [packed(ROUTER)],
    )


def engine(evidence: str | None = None, *, view: object = None, trusted: str = "",
           never_block: tuple[str, ...] = ()) -> Engine:  # fmt: skip
    lines = ["table banned dynamic timeout 1h", "set default accept", "drop from @banned",
             "detect portscan ports 3 within 60s block 10m"]  # fmt: skip
    if evidence is not None:
        lines.append(f"set block-evidence {evidence}")
    if trusted:
        lines.append(f"table trusted = {{ {trusted} }}")
    e = Engine(load_policy_text("\n".join(lines), "t.rules"), never_block=never_block)
    if view is not None:
        e.set_link_view(view)  # type: ignore[arg-type]
    return e


def syn(src: str, port: int, mac: bytes = ATTACKER_MAC, ttl: int = 64) -> object:
    return packet(tcp(src, SERVER, 41000 + port, port, "S", ttl=ttl), Meta(iif="lan0", mac=mac))


def rst(src: str, port: int) -> object:
    probe = decode_l3(tcp(src, SERVER, 41000 + port, port, "S"))
    answer = tcp_reset_for(probe)  # type: ignore[arg-type]
    assert answer is not None
    return packet(answer, Meta(iif="dmz0", mac=SERVER_MAC))


def spoof_alert(claimed: str, evidence: str, action: str = "blocked") -> object:
    return alert(sid=SPOOF_SID, category="spoofed-source", src=claimed, action=action,
                 check=lambda a: a.extra["evidence"] == evidence)  # fmt: skip


def scan_alert(src: str, status: str, action: str) -> object:
    return alert(category="portscan", src=src, action=action,
                 check=lambda a: a.extra["block"] == status)  # fmt: skip


# ---- hping3 -a CLIENT: forged SYNs from a MAC that does not own the address ----------------------


def test_forged_syns_block_the_sender_by_mac_never_the_forged_address() -> None:
    story = Playbook(engine(view=lab_view()), now=T0, step=0.01)
    story >> syn(CLIENT, 1) >> rst(CLIENT, 1) >> syn(CLIENT, 2) >> rst(CLIENT, 2) >> syn(CLIENT, 3)
    assert (
        story
        >> rst(CLIENT, 3)
        << scan_alert(CLIENT, "spoofed", "allowed")
        << spoof_alert(CLIENT, "mac-mismatch")
        << mac_block(
            ATTACKER_MAC_TEXT,
            claimed=CLIENT,
            detector="portscan",
            evidence="mac-mismatch",
            ttl=600.0,
        )
        # the attacker's next forged packet, and its own, stop (the kernel does it inline)
        >> syn(CLIENT, 4)
        << drop(reason="blocked")
        >> syn(ATTACKER, 5)
        << drop(reason="blocked")
        # the client is not blocked: its own packets pass
        >> syn(CLIENT, 80, mac=CLIENT_MAC)
        << accept()
    )
    assert packed(CLIENT) not in story.engine.blocks.table.members  # type: ignore[union-attr]
    assert story.engine.stats.spoofed == 1 and story.engine.stats.mac_blocks == 1


def test_the_spoof_alert_names_the_sender_and_the_owner() -> None:
    e = engine(view=lab_view())
    effects: list[object] = []
    for port in (1, 2, 3):
        effects += e.handle(syn(CLIENT, port).data, syn(CLIENT, port).meta, T0).effects  # type: ignore[attr-defined]
        effects += e.handle(rst(CLIENT, port).data, rst(CLIENT, port).meta, T0).effects  # type: ignore[attr-defined]
    (spoof,) = [x for x in effects if isinstance(x, Alert) and x.category == "spoofed-source"]
    assert spoof.extra == {
        "claimed": CLIENT, "evidence": "mac-mismatch", "detector": "portscan",
        "mac_block": "added", "sender_mac": ATTACKER_MAC_TEXT,
        "owner_mac": "02:00:00:00:00:20", "ttl": 600.0,
    }  # fmt: skip
    out = io.StringIO()
    EveWriter(out).events(effects)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["event_type"] for r in records] == ["alert", "alert", "ipsctl_block"]
    assert records[0]["ipsctl"]["block"] == "spoofed"
    assert records[0]["ipsctl"]["evidence"] == "spoofed:mac-mismatch"
    assert records[1]["alert"]["category"] == "spoofed-source"
    assert records[2]["ipsctl_block"]["ether"] == ATTACKER_MAC_TEXT
    assert records[2]["ipsctl_block"]["table"] == "banned_ether"
    assert records[2]["ipsctl_block"]["claimed"] == CLIENT


def test_the_real_owner_of_the_address_is_blocked() -> None:
    story = Playbook(engine(view=lab_view()), now=T0, step=0.01)
    for port in (1, 2):
        story >> syn(ATTACKER, port) >> rst(ATTACKER, port)
    assert (
        story
        >> syn(ATTACKER, 3)
        >> rst(ATTACKER, 3)
        << scan_alert(ATTACKER, "added", "blocked")
        << block(ATTACKER, detector="portscan")
        >> syn(ATTACKER, 4)
        << drop(reason="blocked")
    )
    # the alert says what proved it
    assert story.steps[-2].effects[0].extra["evidence"] == "proven:mac"


# ---- nmap -D DECOY,CLIENT,ME: only the real scanner is blocked ----------------------------------


def decoy_scan(story: Playbook) -> Playbook:
    """Each probe from both decoys and the real source (one MAC: the attacker's), then the
    server's resets; the third port crosses the threshold for all three."""
    for port in (1, 2, 3):
        for src in (DECOY, CLIENT, ATTACKER):
            story >> syn(src, port)
        if port < 3:
            for src in (DECOY, CLIENT, ATTACKER):
                story >> rst(src, port)
    return story


def test_decoys_in_one_scan_only_the_real_scanner_is_blocked() -> None:
    story = decoy_scan(Playbook(engine(view=lab_view()), now=T0, step=0.01))
    assert (
        story
        # DECOY has no neighbour entry yet: the request waits for the table
        >> rst(DECOY, 3)
        >> rst(CLIENT, 3)
        << scan_alert(CLIENT, "spoofed", "allowed")
        << spoof_alert(CLIENT, "mac-mismatch")
        << mac_block(ATTACKER_MAC_TEXT, claimed=CLIENT)
        >> rst(ATTACKER, 3)
        << scan_alert(ATTACKER, "added", "blocked")
        << block(ATTACKER)
        # still no neighbour entry for DECOY when its time is up: alert only
        >> tick(EVIDENCE_WAIT + 1)
        << scan_alert(DECOY, "unproven", "allowed")
    )
    banned = story.engine.blocks.table.members  # type: ignore[union-attr]
    assert set(banned) == {packed(ATTACKER)}


def test_a_decoy_whose_owner_answers_meanwhile_is_shown_forged() -> None:
    """The gateway asks who has DECOY when the server answers it; the client owns it: the
    held request is judged again with the refreshed table, and found forged."""
    e = engine(view=lab_view())
    story = decoy_scan(Playbook(e, now=T0, step=0.01))
    story >> rst(DECOY, 3)
    story >> rst(CLIENT, 3) << scan_alert(CLIENT, "spoofed", "allowed")
    story << spoof_alert(CLIENT, "mac-mismatch") << mac_block(ATTACKER_MAC_TEXT)
    story >> rst(ATTACKER, 3) << scan_alert(ATTACKER, "added", "blocked") << block(ATTACKER)
    e.set_link_view(lab_view(**{DECOY: CLIENT_MAC}))  # type: ignore[arg-type]
    assert (
        story
        >> tick(1)
        << scan_alert(DECOY, "spoofed", "allowed")
        << spoof_alert(DECOY, "mac-mismatch")  # the MAC block was made already
    )
    assert set(e.blocks.table.members) == {packed(ATTACKER)}  # type: ignore[union-attr]


def test_a_held_request_of_an_address_proven_meanwhile_blocks_it() -> None:
    e = engine(view=link_view([], [(packed("10.10.1.0"), 24)]))
    story = Playbook(e, now=T0, step=0.01)
    for port in (1, 2, 3):
        story >> syn(ATTACKER, port) >> rst(ATTACKER, port)
    assert not story.effects  # held: no neighbour entry for the attacker yet
    e.set_link_view(lab_view())  # type: ignore[arg-type]
    assert story >> tick(1) << scan_alert(ATTACKER, "added", "blocked") << block(ATTACKER)


def test_loose_blocks_the_unproven_decoy_too() -> None:
    story = decoy_scan(Playbook(engine("loose", view=lab_view()), now=T0, step=0.01))
    story >> rst(DECOY, 3) << scan_alert(DECOY, "added", "blocked") << block(DECOY)
    assert story


# ---- routed sources: the route, the handshake and its hop count ---------------------------------


def handshake(src: str, ttl: int, mac: bytes = ROUTER_MAC) -> list[object]:
    meta = Meta(iif="lan0", mac=mac)
    back = Meta(iif="dmz0", mac=SERVER_MAC)
    return [
        packet(tcp(src, SERVER, 50000, 80, "S", ttl=ttl), meta),
        packet(tcp(SERVER, src, 80, 50000, "SA"), back),
        packet(tcp(src, SERVER, 50000, 80, "A", ttl=ttl), meta),
    ]


def routed_scan(story: Playbook, src: str, ttl: int, mac: bytes = ROUTER_MAC) -> Playbook:
    for port in (1, 2):
        story >> syn(src, port, mac=mac, ttl=ttl) >> rst(src, port)
    return story >> syn(src, 3, mac=mac, ttl=ttl)


def test_a_routed_source_without_history_is_blocked_by_default_and_not_with_proof() -> None:
    strict = routed_scan(Playbook(engine(view=lab_view()), now=T0, step=0.01), REMOTE, 50)
    assert strict >> rst(REMOTE, 3) << scan_alert(REMOTE, "added", "blocked") << block(REMOTE)
    proof = routed_scan(Playbook(engine("proof", view=lab_view()), now=T0, step=0.01), REMOTE, 50)
    assert proof >> rst(REMOTE, 3) << scan_alert(REMOTE, "unverifiable", "allowed")


def test_a_routed_source_with_another_hop_count_than_its_handshake_is_forged() -> None:
    e = engine(view=lab_view())
    story = Playbook(e, now=T0, step=0.01)
    for step in handshake(REMOTE, ttl=50):  # 14 hops away
        story >> step
    assert e.flows.handshakes[packed(REMOTE)] == (50, ROUTER_MAC)
    routed_scan(story, REMOTE, ttl=60)  # 4 hops: sent from elsewhere
    assert (
        story
        >> rst(REMOTE, 3)
        << scan_alert(REMOTE, "spoofed", "allowed")
        # through the router: the forger cannot be named, so no MAC block (never a router's)
        << spoof_alert(REMOTE, "hop-count", action="allowed")
    )
    assert not e.blocks.macs


def test_a_routed_source_with_its_handshake_hop_count_is_proven() -> None:
    e = engine("proof", view=lab_view())
    story = Playbook(e, now=T0, step=0.01)
    for step in handshake(REMOTE, ttl=50):
        story >> step
    routed_scan(story, REMOTE, ttl=51)
    assert story >> rst(REMOTE, 3) << scan_alert(REMOTE, "added", "blocked") << block(REMOTE)
    assert story.steps[-1].effects[0].extra["evidence"] == "proven:handshake"


def test_an_off_segment_source_from_a_host_that_is_no_router_is_forged() -> None:
    """hping3 --rand-source from the attacker: addresses from beyond the segment, sent by a
    MAC that is none of our routes' next hops."""
    story = routed_scan(Playbook(engine(view=lab_view()), now=T0, step=0.01), REMOTE, 64,
                        mac=ATTACKER_MAC)  # fmt: skip
    assert (
        story
        >> rst(REMOTE, 3)
        << scan_alert(REMOTE, "spoofed", "allowed")
        << spoof_alert(REMOTE, "not-a-router")
        << mac_block(ATTACKER_MAC_TEXT, claimed=REMOTE, evidence="not-a-router")
    )


# ---- what is never blocked by MAC ---------------------------------------------------------------


def test_the_mac_of_a_protected_address_is_never_blocked() -> None:
    """The sender's MAC also owns a never-block address (say, a management host that was
    made to send forged packets): the spoof alert says so; nothing is blocked."""
    view = lab_view(**{"10.10.1.5": ATTACKER_MAC})
    story = Playbook(engine(view=view, never_block=("10.10.1.5/32",)), now=T0, step=0.01)
    story >> syn(CLIENT, 1) >> rst(CLIENT, 1) >> syn(CLIENT, 2) >> rst(CLIENT, 2) >> syn(CLIENT, 3)
    assert (
        story
        >> rst(CLIENT, 3)
        << scan_alert(CLIENT, "spoofed", "allowed")
        << alert(
            category="spoofed-source",
            action="allowed",
            check=lambda a: a.extra["mac_block"] == "protected-mac",
        )
    )
    assert not story.engine.blocks.macs


def test_a_forged_trusted_address_still_names_its_sender() -> None:
    """The detection's alert says the address is trusted (as before); the spoof alert and the
    MAC block name who forged it."""
    story = Playbook(engine(view=lab_view(), trusted=CLIENT), now=T0, step=0.01)
    story >> syn(CLIENT, 1) >> rst(CLIENT, 1) >> syn(CLIENT, 2) >> rst(CLIENT, 2) >> syn(CLIENT, 3)
    assert (
        story
        >> rst(CLIENT, 3)
        << scan_alert(CLIENT, "trusted", "allowed")
        << spoof_alert(CLIENT, "mac-mismatch")
        << mac_block(ATTACKER_MAC_TEXT, claimed=CLIENT)
    )


# ---- no link view: tap, replay, WinDivert --------------------------------------------------------


def test_without_a_link_view_blocks_are_decided_as_before() -> None:
    """A tap or a replay has no neighbour table: nothing could prove or disprove the address
    there, so the default blocks as it always did (the ban budget bounds the damage) and the
    alert says nothing of evidence."""
    story = Playbook(engine(), now=T0, step=0.01)
    story >> syn(CLIENT, 1) >> rst(CLIENT, 1) >> syn(CLIENT, 2) >> rst(CLIENT, 2) >> syn(CLIENT, 3)
    assert story >> rst(CLIENT, 3) << scan_alert(CLIENT, "added", "blocked") << block(CLIENT)
    assert "evidence" not in story.effects[0].extra


# ---- the pieces ---------------------------------------------------------------------------------


def test_hop_counts_from_the_usual_initial_ttls() -> None:
    assert [hops(t) for t in (64, 50, 128, 113, 255, 240, 30)] == [0, 14, 0, 15, 0, 15, 2]


def test_the_link_view_from_the_kernels_messages() -> None:
    neighbours = [
        {"state": 0x02, "NDA_DST": CLIENT, "NDA_LLADDR": "02:00:00:00:00:20"},
        {"state": 0x04, "NDA_DST": ROUTER, "NDA_LLADDR": "02:00:00:00:00:fe"},
        {"state": 0x20, "NDA_DST": DECOY, "NDA_LLADDR": None},  # failed: no MAC
        {"state": 0x40, "NDA_DST": "ff02::1", "NDA_LLADDR": "33:33:00:00:00:01"},  # noarp
    ]
    routes = [
        {"type": 1, "dst_len": 24, "RTA_DST": "10.10.1.0"},
        {"type": 1, "dst_len": 0, "RTA_GATEWAY": ROUTER},
        {"type": 1, "dst_len": 64, "RTA_DST": "fd00:10:1::"},
        {"type": 2, "dst_len": 32, "RTA_DST": "10.10.1.1"},  # local: not a segment
    ]
    view = view_from_messages(neighbours, routes)
    assert view.neighbours == {packed(CLIENT): CLIENT_MAC, packed(ROUTER): ROUTER_MAC}
    assert view.routers == frozenset({ROUTER_MAC})
    assert view.onlink.contains(packed(DECOY)) and view.onlink.contains(packed("fd00:10:1::5"))
    assert not view.onlink.contains(packed(REMOTE))


def test_block_evidence_is_a_checked_option() -> None:
    import pytest

    from ips.policy.diagnostics import PolicyError

    assert load_policy_text("accept", "t.rules").block_evidence == "strict"
    assert load_policy_text("set block-evidence proof\naccept", "t.rules").block_evidence == "proof"
    with pytest.raises(PolicyError):
        load_policy_text("set block-evidence maybe\naccept", "t.rules")


def test_mac_blocks_expire_in_the_engine_with_their_time() -> None:
    e = engine(view=lab_view())
    story = Playbook(e, now=T0, step=0.01)
    story >> syn(CLIENT, 1) >> rst(CLIENT, 1) >> syn(CLIENT, 2) >> rst(CLIENT, 2) >> syn(CLIENT, 3)
    story >> rst(CLIENT, 3) << scan_alert(CLIENT, "spoofed", "allowed")
    story << spoof_alert(CLIENT, "mac-mismatch") << mac_block(ATTACKER_MAC_TEXT)
    assert ATTACKER_MAC in e.blocks.macs
    story >> tick(601)
    assert not e.blocks.macs
    assert story >> syn(ATTACKER, 9) << accept()


def test_a_mac_ban_lifted_by_the_operator_is_forgotten_and_can_come_again() -> None:
    """`ipsctl blocks del MAC` (the worker's unblock_mac): the engine stops dropping the
    MAC's packets at once, and its next forged scan bans it again (not "already")."""
    e = engine(view=lab_view())
    story = Playbook(e, now=T0, step=0.01)

    def forged_scan(first: int) -> None:
        story >> syn(CLIENT, first) >> rst(CLIENT, first)
        story >> syn(CLIENT, first + 1) >> rst(CLIENT, first + 1) >> syn(CLIENT, first + 2)
        story >> rst(CLIENT, first + 2) << scan_alert(CLIENT, "spoofed", "allowed")
        story << spoof_alert(CLIENT, "mac-mismatch") << mac_block(ATTACKER_MAC_TEXT)

    forged_scan(1)
    assert story >> syn(ATTACKER, 9) << drop(reason="blocked")
    assert e.unblock_mac(ATTACKER_MAC) is True
    assert e.unblock_mac(ATTACKER_MAC) is False  # not banned any more
    assert story >> syn(ATTACKER, 10) << accept()
    story >> tick(61)  # the portscan window of the first scan is over
    forged_scan(20)
    assert e.stats.mac_blocks == 2
    assert e.unblock_macs() == 1 and not e.blocks.macs


# ---- the kernel's side: the set of banned MACs ---------------------------------------------------


def test_inline_plans_have_the_mac_set_and_its_drop_after_the_address_blocks() -> None:
    from ips.translate import nft as rs

    policy = load_policy_text("table banned dynamic timeout 10m size 100\naccept", "t.rules")
    cmds = rs.build_ruleset(policy, rs.NftPlan(hooks=("forward", "input", "output"),
                                               ether_blocks=True))  # fmt: skip
    sets = {c["add"]["set"]["name"]: c["add"]["set"] for c in cmds if "set" in c.get("add", {})}
    assert sets["banned_ether"] == {
        "family": "inet", "table": "ipsctl", "name": "banned_ether", "type": "ether_addr",
        "flags": ["timeout"], "size": 100, "timeout": 600,
    }  # fmt: skip
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    for hook in ("forward", "input"):
        chain = [r for r in rules if r["chain"] == hook]
        assert [r["comment"] for r in chain[:3]] == [rs.BLOCKS_COMMENT] * 2 + [
            rs.ETHER_BLOCKS_COMMENT
        ]
        assert chain[2]["expr"] == [
            {"match": {"op": "==", "left": {"meta": {"key": "iiftype"}}, "right": "ether"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ether", "field": "saddr"}},
                       "right": "@banned_ether"}},
            {"counter": None},
            {"drop": None},
        ]  # fmt: skip
    # an outgoing packet has no sender's MAC: no such rule in output
    assert rs.ETHER_BLOCKS_COMMENT not in [r["comment"] for r in rules if r["chain"] == "output"]
    # a plan without it (tap, replay tools) has neither the set nor the rule
    plain = rs.build_ruleset(policy, rs.NftPlan(hooks=("forward",)))
    assert "banned_ether" not in json.dumps(plain)


def test_the_diversion_of_the_inline_daemon_asks_for_mac_blocks() -> None:
    from ips.kernel.diversion import NftDiversion
    from ips.kernel.probe import Capabilities

    diversion = NftDiversion(caps=Capabilities(nft_log=True))  # nothing installed
    diversion.backend = "nft"
    assert diversion._plan(1).ether_blocks
    assert (
        not NftDiversion(caps=Capabilities(), tap=True)
        .kernel_plan(load_policy_text("set tap-blocks enforce\naccept", "t.rules"))
        .ether_blocks
    )  # type: ignore[union-attr]


def test_mac_elements_are_replaced_with_their_timeout_and_comment() -> None:
    from ips.translate import nft as rs

    cmds = rs.replace_ether_elements(["02:00:00:00:00:66"], 600, "portscan|1|forged")
    target = {"family": "inet", "table": "ipsctl", "name": "banned_ether"}
    assert cmds == [
        {"add": {"element": {**target, "elem": ["02:00:00:00:00:66"]}}},
        {"delete": {"element": {**target, "elem": ["02:00:00:00:00:66"]}}},
        {"add": {"element": {**target, "elem": [
            {"elem": {"val": "02:00:00:00:00:66", "timeout": 600,
                      "comment": "portscan|1|forged"}}]}}},
    ]  # fmt: skip


def test_kernel_blocks_write_a_mac_block_into_the_mac_set() -> None:
    from ips.core.events import MacBlock
    from ips.kernel.blocks import KernelBlocks

    class FakeNft:
        def __init__(self) -> None:
            self.batches: list[list[dict[str, object]]] = []

        def run(self, commands: list[dict[str, object]]) -> dict[str, object]:
            self.batches.append(list(commands))
            return {}

    nft = FakeNft()
    blocks = KernelBlocks(nft, clock=lambda: T0, log=None)  # type: ignore[arg-type]
    effect = MacBlock(ATTACKER_MAC, claimed=packed(CLIENT), table="banned_ether", ttl=600.0,
                      detector="portscan", evidence="mac-mismatch", reason="forged",
                      time=T0)  # fmt: skip
    assert blocks.note([effect])
    blocks.flush()
    (batch,) = nft.batches
    assert batch[-1]["add"]["element"]["name"] == "banned_ether"  # type: ignore[index]
    assert batch[-1]["add"]["element"]["elem"][0]["elem"]["val"] == ATTACKER_MAC_TEXT  # type: ignore[index]
    assert blocks.added == 1 and blocks.errors == 0


def test_before_the_table_knows_the_client_its_handshakes_mac_shows_the_forgery() -> None:
    """The client talked a moment ago (its handshake came from its MAC) and the worker has
    not read the neighbour table since: a forger next door has the same hop count, so on
    the segment only the MAC counts — the handshake's."""
    view = link_view([(packed(ATTACKER), ATTACKER_MAC)], [(packed("10.10.1.0"), 24)])
    e = engine(view=view)
    story = Playbook(e, now=T0, step=0.01)
    for step in handshake(CLIENT, ttl=64, mac=CLIENT_MAC):
        story >> step
    story >> syn(CLIENT, 1) >> rst(CLIENT, 1) >> syn(CLIENT, 2) >> rst(CLIENT, 2) >> syn(CLIENT, 3)
    assert (
        story
        >> rst(CLIENT, 3)
        << scan_alert(CLIENT, "spoofed", "allowed")
        << spoof_alert(CLIENT, "mac-mismatch")
        << mac_block(ATTACKER_MAC_TEXT, claimed=CLIENT)
    )
    # and the client's own scan would be proven by the same handshake
    own = Playbook(engine(view=view), now=T0, step=0.01)
    for step in handshake(CLIENT, ttl=64, mac=CLIENT_MAC):
        own >> step
    for port in (1, 2):
        own >> syn(CLIENT, port, mac=CLIENT_MAC) >> rst(CLIENT, port)
    own >> syn(CLIENT, 3, mac=CLIENT_MAC)
    assert own >> rst(CLIENT, 3) << scan_alert(CLIENT, "added", "blocked") << block(CLIENT)
