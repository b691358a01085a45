"""The per-flow application-layer inspector: detection, reassembly and the parsers in one step.

The engine holds one `AppInspector` and calls `inspect(pkt, flow, fwd, now)` right after the
flow table, for every packet of a flow whose `app_state` is not None. A new flow's app_state is
`APP_NOT_STARTED`: its first packet starts the inspector's work (AppFields; for TCP, at the
first payload byte, the streams of the shared `Reassembler`, whose memory cap is global).
From then on:

TCP   each segment goes to the reassembler, per direction (the flow's initiator is the client);
      when new in-order bytes arrive, the protocol is detected from them (ips/app/detect.py,
      either direction, on any port) and the detected protocol's parser reads the direction:
        tls   client: the ClientHello (SNI, ALPN, JA3, JA4); server: the ServerHello (JA3S)
              and, for TLS <= 1.2, the first certificate
        http  requests (method, host, URI, user agent) and responses, paired in order
        ssh   both sides' banners
        dns   every message of either direction (2-byte length prefixes)
      A parser's NEED_MORE waits for more bytes; a Malformed is counted by its reason and that
      direction is done; a direction that ends (FIN or RST, or the reassembly bound reached)
      before its message was whole is done too (counted as incomplete). When both directions
      are done, the flow's events are complete and its streams are closed: the bytes go back
      to the reassembler and app_state becomes None, so every later packet of the flow costs
      the engine one attribute check. An HTTP flow is done when its server side is: no later
      request could be paired with a response within the bound.
UDP   the first datagram with payload is detected. QUIC: the client's datagrams go to a
      `QuicInitialReader` (at most QUIC_DATAGRAMS of them) until its ClientHello is read
      (SNI, ALPN, JA4 "q"). DNS: every datagram of the flow is a message, parsed as it comes
      (queries name `dns_queries` of the packet being judged; answers teach passive DNS).
      Anything else: done at once.

What the work costs is kept to what is asked for (docs/application-layer.md, "Cost"):
- a TCP flow's streams and parser state start at its first payload byte; before it (a
  handshake, a SYN scan's probe and reset) only each direction's start and end are kept;
- a side is not parsed again while more bytes cannot change the answer: a TLS hello or
  certificate of known length waits for its bytes (tls.bytes_wanted), HTTP resumes where the
  last segment left it and waits for a body of known length (http.requests_from);
- the fingerprints (JA3, JA4, JA3S, QUIC's JA4) are computed when first read, by a policy
  clause or an event's body, once per flow, and remembered by their inputs (ja.ja3_memo);
- an event's body (AppEvent.body) is built when a sink reads it, not here.

`flow.app` (ips/core/app_fields.py) is filled as the fields are read; `client_done` and
`server_done` say when a side's fields are final (a value, or None for good), which is what
the policy's L7 clauses wait for. Events (`AppEvent`, Suricata's EVE kinds tls, quic, dns,
http, ssh) come back from `inspect`, to ride on the packet's Decision, and from `release`,
which the engine calls when a flow ends: a TLS client whose server never answered, HTTP
requests without responses, and the reassembly memory still held (counted); and from
`refused`, which the engine calls when it drops or rejects a packet of a flow whose client
message was read (the flow will never complete: its events go out with that packet).

Pure: no clock (`now` is an argument), no I/O. Nothing here raises on any bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from ips.app.detect import (
    APP_DNS,
    APP_HTTP,
    APP_QUIC,
    APP_SSH,
    APP_TLS,
    APP_UNKNOWN,
    detect_datagram,
    detect_stream,
)
from ips.app.dns import DnsMessage, eve_dns, parse_message, parse_tcp_stream
from ips.app.http import (
    UNTIL_CLOSE,
    HttpRequest,
    HttpResponse,
    Progress,
    eve_http,
    requests_from,
    responses_from,
    split_host,
)
from ips.app.ja import ja3_memo, ja3s_memo, ja4_memo
from ips.app.quic import QuicClientHello, QuicInitialReader
from ips.app.reassembly import (
    DEFAULT_LIMIT,
    DEFAULT_MEMORY_CAP,
    Direction,
    Reassembler,
    TcpStreams,
    tcp_seq,
)
from ips.app.ssh import SshBanner, eve_ssh, parse_banner
from ips.app.tls import (
    Certificate,
    ClientHello,
    NeedMore,
    ServerFlight,
    ServerHello,
    bytes_wanted,
    parse_client_hello,
    parse_server_flight,
    parse_server_hello,
)
from ips.core.app_fields import APP_NOT_STARTED, AppFields
from ips.core.events import AppEvent
from ips.core.flow import Flow
from ips.core.packet import FRAG_NONE, PROTO_TCP, PROTO_UDP, TCP_SYN, Malformed, Packet

__all__ = [
    "APP_PROTOCOLS",
    "QUIC_DATAGRAMS",
    "AppCounters",
    "AppInspector",
    "NameSource",
    "StreamParsers",
    "quic_version_text",
    "tls_version_text",
]

# Client datagrams of a QUIC flow read before giving up on its ClientHello: a hello with
# post-quantum key shares spans two or three; a client sends at most a few Initials.
QUIC_DATAGRAMS = 8
# DNS transaction ids remembered per flow (query id -> tx_id) to give an answer its query's
# tx_id, as Suricata does; the oldest are forgotten first.
DNS_IDS_KEPT = 64

# The protocols whose parsers are wired (detection may also answer "unknown").
APP_PROTOCOLS = (APP_TLS, APP_HTTP, APP_DNS, APP_SSH, APP_QUIC)

# Suricata's words for TLS versions (tls.version in EVE).
_TLS_VERSIONS = {
    0x0200: "SSLv2",
    0x0300: "SSLv3",
    0x0301: "TLS 1.0",
    0x0302: "TLS 1.1",
    0x0303: "TLS 1.2",
    0x0304: "TLS 1.3",
}


def tls_version_text(version: int) -> str:
    """Suricata's name of a TLS version number ("TLS 1.2"), UNDETERMINED when unknown."""
    return _TLS_VERSIONS.get(version, "UNDETERMINED")


# Google QUIC's version tags, which Suricata names by their letters.
_GQUIC_VERSIONS = {0x51303339: "Q039", 0x51303433: "Q043", 0x51303434: "Q044",
                   0x51303435: "Q045", 0x51303436: "Q046"}  # fmt: skip


def quic_version_text(version: int) -> str:
    """quic.version as Suricata 7 writes it (rust/src/quic/parser.rs, `From<QuicVersion> for
    String`): Google's tags by their letters, any other version in lower-case hex without
    leading zeros: "1" for QUIC v1, "ff00001d" for draft 29, "6b3343cf" for v2."""
    return _GQUIC_VERSIONS.get(version) or format(version, "x")


class StreamParsers(Protocol):
    """Parsers with the results of ips/app/tls.py `parse_client_hello` and ips/app/http.py
    `requests_from` / `responses_from` (the engine passes the compiled ones, ips/fast/
    parsers.py, when its compiled path is on; those modules are the default)."""

    def parse_client_hello(self, buf: bytes) -> ClientHello | NeedMore | Malformed: ...

    def requests_from(self, data: bytes, start: int, out: list[HttpRequest]) -> Progress: ...

    def responses_from(
        self, data: bytes, request_methods: Sequence[str], start: int, out: list[HttpResponse]
    ) -> Progress: ...


class NameSource(Protocol):
    """Passive DNS as the inspector uses it (ips/app/passive_dns.py)."""

    def learn(self, msg: DnsMessage, now: float) -> int: ...

    def name_of(self, addr: bytes, now: float) -> str | None: ...


@dataclass
class AppCounters:
    """What the inspector counted since the engine started.

    protocols   flows by detected application protocol (unknown included)
    events      events by type (tls, quic, dns, http, ssh)
    malformed   malformed messages by reason ("tls.bad-extension", "dns.truncated-name"...)
    incomplete  directions (QUIC: flows) that ended before their message was whole, by
                protocol: the stream closed, the reassembly bound or the datagram bound
                was reached, or the flow ended
    released_flows, released_bytes
                flows that ended while their streams still held bytes, and those bytes
                (returned to the reassembler's memory)"""

    protocols: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    malformed: Counter[str] = field(default_factory=Counter)
    incomplete: Counter[str] = field(default_factory=Counter)
    released_flows: int = 0
    released_bytes: int = 0


def _name(text: str | None) -> str | None:
    """A name as policy clauses compare it: lower-case, without the trailing dot."""
    if text is None:
        return None
    return text.rstrip(".").lower()


class _Tcp:
    """The inspector's state of one TCP flow: its streams and what was read of each side."""

    __slots__ = (
        "banners",
        "client_open",
        "dns_ids",
        "dns_offset",
        "dns_tx",
        "flight",
        "hello",
        "http_progress",
        "logged",
        "prints",
        "requests",
        "responses",
        "server_open",
        "streams",
        "tls_wanted",
    )

    def __init__(self, streams: TcpStreams) -> None:
        self.streams = streams
        self.client_open = True  # the client's side may still give something
        self.server_open = True
        self.hello: ClientHello | None = None
        self.flight: ServerFlight | None = None
        # Each side's stream length below which its TLS parse cannot answer anew (client,
        # server): ips/app/tls.py's bytes_wanted.
        self.tls_wanted = [0, 0]
        # The fingerprints, computed when first read (a `tls ja3` clause, the tls event's
        # body) and kept for the other reader: each costs several microseconds.
        self.prints = _Prints()
        self.banners: list[SshBanner | None] = [None, None]  # client, server
        self.requests: list[HttpRequest] = []
        self.responses: list[HttpResponse] = []
        self.logged = 0  # HTTP transactions already written as events
        # How far each side's HTTP messages were read (client, server): where to resume.
        self.http_progress = (_HttpProgress(), _HttpProgress())
        self.dns_offset = [0, 0]  # bytes of each side's stream already read (server, client)
        self.dns_ids: dict[int, int] = {}  # query id -> its tx_id, until answered
        self.dns_tx = 0  # the next DNS tx_id


class _HttpProgress:
    """How far one side's HTTP messages were read (ips/app/http.py's Progress), and how many
    request methods framed the responses (server side)."""

    __slots__ = ("methods", "resume", "wanted", "whole")

    def __init__(self) -> None:
        self.resume = 0
        self.whole = 0
        self.wanted = 0
        self.methods = 0

    def update(self, got: Progress, methods: int) -> None:
        self.resume, self.whole, self.wanted = got.resume, got.whole, got.wanted
        self.methods = methods


class _TcpQuiet:
    """A TCP flow that has carried no payload yet (a handshake, a SYN scan's probe and its
    reset): the inspector keeps only what the reassembler would have kept of such packets,
    each direction's start (the byte after its SYN's sequence number) and whether it ended,
    and builds the streams and the parsers' state at the first payload byte."""

    __slots__ = ("client_base", "client_fin", "server_base", "server_fin")

    def __init__(self) -> None:
        self.client_base = -1  # as Direction.base: -1 until a SYN was seen
        self.server_base = -1
        self.client_fin = False
        self.server_fin = False


class _Udp:
    """The inspector's state of one UDP flow (QUIC: the Initial reader; DNS: tx ids)."""

    __slots__ = ("datagrams", "dns_ids", "dns_tx", "quic")

    def __init__(self) -> None:
        self.quic: QuicInitialReader | None = None
        self.datagrams = 0
        self.dns_ids: dict[int, int] = {}  # query id -> its tx_id, until answered
        self.dns_tx = 0  # the next DNS tx_id


class _Prints:
    """The TLS fingerprints of one flow, each computed when first asked for and kept: the
    flow's fields (AppFields.later) and its tls event share them, and a flow whose
    fingerprints nobody reads never pays for them."""

    __slots__ = ("_ja3", "_ja3s", "_ja4", "hello", "server_hello")

    def __init__(self) -> None:
        self.hello: ClientHello | None = None
        self.server_hello: ServerHello | None = None
        self._ja3: tuple[str, str] | None = None
        self._ja4: str | None = None
        self._ja3s: tuple[str, str] | None = None

    def ja3(self) -> tuple[str, str]:
        """(JA3 string, MD5) of the ClientHello (set before this is asked)."""
        if self._ja3 is None:
            self._ja3 = ja3_memo(self.hello)  # type: ignore[arg-type]
        return self._ja3

    def ja3_hash(self) -> str:
        return self.ja3()[1]

    def ja4(self) -> str:
        if self._ja4 is None:
            self._ja4 = ja4_memo(self.hello)  # type: ignore[arg-type]
        return self._ja4

    def ja3s(self) -> tuple[str, str]:
        """(JA3S string, MD5) of the ServerHello (set before this is asked)."""
        if self._ja3s is None:
            self._ja3s = ja3s_memo(self.server_hello)  # type: ignore[arg-type]
        return self._ja3s

    def ja3s_hash(self) -> str:
        return self.ja3s()[1]


class AppInspector:
    """One per engine: the reassembler (bound per direction, global memory cap), the
    counters, and passive DNS (`names`, None: no passive DNS)."""

    # The state of a TCP flow that has carried no payload yet, for the compiled path
    # (ips/fast/_fastpath.pyx `_syn_ack`): what `inspect` does with a responder's SYN+ACK
    # without payload on such a flow is `_quiet`'s one step (the direction's start, from its
    # sequence number), which it does itself.
    tcp_quiet_state = _TcpQuiet
    # The state of a TCP flow whose streams are read, for the compiled path's bare ACKs
    # (ips/fast/_fastpath.pyx `_bare_segment_reads_nothing`): `inspect` does nothing with a
    # segment without payload, SYN, FIN or RST unless its direction ended while its side
    # is still read, which the compiled path reads in the state itself.
    tcp_reading_state = _Tcp
    # A quiet flow's first payload that names its protocol unknown is finished without the
    # streams, and another protocol it names is not detected again (`_first_payload`).
    # False: the full path, the reference it must equal (the tests compare the two).
    unknown_at_once = True

    def __init__(
        self,
        *,
        enabled: bool = True,
        limit: int = DEFAULT_LIMIT,
        memory_cap: int = DEFAULT_MEMORY_CAP,
        names: NameSource | None = None,
        counters: AppCounters | None = None,
        parsers: StreamParsers | None = None,
    ) -> None:
        self.enabled = enabled
        # The TLS ClientHello and HTTP parsers (`parsers`: compiled ones with the same
        # results; None: ips/app's, the reference).
        self._parse_client_hello = parse_client_hello
        self._requests_from = requests_from
        self._responses_from = responses_from
        if parsers is not None:
            self._parse_client_hello = parsers.parse_client_hello
            self._requests_from = parsers.requests_from
            self._responses_from = parsers.responses_from
        self.reassembler = Reassembler(limit=limit, memory_cap=memory_cap)
        self.names = names
        self.counters = counters if counters is not None else AppCounters()
        # The DNS parsers: ips/app/dns.py's, the reference, unless the engine's compiled
        # path gave its own (ips/fast/_dnsparse.pyx: the same answers, faster; ips/fast/
        # __init__.py new_fast_path).
        self.parse_dns_message: Callable[..., DnsMessage | Malformed] = parse_message
        self.parse_dns_stream: Callable[[bytes], tuple[list[DnsMessage | Malformed], int]] = (
            parse_tcp_stream
        )
        # What is done with a parsed message: `_dns_message`, or the compiled path's own
        # (ips/fast/_dnsparse.pyx read_message: the same events, counts and state). A plain
        # function called with the inspector, as a bound method kept here would be a cycle.
        self.read_dns_message: Callable[..., None] = AppInspector._dns_message

    def configure(self, *, enabled: bool, limit: int, memory_cap: int) -> None:
        """New settings (a policy load). Flows in progress keep what they hold; a flow whose
        direction already reached the old bound stays complete."""
        self.enabled = enabled
        self.reassembler.limit = limit
        self.reassembler.memory_cap = memory_cap

    # ---- per packet ---------------------------------------------------------------------------

    def inspect(self, pkt: Packet, flow: Flow, fwd: bool, now: float) -> list[AppEvent] | None:
        """Read one packet of a flow whose app_state is not None; the events it completes."""
        state = flow.app_state
        if state is APP_NOT_STARTED:
            state = self._start(pkt, flow, now)
            if state is None:
                return None
        elif not self.enabled:  # application parsing turned off by a policy load
            self.release(flow, now)
            return None
        if pkt.frag != FRAG_NONE:
            # Inline, conntrack reassembles fragments before the queue; a fragment seen here
            # (replay, tap) carries a piece of a segment that the streams cannot place.
            return None
        cls = state.__class__
        if cls is _TcpQuiet:
            if pkt.payload_offset >= pkt.length:
                _quiet(state, pkt, fwd)
                return None
            found = self._first_payload(pkt, flow, fwd, state) if self.unknown_at_once else None
            if found == APP_UNKNOWN:
                return None
            return self._tcp(pkt, flow, fwd, self._wake(flow, state), now, found)
        if cls is _Tcp:
            return self._tcp(pkt, flow, fwd, state, now)
        return self._udp(pkt, flow, fwd, state, now)

    def _first_payload(self, pkt: Packet, flow: Flow, fwd: bool, quiet: _TcpQuiet) -> str | None:
        """A quiet flow's first payload, when it is the whole stream so far (in order at its
        direction's start, neither cut nor refused by the reassembler, no SYN, FIN or RST):
        the protocol it names by itself, which the full path's detection would name too
        (`_tcp` takes it instead of detecting again); None: the full path decides. Unknown
        is named and finished here, as `_wake`, the reassembler and `_tcp` would leave it
        (the fields made and final, unknown counted, no state, the reassembler's memory as
        before), without building the streams and the parsers' state only to drop them:
        most of what such a packet cost, one per connection of a protocol not parsed."""
        l4 = pkt.l4_offset
        data = pkt.data
        if flow.app_proto is not None or l4 < 0 or l4 + 8 > pkt.length or pkt.flags & 0x07:
            return None
        n = len(data) - pkt.payload_offset  # what Reassembler.add_packet places
        reassembler = self.reassembler
        if n >= reassembler.limit or reassembler.used + n > reassembler.memory_cap:
            return None
        base = quiet.client_base if fwd else quiet.server_base
        if base >= 0 and tcp_seq(pkt) != base:
            return None
        found = detect_stream(data, pkt.payload_offset)
        if found != APP_UNKNOWN:
            return found
        app = AppFields()
        app.client_done = True
        app.server_done = True
        flow.app = app
        flow.app_proto = APP_UNKNOWN
        self.counters.protocols[APP_UNKNOWN] += 1
        flow.app_state = None
        return APP_UNKNOWN

    def _wake(self, flow: Flow, quiet: _TcpQuiet) -> _Tcp:
        """The first payload of a TCP flow: its streams, started where its SYNs said."""
        streams = self.reassembler.open()
        to_server, to_client = streams.to_server, streams.to_client
        to_server.base, to_server.fin = quiet.client_base, quiet.client_fin
        to_client.base, to_client.fin = quiet.server_base, quiet.server_fin
        state = _Tcp(streams)
        flow.app_state = state
        # The fields start with the payload too: a flow that never carries any (a SYN
        # flood's, a scan's probe) holds nothing more than its quiet state, and that only
        # while it is in the table (detectors may keep ended flows a while).
        flow.app = AppFields()
        return state

    def _start(self, pkt: Packet, flow: Flow, now: float) -> _TcpQuiet | _Udp | None:
        if not self.enabled:
            flow.app_state = None
            return None
        if self.names is not None:  # every flow's responder, pings included
            flow.dst_name = self.names.name_of(flow.dst, now)
        proto = pkt.proto
        if proto == PROTO_TCP:
            state: _TcpQuiet | _Udp = _TcpQuiet()
        elif proto == PROTO_UDP:
            state = _Udp()
        else:
            flow.app_proto = ""  # nothing to name (ICMP, GRE...)
            flow.app_state = None
            return None
        if state.__class__ is _Udp:
            flow.app = AppFields()  # a TCP flow's come with its first payload (_wake)
        flow.app_state = state
        return state

    # ---- TCP ----------------------------------------------------------------------------------

    def _tcp(
        self,
        pkt: Packet,
        flow: Flow,
        fwd: bool,
        state: _Tcp,
        now: float,
        found: str | None = None,
    ) -> list[AppEvent] | None:
        """found: the protocol `_first_payload` read in this packet, the stream's only bytes
        (None: detect here)."""
        streams = state.streams
        new = self.reassembler.add_packet(streams, fwd, pkt)
        side = streams.to_server if fwd else streams.to_client
        # Nothing new in order: only a FIN or RST of a side still open is news (its message
        # will not be completed).
        if not new and (not side.fin or not (state.client_open if fwd else state.server_open)):
            return None
        app: AppFields = flow.app  # type: ignore[assignment]  # set by _wake
        proto = flow.app_proto
        both = False
        if proto is None:
            proto = self._detect_stream(flow, streams, fwd, found)
            if proto is None:
                return None
            if proto not in (APP_TLS, APP_HTTP, APP_SSH, APP_DNS):
                self._close(flow, state)
                return None
            if proto in (APP_HTTP, APP_DNS):
                app.server_done = True  # no server-side field to wait for
            both = True  # the other side may hold bytes that came before detection
        events: list[AppEvent] = []
        if proto == APP_DNS:
            app.dns_queries = ()  # the names of the client message in this packet, if any
        for to_server in (fwd, not fwd) if both else (fwd,):
            if state.client_open if to_server else state.server_open:
                d = streams.to_server if to_server else streams.to_client
                self._side(proto, flow, app, state, to_server, d, now, events)
        if proto == APP_HTTP:
            self._http_pairs(flow, state, now, events, final=not state.server_open)
            if not state.server_open:
                state.client_open = False
        if not state.client_open and not state.server_open:
            self._finish_tcp(proto, flow, state, now, events)
            self._close(flow, state)
        return events or None

    def _detect_stream(
        self, flow: Flow, streams: TcpStreams, fwd: bool, found: str | None = None
    ) -> str | None:
        """The protocol from the first bytes of either direction (this packet's first);
        None while too few bytes have arrived. found: what this packet's bytes, the only
        ones, were read to name already."""
        if found is not None:
            flow.app_proto = found
            self.counters.protocols[found] += 1
            return found
        for d in (
            (streams.to_server, streams.to_client)
            if fwd
            else (
                streams.to_client,
                streams.to_server,
            )
        ):
            if not d.buf:
                continue
            found = detect_stream(bytes(d.buf))
            if found is None and (d.complete or d.fin):
                found = APP_UNKNOWN  # this side will say no more
            if found is not None:
                flow.app_proto = found
                self.counters.protocols[found] += 1
                return found
        return None

    def _side(
        self,
        proto: str,
        flow: Flow,
        app: AppFields,
        state: _Tcp,
        to_server: bool,
        d: Direction,
        now: float,
        events: list[AppEvent],
    ) -> None:
        """Read one direction's bytes with the flow's parser; mark it done when it is."""
        ended = d.complete or d.fin
        if not ended and not d.buf:
            return  # the other side, which has sent nothing yet: no parser has news
        if proto == APP_TLS and not ended:
            # A hello (or certificate) of known length still arriving: its records are
            # not read again until it can be whole (tls.bytes_wanted).
            if len(d.buf) < state.tls_wanted[0 if to_server else 1]:
                return
        elif proto == APP_HTTP and not ended:
            # An HTTP body of known length still arriving: nothing to read until it is
            # whole (and the requests known to frame the responses are the same).
            progress = state.http_progress[0 if to_server else 1]
            if len(d.buf) < progress.wanted and (
                to_server or progress.methods == len(state.requests)
            ):
                return
        data = bytes(d.buf)
        done = False
        if proto == APP_TLS:
            done = self._tls_side(app, state, to_server, data, ended)
        elif proto == APP_HTTP:
            done = self._http_side(app, state, to_server, data, ended)
        elif proto == APP_SSH:
            done = self._ssh_side(app, state, to_server, data, ended)
        else:
            done = self._dns_side(flow, app, state, to_server, data, ended, now, events)
        if done:
            if to_server:
                state.client_open = False
                app.client_done = True
            else:
                state.server_open = False
                app.server_done = True

    def _malformed(self, reason: str) -> bool:
        self.counters.malformed[reason] += 1
        return True

    def _incomplete(self, proto: str, ended: bool) -> bool:
        if ended:
            self.counters.incomplete[proto] += 1
        return ended

    def _tls_side(
        self, app: AppFields, state: _Tcp, to_server: bool, data: bytes, ended: bool
    ) -> bool:
        if to_server:
            hello = self._parse_client_hello(data)
            if hello.__class__ is ClientHello:
                state.hello = hello
                prints = state.prints
                prints.hello = hello
                app.tls_sni = _name(hello.sni)
                app.later("tls_ja3", prints.ja3_hash)
                app.later("tls_ja4", prints.ja4)
                app.tls_alpn = tuple([p.decode("latin-1") for p in hello.alpn])
                return True
            if hello.__class__ is Malformed:
                return self._malformed(hello.reason)
            if not ended:
                state.tls_wanted[0] = bytes_wanted(data, server=False)
            return self._incomplete(APP_TLS, ended)
        flight = parse_server_flight(data)
        if flight.__class__ is ServerFlight:
            state.flight = flight
            if flight.certificate_error is not None:
                self.counters.malformed[flight.certificate_error] += 1
            state.prints.server_hello = flight.server_hello
            app.later("tls_ja3s", state.prints.ja3s_hash)
            return True
        if flight.__class__ is Malformed:
            return self._malformed(flight.reason)
        if not ended:
            state.tls_wanted[1] = bytes_wanted(data, server=True)
            return False
        # The certificate did not fit in the bound (or the stream ended): the ServerHello
        # alone still gives JA3S.
        self.counters.incomplete[APP_TLS] += 1
        server_hello = parse_server_hello(data)
        if server_hello.__class__ is ServerHello:
            state.flight = ServerFlight(server_hello, None)
            state.prints.server_hello = server_hello
            app.later("tls_ja3s", state.prints.ja3s_hash)
        return True

    def _http_side(
        self, app: AppFields, state: _Tcp, to_server: bool, data: bytes, ended: bool
    ) -> bool:
        if to_server:
            # Resumed where the last call stopped: the requests wholly read stay as they
            # were (the stream only grows), the rest is read again with the new bytes.
            progress = state.http_progress[0]
            requests = state.requests[: progress.whole]
            got = self._requests_from(data, progress.resume, requests)
            progress.update(got, 0)
            why = got.why
            state.requests = requests
            if requests and app.http_method is None:
                first = requests[0]
                app.http_method = first.method
                app.http_uri = first.uri
                app.http_user_agent = first.user_agent
                if first.host is not None:
                    app.http_host = _name(split_host(first.host)[0])
                app.client_done = True  # the first request's fields are final
            if why.__class__ is Malformed:
                return self._malformed(why.reason)
            return ended
        methods = [r.method for r in state.requests]
        progress = state.http_progress[1]
        if progress.whole > progress.methods < len(methods):
            # A response wholly read was framed before its request was known, and now it
            # is (a HEAD's answer has no body): read them all again.
            progress.resume = progress.whole = 0
        responses = state.responses[: progress.whole]
        got = self._responses_from(data, methods, progress.resume, responses)
        progress.update(got, len(methods))
        why = got.why
        state.responses = responses
        if why.__class__ is Malformed:
            return self._malformed(why.reason)
        return ended or why == UNTIL_CLOSE

    def _ssh_side(
        self, app: AppFields, state: _Tcp, to_server: bool, data: bytes, ended: bool
    ) -> bool:
        banner = parse_banner(data, server=not to_server)
        if banner is None:
            return self._incomplete(APP_SSH, ended)
        if isinstance(banner, Malformed):
            return self._malformed(banner.reason)
        state.banners[0 if to_server else 1] = banner
        if to_server:
            app.ssh_client = banner.software
        else:
            app.ssh_server = banner.software
        return True

    def _dns_side(
        self,
        flow: Flow,
        app: AppFields,
        state: _Tcp,
        to_server: bool,
        data: bytes,
        ended: bool,
        now: float,
        events: list[AppEvent],
    ) -> bool:
        index = 0 if to_server else 1
        offset = state.dns_offset[index]
        messages, used = self.parse_dns_stream(data[offset:])
        state.dns_offset[index] = offset + used
        for msg in messages:
            if isinstance(msg, Malformed):
                return self._malformed(msg.reason)
            self.read_dns_message(self, flow, app, msg, to_server, state, now, events)
        if ended and offset + used < len(data):
            self.counters.incomplete[APP_DNS] += 1
        return ended

    def _http_pairs(
        self, flow: Flow, state: _Tcp, now: float, events: list[AppEvent], final: bool
    ) -> None:
        """HTTP events for the transactions whose request and response were both read; at
        the end (final), the rest too (a request without response, or the reverse)."""
        requests, responses = state.requests, state.responses
        count = max(len(requests), len(responses)) if final else min(len(requests), len(responses))
        for i in range(state.logged, count):
            request = requests[i] if i < len(requests) else None
            response = responses[i] if i < len(responses) else None
            build = partial(eve_http, request, response)
            events.append(self._event(flow, True, now, APP_HTTP, build, i))
        state.logged = max(state.logged, count)

    def _finish_tcp(
        self, proto: str, flow: Flow, state: _Tcp, now: float, events: list[AppEvent]
    ) -> None:
        """The events written once a flow's inspection is over: TLS and SSH (one per flow,
        both sides together, as Suricata writes them)."""
        if proto == APP_TLS:
            if state.hello is not None or state.flight is not None:
                build = partial(_eve_tls, state.hello, state.flight, state.prints)
                events.append(self._event(flow, True, now, APP_TLS, build))
        elif proto == APP_SSH:
            client, server = state.banners
            if client is not None or server is not None:
                build = partial(eve_ssh, client, server)
                events.append(self._event(flow, True, now, APP_SSH, build))
        elif proto == APP_HTTP:
            self._http_pairs(flow, state, now, events, final=True)

    # ---- UDP ----------------------------------------------------------------------------------

    def _udp(
        self, pkt: Packet, flow: Flow, fwd: bool, state: _Udp, now: float
    ) -> list[AppEvent] | None:
        start = pkt.payload_offset
        if start >= pkt.length:
            return None
        app: AppFields = flow.app  # type: ignore[assignment]  # set by _wake
        proto = flow.app_proto
        if proto is None:
            proto = flow.app_proto = detect_datagram(pkt.data, start)
            self.counters.protocols[proto] += 1
            if proto == APP_QUIC:
                state.quic = QuicInitialReader()
                app.server_done = True  # QUIC's server side gives no field here
            elif proto == APP_DNS:
                app.server_done = True
            else:
                self._close(flow, state)
                return None
        if proto == APP_DNS:
            app.dns_queries = ()
            msg = self.parse_dns_message(pkt.data, start)
            if isinstance(msg, Malformed):
                self.counters.malformed[msg.reason] += 1
                return None
            events: list[AppEvent] = []
            self.read_dns_message(self, flow, app, msg, fwd, state, now, events)
            return events or None
        reader = state.quic
        if not fwd or reader is None:
            return None  # only the client's Initials carry the hello
        state.datagrams += 1
        got = reader.feed(bytes(pkt.data[start:]))
        if got.__class__ is QuicClientHello:
            quic: QuicClientHello = got
            hello = quic.hello
            app.quic_sni = _name(hello.sni)
            app.later("quic_ja4", partial(ja4_memo, hello, "q"))
            event = self._event(flow, True, now, APP_QUIC, partial(_eve_quic, quic, app))
            self._close(flow, state)
            return [event]
        if got.__class__ is Malformed:
            self.counters.malformed[got.reason] += 1
            self._close(flow, state)
        elif state.datagrams >= QUIC_DATAGRAMS:
            self.counters.incomplete[APP_QUIC] += 1
            self._close(flow, state)
        return None

    # ---- DNS (both transports) ----------------------------------------------------------------

    def _dns_message(
        self,
        flow: Flow,
        app: AppFields,
        msg: DnsMessage,
        to_server: bool,
        state: _Tcp | _Udp,
        now: float,
        events: list[AppEvent],
    ) -> None:
        """One DNS message: a query names the packet's dns_queries, an answer teaches passive
        DNS; both are events, in the message's own direction, as Suricata writes them."""
        ids = state.dns_ids
        answer = msg.flags & 0x8000  # (msg.qr, without the property call)
        tx_id = ids.pop(msg.id, None) if answer else None
        if tx_id is None:
            tx_id = state.dns_tx
            state.dns_tx += 1
        if answer:
            if self.names is not None:
                self.names.learn(msg, now)
        else:
            app.dns_queries = tuple([q.name.rstrip(".").lower() for q in msg.questions])
            app.client_done = True
            if len(ids) >= DNS_IDS_KEPT:
                del ids[next(iter(ids))]
            ids[msg.id] = tx_id
        # eve_dns writes one object per question of a query, one for an answer.
        for index in range(1 if answer else len(msg.questions)):
            build = partial(_eve_dns_one, msg, tx_id, index)
            events.append(self._event(flow, to_server, now, APP_DNS, build, tx_id))

    # ---- events and the end -------------------------------------------------------------------

    def _event(
        self,
        flow: Flow,
        to_server: bool,
        now: float,
        event_type: str,
        build: Callable[[], dict[str, object]],
        tx_id: int | None = None,
    ) -> AppEvent:
        """An event whose body is built when a sink first reads it (AppEvent.build)."""
        if to_server:
            src, sport, dst, dport = flow.src, flow.sport, flow.dst, flow.dport
        else:
            src, sport, dst, dport = flow.dst, flow.dport, flow.src, flow.sport
        event = AppEvent(
            now, flow.flow_id, flow.family, flow.proto, src, sport, dst, dport,
            event_type=event_type, build=build, tx_id=tx_id,
        )  # fmt: skip
        event.app_proto = flow.app_proto
        event.dst_name = flow.dst_name
        self.counters.events[event_type] += 1
        return event

    def _close(self, flow: Flow, state: _Tcp | _Udp) -> None:
        """The flow's inspection is over: its fields are final, its memory returned."""
        if state.__class__ is _Tcp:
            self.reassembler.close(state.streams)
        app = flow.app
        if app is not None:
            app.client_done = True
            app.server_done = True
        flow.app_state = None

    def release(self, flow: Flow, now: float) -> list[AppEvent] | None:
        """The flow ended (or was forgotten): the events still owed (a TLS hello whose server
        never answered, HTTP requests without responses, one SSH banner), its reassembly
        memory returned (counted), its fields final."""
        state = flow.app_state
        if state is None:
            return None
        if state is APP_NOT_STARTED:
            flow.app_state = None
            return None
        events: list[AppEvent] = []
        if state.__class__ is _Tcp:
            held = state.streams.to_server.held + state.streams.to_client.held
            if held:
                self.counters.released_flows += 1
                self.counters.released_bytes += held
            proto = flow.app_proto
            if proto in (APP_TLS, APP_SSH, APP_HTTP):
                self._finish_tcp(proto, flow, state, now, events)
        self._close(flow, state)
        return events or None

    def refused(self, flow: Flow, now: float) -> list[AppEvent] | None:
        """The engine refused (dropped or rejected) a packet of a flow whose client message
        was read: the flow will never complete, so the events it owes are handed out now
        rather than at its end, maybe an hour later (a TLS hello whose server will never
        answer, HTTP requests without response, an SSH client banner), and its inspection is
        over (memory returned, fields final, as `release`). DNS and QUIC owe nothing (their
        events go out per message), and a DNS flow goes on being read: the next query of the
        same socket is judged on its own names. None when nothing was owed."""
        state = flow.app_state
        if state.__class__ is not _Tcp or flow.app_proto not in (APP_TLS, APP_SSH, APP_HTTP):
            return None
        app = flow.app
        if app is None or not app.client_done:
            return None  # the client's message may still come: its rule has not decided
        return self.release(flow, now)

    @property
    def memory(self) -> int:
        """Bytes the reassembler holds for all flows."""
        return self.reassembler.used


def _eve_tls(
    hello: ClientHello | None, flight: ServerFlight | None, prints: _Prints
) -> dict[str, object]:
    """The EVE `tls` object with Suricata 7's names: certificate fields, sni, version,
    validity, ja3, ja3s, ja4, client and server ALPNs (`prints`: the flow's fingerprints,
    shared with its fields)."""
    out: dict[str, object] = {}
    cert: Certificate | None = flight.certificate if flight is not None else None
    if cert is not None:
        out["subject"] = cert.subject
        out["issuerdn"] = cert.issuer
        out["serial"] = cert.serial_text
        out["fingerprint"] = cert.fingerprint
    if hello is not None and hello.sni is not None:
        out["sni"] = hello.sni
    if flight is not None:
        out["version"] = tls_version_text(flight.server_hello.selected_version)
    elif hello is not None:
        out["version"] = tls_version_text(hello.max_version)
    if cert is not None:
        out["notbefore"] = cert.not_before
        out["notafter"] = cert.not_after
    if hello is not None:
        text, digest = prints.ja3()
        out["ja3"] = {"hash": digest, "string": text}
    if flight is not None:
        text, digest = prints.ja3s()
        out["ja3s"] = {"hash": digest, "string": text}
    if hello is not None:
        out["ja4"] = prints.ja4()
        if hello.alpn:
            out["client_alpns"] = [p.decode("latin-1") for p in hello.alpn]
    if flight is not None and flight.server_hello.alpn is not None:
        out["server_alpns"] = [flight.server_hello.alpn.decode("latin-1")]
    return out


def _eve_quic(quic: QuicClientHello, app: AppFields) -> dict[str, object]:
    """The EVE `quic` object: version, sni, ja4 (the flow's quic_ja4), and the named
    extensions with values (server_name, alpn) as Suricata lists them."""
    out: dict[str, object] = {"version": quic_version_text(quic.version)}
    hello = quic.hello
    if hello.sni is not None:
        out["sni"] = hello.sni
    out["ja4"] = app.quic_ja4
    extensions: list[dict[str, object]] = []
    if hello.sni is not None:
        extensions.append({"name": "server_name", "type": 0, "values": [hello.sni]})
    if hello.alpn:
        values = [p.decode("latin-1") for p in hello.alpn]
        extensions.append({"name": "alpn", "type": 16, "values": values})
    if extensions:
        out["extensions"] = extensions
    return out


def _eve_dns_one(msg: DnsMessage, tx_id: int, index: int) -> dict[str, object]:
    """The index-th EVE `dns` object of a message (a query has one per question)."""
    return eve_dns(msg, tx_id)[index]


def _quiet(state: _TcpQuiet, pkt: Packet, fwd: bool) -> None:
    """What Reassembler.add does with a segment without payload, on a flow with no stream
    yet: a SYN sets its direction's start, a FIN or RST ends the direction."""
    if pkt.l4_offset < 0 or pkt.l4_offset + 8 > pkt.length:
        return  # as Reassembler.add_packet: no sequence number to read
    flags = pkt.flags
    if flags & TCP_SYN:
        base = (tcp_seq(pkt) + 1) & 0xFFFFFFFF
        if fwd:
            state.client_base = base
        else:
            state.server_base = base
    elif (state.client_base if fwd else state.server_base) < 0:
        return  # as Reassembler.add: a direction not started ignores an empty segment
    if flags & 0x05:  # FIN or RST
        if fwd:
            state.client_fin = True
        else:
            state.server_fin = True
