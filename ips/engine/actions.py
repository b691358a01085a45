"""What a matching rule does to a packet: its alert, its log record, the reply of a reject,
and the per-packet rewrites (TTL, DSCP, payload). Address and port translation is per flow:
ips/engine/nat.py.
"""

from __future__ import annotations

from ips.core import craft
from ips.core.events import Alert, LogRecord
from ips.core.packet import FRAG_LATER, PROTO_TCP, PROTO_UDP, Packet
from ips.policy.compile import CompiledRule, list_hits
from ips.policy.model import DROP, REJECT
from ips.policy.names import ICMPX_TO_ICMP, ICMPX_TO_ICMPV6


def alert_for(rule: CompiledRule, pkt: Packet, flow_id: int, verdict: str, now: float) -> Alert:
    spec = rule.spec
    action = "blocked" if verdict in (DROP, REJECT) else "allowed"
    # a hit on a reputation list is tagged with the list's name (EVE: ipsctl.lists)
    lists = list_hits(rule, pkt.src, pkt.dst) if rule.lists else None
    alert = Alert(
        now,
        flow_id,
        pkt.family,
        pkt.proto,
        pkt.src,
        pkt.sport,
        pkt.dst,
        pkt.dport,
        action=action,
        signature_id=spec.sid if spec.sid is not None else 1_000_000 + spec.index,
        signature=spec.message or spec.text,
        severity=spec.severity,
        category="policy",
        rule_name=spec.name,
        extra={"lists": lists} if lists else None,
    )
    if pkt.icmp_type >= 0:
        alert.icmp = pkt.icmp_type << 8 | pkt.icmp_code
    return alert


def log_for(rule: CompiledRule, pkt: Packet, flow_id: int, verdict: str, now: float) -> LogRecord:
    record = LogRecord(
        now,
        flow_id,
        pkt.family,
        pkt.proto,
        pkt.src,
        pkt.sport,
        pkt.dst,
        pkt.dport,
        verdict=verdict,
        rule_name=rule.spec.name,
    )
    if pkt.icmp_type >= 0:
        record.icmp = pkt.icmp_type << 8 | pkt.icmp_code
    return record


def reject_reply(rule: CompiledRule | None, pkt: Packet) -> bytes | None:
    """The TCP reset or ICMP error a reject sends back (None when none may be sent)."""
    how = rule.spec.reject_with if rule is not None else None
    kind = how[0] if how else None
    code = how[1] if how else None
    if kind is None and pkt.proto == PROTO_TCP and pkt.frag != FRAG_LATER:
        kind = "tcp-reset"
    if kind == "tcp-reset":
        return craft.tcp_reset_for(pkt)
    if kind == "icmpx" and code is not None:
        code = (ICMPX_TO_ICMP if pkt.family == 4 else ICMPX_TO_ICMPV6)[code]
    return craft.icmp_unreachable_for(pkt, code)


def app_reject_replies(
    rule: CompiledRule, pkt: Packet, dns_rcode: int
) -> tuple[bytes | None, bytes | None]:
    """The replies of a reject decided by a rule with application-layer clauses: (to the
    sender, to the destination). A DNS query over UDP rejected by `dns query` gets a DNS
    answer (NXDOMAIN or REFUSED, `set dns-reject`) from the server; a TCP connection
    (TLS, HTTP, DNS over TCP) is reset both ways, since the server has already accepted
    it and would otherwise hold it open. An explicit `with icmp …` is kept as written."""
    how = rule.spec.reject_with
    if how is not None and how[0] != "tcp-reset":
        return reject_reply(rule, pkt), None
    if pkt.proto == PROTO_UDP and any(c.field == "dns_queries" for c in rule.spec.app):
        answer = craft.dns_refusal_for(pkt, dns_rcode)
        if answer is not None:
            return answer, None
    if pkt.proto == PROTO_TCP:
        return craft.tcp_reset_for(pkt), craft.tcp_reset_to_peer(pkt)
    return reject_reply(rule, pkt), None


def apply_rewrite(rule: CompiledRule, pkt: Packet) -> bytes | None:
    """TTL, DSCP and payload rewrites of one packet (address/port translation is per flow and
    done by the engine). None when nothing changed."""
    rw = rule.spec.rewrite
    if rw is None:
        return None
    data: bytes = pkt.data
    changed = False
    if rw.ttl is not None:
        data = craft.set_ttl(data, pkt, rw.ttl)
        changed = True
    if rw.dscp is not None:
        data = craft.set_dscp(data, pkt, rw.dscp)
        changed = True
    for old, new in rw.replace:
        replaced = craft.replace_payload(data, pkt, old, new)
        if replaced is not None:
            data = replaced
            changed = True
    return data if changed else None
