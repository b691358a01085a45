"""Passive DNS: which name a client asked for to reach an address, learned from DNS answers.

The engine hands every DNS response it parses to `PassiveDns.learn`; when a flow starts,
`name_of(responder address)` names the peer in flow records, `flows`, `top` and events (as
ntopng and Zeek's DNS-based naming do). It is a display aid, not a policy input: a name
clause (`tls sni`, `dns query`, `http host`) reads what the flow itself says.

What is learned, from a response (QR set, opcode QUERY, rcode NOERROR) only:

- each A and AAAA record (class IN) of the answer section. Authority and additional records
  are not answers to the question (glue for name servers, hints a resolver may stuff in) and
  are left out;
- the address is named by the question the client asked when a chain of CNAME records in the
  same answer section leads from the question name to the record's owner (www.example.com →
  cdn.example.net → edge-1.cdn.example.net A 192.0.2.7 names 192.0.2.7 "www.example.com");
  when no chain links them, by the record's own owner name, which is what the answer says;
- names lower-case, without the trailing dot (the form of `AppFields`).

TTL-aware: an entry expires at now + min(max(ttl, min_ttl), max_ttl); an expired entry is
not answered and is removed when met. An answer with an effective TTL of 0 names nothing
and is not stored. A newer answer for an address replaces the older one, whatever the TTLs.

Bounded: at most `max_entries` addresses; past it the least recently learned or used entry
goes (`evicted`). An entry is about 250 bytes (the key, the name, a tuple and the ordered
dictionary's links), so the default 65,536 entries is about 16 MB at worst.

Pure: time is an argument. Malformed DNS never reaches here (the parser answers a
`Malformed` instead of a message), and nothing in a message can make `learn` raise.
"""

from __future__ import annotations

from collections import OrderedDict

from ips.app.dns import CLASS_IN, TYPE_A, TYPE_AAAA, TYPE_CNAME, DnsMessage
from ips.core.addr import parse_addr

__all__ = ["PassiveDns"]

_OPCODE_QUERY = 0
_RCODE_NOERROR = 0


def _packed(rtype: int, text: str) -> bytes | None:
    """The 4- or 16-byte address of an A or AAAA record's rdata (text from ips/app/dns.py)."""
    if rtype == TYPE_A:
        parts = text.split(".")
        if len(parts) == 4:
            try:
                return bytes([int(p) for p in parts])
            except ValueError:
                return None
        return None
    try:
        packed = parse_addr(text)
    except ValueError:
        return None
    return packed if len(packed) == 16 else None


class PassiveDns:
    """A bounded, TTL-aware map from addresses (4/16-byte packed) to the names that led to them."""

    __slots__ = ("_entries", "evicted", "expired", "learned", "max_entries", "max_ttl", "min_ttl")

    def __init__(
        self, max_entries: int = 65536, max_ttl: float = 86400.0, min_ttl: float = 0.0
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if min_ttl < 0 or max_ttl < min_ttl:
            raise ValueError("need 0 <= min_ttl <= max_ttl")
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.min_ttl = min_ttl
        # address -> (name, expiry); least recently learned or used first.
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self.learned = 0  # addresses stored (a replacement counts again)
        self.evicted = 0  # entries pushed out by the bound
        self.expired = 0  # entries found past their TTL and removed

    def __len__(self) -> int:
        return len(self._entries)

    def learn(self, msg: DnsMessage, now: float) -> int:
        """Learn the addresses of a DNS response; return how many were stored."""
        if not msg.qr or msg.opcode != _OPCODE_QUERY or msg.rcode != _RCODE_NOERROR:
            return 0
        answers = msg.answers
        if not answers or not msg.questions:
            return 0
        # Every name reachable from a question through the answer section's CNAMEs, mapped to
        # that question. A name's first CNAME is the one followed (two for one owner are
        # invalid anyway); the walk stops at a name already met, so a loop ends it.
        cnames: dict[str, str] = {}
        for rec in answers:
            if rec.rtype == TYPE_CNAME and rec.rclass == CLASS_IN and isinstance(rec.rdata, str):
                cnames.setdefault(rec.name.lower(), rec.rdata.lower())
        asked: dict[str, str] = {}
        for question in msg.questions:
            qname = question.name.lower()
            name = qname
            while name and name not in asked:
                asked[name] = qname
                name = cnames.get(name, "")
        count = 0
        for rec in answers:
            rtype = rec.rtype
            if (rtype != TYPE_A and rtype != TYPE_AAAA) or rec.rclass != CLASS_IN:
                continue
            rdata = rec.rdata
            if not isinstance(rdata, str):
                continue
            addr = _packed(rtype, rdata)
            if addr is None:
                continue
            owner = rec.name.lower()
            name = asked.get(owner) or owner
            if not name:
                continue  # the root has no address worth naming a peer by
            ttl = min(max(float(rec.ttl), self.min_ttl), self.max_ttl)
            if ttl <= 0:
                continue
            self._store(addr, name, now + ttl)
            count += 1
        return count

    def _store(self, addr: bytes, name: str, expires: float) -> None:
        entries = self._entries
        if entries.pop(addr, None) is None and len(entries) >= self.max_entries:
            entries.popitem(last=False)
            self.evicted += 1
        entries[addr] = (name, expires)
        self.learned += 1

    def name_of(self, addr: bytes, now: float) -> str | None:
        """The name learned for `addr` if its TTL has not run out, else None."""
        entries = self._entries
        entry = entries.get(addr)
        if entry is None:
            return None
        if now >= entry[1]:
            del entries[addr]
            self.expired += 1
            return None
        entries.move_to_end(addr)
        return entry[0]
