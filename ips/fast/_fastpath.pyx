# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled per-packet path: the packets of a decided flow that need no Python.

`FastPath.handle(data, meta, now)` does exactly what `Engine.handle` would do for a packet it
can prove needs nothing but counting and a rule the flow's cache already names, and returns
the same Decision object; for every other packet it changes nothing and returns the packet
decoded (a `Packet`, as ips/core/decode.py makes it, for `Engine.handle_packet`) or None (not
decoded here: `Engine.handle_python`). A packet qualifies when:

  * its bytes are raw IP or Ethernet (VLAN tags peeled as ips/core/decode.py peels them:
    decisions never read them, a Packet returned carries their ids), IPv4 without options
    and not a fragment, or IPv6 without extension headers, carrying TCP, UDP or an
    ICMP/ICMPv6 echo request or reply whose header the decoder would accept (anything it
    would count as malformed goes to Python);
  * its flow exists, has no translation (NAT), no application-layer work left
    (`app_state is None`), and its rule cache for this direction was made under the
    running policy and the packet's interfaces;
  * TCP: the flow is established and the packet carries no SYN, FIN or RST (those move the
    state machine), so the flow table would only count it -- or the flow is in SYN_RECV
    and the packet an ACK, the handshake's last step (moved and recorded here); with
    application parsing on, a flow the inspector has read nothing of yet (its quiet state)
    and a packet without payload, accepted -- or a flow whose first bytes it reads and a
    bare ACK that `inspect` lets go (`_bare_segment_reads_nothing`), accepted;
  * no block applies (the `banned` table, a MAC block, a translated reply), and the
    policy's detectors declared that they do nothing with this packet, or only count it in
    a flood's token bucket that exists and has a token (`Detectors.interest`; a policy
    whose detectors declare nothing sends every packet to Python);
  * walking the cached candidate rules in order, every rule reached has conditions this
    module evaluates exactly (TCP flags, ICMP type and code, length, state, fragment,
    payload contains) and the first that matches is a terminal rule with a prebuilt
    Decision (accept or drop, no alert or log; a `limit` whose bucket exists and has a
    token) -- or none matches and the default is accept or drop. A payload rule that
    *matches* goes to Python (its alert is made there).

Then it counts what the engine counts (the flood and limit buckets, EngineStats.packets and
verdicts, the flow's packets, bytes, flags and last_seen, the rule's hits, an offload) and
returns the rule's Decision
(or its offload variant, chosen as ips/engine/offload.py chooses). tests/pure/
test_fastpath_differential.py holds it to the Python engine, packet for packet.

A packet of no flow (`_flowless`: a flow's first packet, which the engine would open a flow
for) is decided here when the policy refuses it with nothing to say, for then the flow is
discarded before it is filed (Engine._discard, FlowTable._discard_opened) and nothing of it
stays but counters (and, for a new probe, what the scan detectors keep of it):

  * TCP or UDP as above, no block, no translation; with application parsing on, the
    inspector's first look at the flow leaves what this module can reproduce or run
    (`_app_first_look`, at the end of this file): nothing but a quiet state (no payload),
    counters only (a stream whose first bytes need more, or name no protocol -- ips/app/
    detect.py's detection ported to C --, a ServerHello or an HTTP response read as a
    client's), or the inspector's own look, run here once the packet is decided (a TLS,
    HTTP or SSH client's first bytes: no event possible; a DNS datagram: its events put
    on the Decision as Engine._finish puts them); QUIC, DNS over TCP, a segment at the
    reassembly bound or over its memory cap go to Python;
  * the detectors declared what they do with a flow's first packet (PacketInterest
    first_tcp, first_udp_quiet, first_udp, first_syn_floods, probe_scans): nothing, or only
    an answer to a pending probe that is no failure (not a reset), which `note_answer`
    notes as `_tcp` and `_udp` would, or a probe (a SYN, a bare ACK or FIN+ACK, a UDP
    datagram) of portscan and sweep: one that repeats a pending probe does nothing, a new
    one is filed here (_probe_plan, _probe_file: what ScanDetector.probe does in each scan,
    its window opened or rolled over, the oldest evicted from a full table, a key at its
    cap counted skipped, and a Probe in the queue and index holding the Flow that
    FlowTable.open would have made, _refused_flow: the same objects, every slot set as
    Python sets it); the scans' due probes are weighed first, as `_probe` weighs them,
    when that reports nothing and leaves none due (ScanDetector.resolve_quietly); a full
    queue of pending probes forgets its oldest here (_forget_oldest), as _make_room does
    when it does not weigh it early; an early weighing, a detection among the due probes,
    or `slowscan` (which hears every weight) goes to Python. A UDP packet counted by the
    floods, a SYN by synflood (first_syn_floods), from a bucket with a token, or a new
    key's bucket made when the table has room (asked before the candidate lookups: a
    flood's `limit` drops the packet before the rules, which Python then never looks up);
  * the flow table would not make room first (not full) and has no unsettled flow; its
    unreplied queue needs no compacting (Python compacts it); the timer slot the flow would
    have had is made here when it does not exist yet (FlowTable._discard_opened);
  * the candidate rules, found as CompiledPolicy.candidate_entry finds them (the same memo
    reads and lookups; a bitset whose candidates are not memoised yet goes to Python) and
    walked with state new, reach a terminal drop with a prebuilt Decision (its `limit`, per
    source or destination or rule, with a token) -- or none matches and the default drops.

Then it counts EngineStats.packets and verdicts, the rule's hits and its limit's bucket, and
the flow table's next id, created, discarded and the unreplied queue's stand-in for the flow;
with parsing on, the application layer's counters the first look leaves (protocols, malformed
messages, the flows and bytes released), and asks passive DNS the responder's name when it
knows the address (name_of of an unknown address changes nothing; a new probe's flow keeps
the name it gives).

Counters are owed (`FastPath.owed`): counted in C fields and written to the engine's objects
by `_flush` before any call out of this module and before returning to its caller, so that
no Python code reads one that lags.

A SYN (no ACK, FIN or RST) of no flow that the rules or the default accept (`_syn_first`,
called at _flowless's accepting return points) has its flow filed here, as the engine's path
files it: FlowTable.open's counts and Flow, with parsing on the inspector's first look
(passive DNS's name, the quiet state with the client's start), the probe it is and
synflood's count, the forward cache, the rule's hits, FlowTable.settle (both keys, the timer
slot, the unreplied queue); not with payload while parsing is on, nor when the table would
make room, compact its queue or a probe plan needs Python. Where it does not run (or cannot
file the flow), a SYN to a destination and port whose last SYN the rules here did not refuse
goes to Python at once (syn_accepted: most likely a new connection, whose candidates would
be looked up twice; a guess that only chooses the path).

A responder's SYN+ACK answering the SYN of a flow the policy accepted (`_syn_ack`) is
decided here when the detectors declared nothing to do with it (reverse_tcp_quiet), its
flow has no application-layer work left (or the inspector's quiet state, whose one step it
does), and its direction's candidates -- found as CompiledPolicy.candidate_entry finds
them, and kept on the flow -- reach an accept or drop with a prebuilt Decision: the flow
moved to SYN_RECV and counted, and OFFLOAD_HANDSHAKE_ACK (or, while the inspector reads,
OFFLOAD_BARE_ACKS) chosen as offload_kind chooses it.

With parsing on, an accepted established TCP flow's first payload that names it unknown by
itself (AppInspector._first_payload: `_first_payload_unknown`, the C port of detect_stream)
is decided on the established path, and the inspector's part done here (`_name_unknown`)
before the offload is weighed.

`run_pcap` reads classic pcap records from a buffer (an mmap of the file) and judges each:
the fast ones here, the others through the engine's Python path, returning to the caller at
each tick, each decision with effects, and each record it leaves to the Python reader.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Contains, PyDict_GetItem, PyDict_SetItem
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_FromDouble, PyLong_FromLongLong
from libc.math cimport copysign, floor, fmod, isfinite
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from libc.stdint cimport uint8_t, uint16_t, uint32_t

from cpython.ref cimport Py_DECREF, Py_XDECREF
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport uint64_t

from collections import Counter, OrderedDict, deque
from heapq import heappush as _heappush

from ips.core import decode as _decode
from ips.core.decision import Decision
from ips.core.flow import HANDSHAKE_MEMORY, _GONE_STAND_IN, _SLOT, Flow, FlowTable, FlowTimeouts
from ips.core.packet import Packet
from ips.core.tables import TokenBuckets
from ips.detect.flood import Flood
from ips.detect import common as _detect_common
from ips.detect import detectors as _detectors
from ips.detect.scan import ANSWERED as _ANSWERED_OUTCOME, UNKNOWN as _UNKNOWN_OUTCOME, Probe
from ips.detect.scan import ACK as _PROBE_ACK, DATAGRAM as _PROBE_DATAGRAM, GRACE as _GRACE
from ips.detect.scan import SYN as _PROBE_SYN, ScanEntry, PortScan, Sweep
from ips.detect.scan import EARLY as _EARLY, RESOLVE_PER_PACKET
from ips.detect.scan import ECHO as _PROBE_ECHO
from ips.detect import scan as _scan
from ips.core.packet import PROTO_UDPLITE as _PROTO_UDPLITE
from ips.core.flow import END_DISCARDED, _GONE as _FLOW_GONE, _NEVER as _FLOW_NEVER
from ips.core.flow import _ID_MASK as _FLOW_ID_MASK
from ips.detect.scan import TRACEROUTE_PORTS as _TRACEROUTE_PORTS
from ips.policy.compile import OFFLOAD_LATER, OFFLOAD_WHEN_APP_DONE, CompiledPolicy, CompiledRule
from ips.policy.model import ACCEPT, DROP, ENCRYPTED_APPS, UNLIMITED_DEPTH

cdef extern from "Python.h":
    ctypedef size_t Py_uhash_t
    ctypedef struct PyMemberDef:
        const char *name
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member

cdef enum:
    T_OBJECT_EX = 16


# ---- slots read and written in place ----------------------------------------------------------
# Flow, CompiledRule and Decision are __slots__ classes: each slot is a pointer at a fixed
# offset in the object, which their member descriptors name. Reading and writing it there is
# what `flow.pkts_fwd` and `flow.pkts_fwd = n` do, without the attribute lookup (the largest
# cost of this path). The offsets are checked at import: a class whose attribute is not such
# a slot any more makes the import fail, and the engine runs in Python (the loader says so).

cdef Py_ssize_t _offset(type cls, str name) except -1:
    descr = cls.__dict__.get(name)
    if type(descr).__name__ != "member_descriptor":
        raise ImportError(f"{cls.__name__}.{name} is not a __slots__ member")
    cdef PyMemberDef *member = (<PyMemberDescrObject *><PyObject *>descr).d_member
    if member.type != T_OBJECT_EX:
        raise ImportError(f"{cls.__name__}.{name} is not an object slot")
    return member.offset


cdef inline object _get(object obj, Py_ssize_t offset):
    cdef PyObject *value = (<PyObject **>((<char *><PyObject *>obj) + offset))[0]
    if value is NULL:
        raise AttributeError("slot not set")
    return <object>value


cdef inline void _set(object obj, Py_ssize_t offset, object value):
    cdef PyObject **slot = <PyObject **>((<char *><PyObject *>obj) + offset)
    cdef PyObject *old = slot[0]
    Py_INCREF(value)
    slot[0] = <PyObject *>value
    Py_XDECREF(old)


cdef type FLOW = Flow
cdef type FLOW_TABLE = FlowTable
# The ethertypes of VLAN tags ips/core/decode.py peels, and how many it peels (`_vlan_tags`).
cdef frozenset _VLAN_TPIDS = _decode._VLAN_TPIDS
# (an ethertype's membership of _VLAN_TPIDS, read per frame without making an int of it)
cdef bytes _VLAN_TPID_TABLE = bytes([1 if t in _VLAN_TPIDS else 0 for t in range(65536)])
cdef const uint8_t *_VLAN_TPID = <const uint8_t *>PyBytes_AS_STRING(_VLAN_TPID_TABLE)
cdef Py_ssize_t _MAX_VLAN_TAGS = _decode._MAX_VLAN_TAGS
cdef type COMPILED_POLICY = CompiledPolicy
# What FlowTable._discard_opened puts in the unreplied queue for a discarded flow, and the
# timer wheel's granularity (ips/core/flow.py).
cdef object GONE_STAND_IN = _GONE_STAND_IN
cdef object FLOW_SLOT = _SLOT
# PacketInterest.first_tcp's values (ips/detect/detectors.py)
cdef int FIRST_NOTHING = _detectors.FIRST_NOTHING
cdef int FIRST_ANSWER = _detectors.FIRST_ANSWER
cdef int FIRST_ANSWER_ELSE_PROBE = _detectors.FIRST_ANSWER_ELSE_PROBE
cdef int FIRST_ANSWER_ELSE_PROBE_IF_EMPTY = _detectors.FIRST_ANSWER_ELSE_PROBE_IF_EMPTY
cdef int FIRST_BUSY = _detectors.FIRST_BUSY
# The ports a UDP first packet is neither an answer nor a probe to (`_udp`): a range
if type(_TRACEROUTE_PORTS) is not range or _TRACEROUTE_PORTS.step != 1:
    raise ImportError("ips.detect.scan.TRACEROUTE_PORTS is not a range of step 1")
cdef int TRACEROUTE_FIRST = _TRACEROUTE_PORTS.start
cdef int TRACEROUTE_END = _TRACEROUTE_PORTS.stop
cdef object PACKET = Packet
cdef Py_ssize_t F_APP_STATE = _offset(Flow, "app_state")
cdef Py_ssize_t F_NAT = _offset(Flow, "nat")
cdef Py_ssize_t F_SPORT = _offset(Flow, "sport")
cdef Py_ssize_t F_SRC = _offset(Flow, "src")
cdef Py_ssize_t F_REPLIED = _offset(Flow, "replied")
cdef Py_ssize_t F_TCP_STATE = _offset(Flow, "tcp_state")
cdef Py_ssize_t F_CACHE_FWD = _offset(Flow, "cache_fwd")
cdef Py_ssize_t F_CACHE_REV = _offset(Flow, "cache_rev")
cdef Py_ssize_t F_PKTS_FWD = _offset(Flow, "pkts_fwd")
cdef Py_ssize_t F_PKTS_REV = _offset(Flow, "pkts_rev")
cdef Py_ssize_t F_BYTES_FWD = _offset(Flow, "bytes_fwd")
cdef Py_ssize_t F_BYTES_REV = _offset(Flow, "bytes_rev")
cdef Py_ssize_t F_PAYLOAD_FWD = _offset(Flow, "payload_fwd")
cdef Py_ssize_t F_PAYLOAD_REV = _offset(Flow, "payload_rev")
cdef Py_ssize_t F_FLAGS_FWD = _offset(Flow, "flags_fwd")
cdef Py_ssize_t F_FLAGS_REV = _offset(Flow, "flags_rev")
cdef Py_ssize_t F_LAST_SEEN = _offset(Flow, "last_seen")
cdef Py_ssize_t F_MAC = _offset(Flow, "mac")
cdef Py_ssize_t F_APP = _offset(Flow, "app")
cdef Py_ssize_t F_APP_PROTO = _offset(Flow, "app_proto")
cdef Py_ssize_t F_BACK_SINCE = _offset(Flow, "back_since")
cdef Py_ssize_t F_OFFLOADED = _offset(Flow, "offloaded")
cdef Py_ssize_t F_FLOW_ID = _offset(Flow, "flow_id")
cdef Py_ssize_t F_SLOT = _offset(Flow, "_slot")
cdef Py_ssize_t F_TTL = _offset(Flow, "ttl")
# The engine's Meta (ips/engine/engine.py, a __slots__ class too): bound when the first
# FastPath is made (the engine module imports this one, so not at import); left unbound —
# its attributes then read by name — if its attributes are not such slots any more.
cdef type META = None
cdef Py_ssize_t M_IIF = 0, M_OIF = 0, M_MAC = 0, M_LINKTYPE = 0


cdef _bind_meta():
    global META, M_IIF, M_OIF, M_MAC, M_LINKTYPE
    if META is not None:
        return
    try:
        from ips.engine.engine import Meta
        M_IIF = _offset(Meta, "iif")
        M_OIF = _offset(Meta, "oif")
        M_MAC = _offset(Meta, "mac")
        M_LINKTYPE = _offset(Meta, "linktype")
    except ImportError:
        return
    META = Meta


cdef type PROBE = Probe
cdef Py_ssize_t P_OUTCOME = _offset(Probe, "outcome")
cdef object ANSWERED_OUTCOME = _ANSWERED_OUTCOME
cdef object UNKNOWN_OUTCOME = _UNKNOWN_OUTCOME


# ---- new probes of the scan detectors, filed here (FastPath._probe_plan, _probe_file) ----------
# A refused first packet that is a new probe leaves, besides counters, objects Python made:
# the Flow that FlowTable.open made (discarded, but held by the probes), a ScanEntry when
# the probe opens a window, and a Probe in each scan's queue and index. This module makes
# the same objects (every slot set to what their __init__ and the engine's path set), and
# only while their classes have exactly the slots listed here: a slot added later would be
# left unset, so then every new probe goes to Python (probes_known False).
cdef type SCAN_ENTRY = ScanEntry
cdef object GRACE_SECONDS = _GRACE
cdef object EARLY_SECONDS = _EARLY
cdef object PROBE_SYN = _PROBE_SYN, PROBE_ACK = _PROBE_ACK, PROBE_DATAGRAM = _PROBE_DATAGRAM
cdef object PROBE_ECHO = _PROBE_ECHO  # an echo request: sweep's alone (`_probe`, ports False)
cdef object FLOW_NEVER = _FLOW_NEVER        # Flow.back_since of a flow never offloaded
cdef object FLOW_GONE = _FLOW_GONE          # Flow._slot of a flow in no table
cdef object FLOW_DISCARDED = END_DISCARDED  # the end_reason Engine._discard leaves
cdef object NEG_INF = float("-inf")
cdef bint probes_known = (
    frozenset(Flow.__slots__) == frozenset((
        "_slot", "app", "app_proto", "app_state", "back_since", "bytes_fwd", "bytes_rev",
        "cache_fwd", "cache_rev", "dport", "dst", "dst_name", "end_reason", "family",
        "first_seen", "flags_fwd", "flags_rev", "flow_id", "icmp", "iif", "last_seen", "mac",
        "nat", "offloaded", "oif", "payload_fwd", "payload_rev", "pkts_fwd", "pkts_rev",
        "proto", "replied", "sport", "src", "tcp_state", "ttl", "user",
    ))
    and frozenset(Probe.__slots__) == frozenset((
        "answer", "copies", "due", "entry", "flow", "key", "kind", "outcome", "size", "target",
    ))
    and frozenset(ScanEntry.__slots__) == frozenset((
        "fired", "pending", "score", "start", "waiting", "weights",
    ))
)
cdef Py_ssize_t F_FAMILY = _offset(Flow, "family")
cdef Py_ssize_t F_PROTO = _offset(Flow, "proto")
cdef Py_ssize_t F_DST = _offset(Flow, "dst")
cdef Py_ssize_t F_DPORT = _offset(Flow, "dport")
cdef Py_ssize_t F_FIRST_SEEN = _offset(Flow, "first_seen")
cdef Py_ssize_t F_END_REASON = _offset(Flow, "end_reason")
cdef Py_ssize_t F_ICMP = _offset(Flow, "icmp")
cdef Py_ssize_t F_IIF = _offset(Flow, "iif")
cdef Py_ssize_t F_OIF = _offset(Flow, "oif")
cdef Py_ssize_t F_USER = _offset(Flow, "user")
cdef Py_ssize_t F_DST_NAME = _offset(Flow, "dst_name")
cdef Py_ssize_t P_DUE = _offset(Probe, "due")
cdef Py_ssize_t P_ENTRY = _offset(Probe, "entry")
cdef Py_ssize_t P_KEY = _offset(Probe, "key")
cdef Py_ssize_t P_TARGET = _offset(Probe, "target")
cdef Py_ssize_t P_FLOW = _offset(Probe, "flow")
cdef Py_ssize_t P_KIND = _offset(Probe, "kind")
cdef Py_ssize_t P_ANSWER = _offset(Probe, "answer")
cdef Py_ssize_t P_SIZE = _offset(Probe, "size")
cdef Py_ssize_t P_COPIES = _offset(Probe, "copies")
cdef Py_ssize_t E_START = _offset(ScanEntry, "start")
cdef Py_ssize_t E_WEIGHTS = _offset(ScanEntry, "weights")
cdef Py_ssize_t E_SCORE = _offset(ScanEntry, "score")
cdef Py_ssize_t E_FIRED = _offset(ScanEntry, "fired")
cdef Py_ssize_t E_PENDING = _offset(ScanEntry, "pending")
cdef Py_ssize_t E_WAITING = _offset(ScanEntry, "waiting")

cdef extern from "Python.h":
    # A new object of a class whose instances are only slots: what object.__new__ makes
    # (every slot unset), without the call.
    object PyType_GenericAlloc(type cls, Py_ssize_t nitems)


cdef class ScanProg:
    """One scan detector (portscan or sweep) as this module files a probe in it:
    ScanDetector.probe (with _new_window) for a probe whose answer it does not await. Its
    tables are read when the policy is loaded (a detector never replaces them), its
    settings too (`probes` is set by Detectors when it is made, `per_key` at its making)."""
    cdef object det
    cdef dict attrs               # its __dict__: the counters evicted and probes_skipped
    cdef object entries           # the windows, an OrderedDict
    cdef dict index
    cdef object pending           # a deque
    cdef object within
    cdef Py_ssize_t memory, probes, per_key
    cdef object ignore
    cdef bint by_host             # portscan: key (source, host), target its port
    # the plan for the packet at hand (_probe_plan), carried out by _probe_file
    cdef int action               # SCAN_NOTHING, SCAN_SKIP or SCAN_FILE
    cdef bint new_window          # a window opens (the old one, if any, goes)
    cdef object old_entry         # the window found (None: none)
    cdef object key, target
    cdef bint make_room           # the queue is full: its oldest probe is forgotten first
    # An echo request, which a class with ECHO_COUNTS (Sweep) counts as it is sent: the
    # probe is filed FAILED, and its window credited W_FAILED over `echo_old` (the target's
    # weight) when `echo_credit` (ScanDetector.probe's `_credit`, which does not detect here)
    cdef bint echo_counts, echo_credit
    cdef double echo_old
    # _resolve_quietly's due probes, their weights, and the scores of their windows
    cdef list quiet_due
    cdef double quiet_weights[64]


# ScanDetector.resolve_quietly in compiled code (_resolve_quietly): the methods it mirrors, as
# the classes have them at import (a detector whose class or instance has others is weighed
# by its own resolve_quietly), and the weights and outcomes they use.
cdef tuple _QUIET_METHODS = ("resolve_quietly", "resolve", "_leave", "_judge", "_credit", "weigh")
cdef dict _QUIET_ORIGINALS = {
    cls: tuple([cls.__dict__.get(name) or getattr(cls, name) for name in _QUIET_METHODS])
    for cls in (PortScan, Sweep)
}
cdef double W_FAILED = _scan.W_FAILED
cdef object W_FAILED_OBJ = _scan.W_FAILED
cdef double W_HANDSHAKE = _scan.W_HANDSHAKE
cdef double QUIET_EPS = _scan._EPS
cdef object FAILED_OUTCOME = _scan.FAILED
cdef int PROTO_UDPLITE_C = _PROTO_UDPLITE
cdef bint quiet_known = (
    type(_scan.W_FAILED) is float and type(_scan.W_HANDSHAKE) is float
    and type(_scan._EPS) is float
)


cdef bint _quiet_methods_known(ScanProg prog):
    """Whether prog's detector resolves with the methods _resolve_quietly mirrors."""
    cls = type(prog.det)
    originals = _QUIET_ORIGINALS.get(cls)
    if originals is None or not quiet_known:
        return False
    cdef Py_ssize_t i
    for i in range(len(_QUIET_METHODS)):
        name = _QUIET_METHODS[i]
        if PyDict_Contains(prog.attrs, name):
            return False  # (an instance's own: never but in tests)
        if getattr(cls, name) is not (<tuple>originals)[i]:
            return False
    return True


cdef ScanProg _scan_prog(object det):
    """The ScanProg of a scan detector, or None when it is not what this module files in."""
    if det is None:
        return None
    attrs = getattr(det, "__dict__", None)
    if type(attrs) is not dict:
        return None
    if type(attrs.get("entries")) is not OrderedDict or type(attrs.get("index")) is not dict:
        return None
    if type(attrs.get("pending")) is not deque:
        return None
    for name in ("memory", "probes", "per_key", "evicted", "probes_skipped", "probes_dropped"):
        if type(attrs.get(name)) is not int:
            return None
    cdef ScanProg prog = ScanProg()
    prog.det = det
    prog.attrs = attrs
    prog.entries = attrs["entries"]
    prog.index = attrs["index"]
    prog.pending = attrs["pending"]
    prog.within = attrs.get("within")
    prog.memory = attrs["memory"]
    prog.probes = attrs["probes"]
    prog.per_key = attrs["per_key"]
    prog.ignore = attrs.get("ignore")
    if prog.memory < 1:
        return None  # (popitem of an empty table: Python's error)
    return prog
cdef class FamilyIndexes:
    """One family's _FamilyIndex (ips/policy/compile.py) as _flowless_rules reads it: its
    dictionaries and lookups held here, read when the policy is loaded (they are made with
    it and never replaced: a full memo is emptied in place), so that a packet reads no
    attribute of them."""
    cdef object any_proto
    cdef dict proto_bits
    cdef dict src_memo, dst_memo, sport_memo, dport_memo
    cdef object src_lookup, dst_lookup, sport_lookup, dport_lookup


cdef FamilyIndexes _family_indexes(object fx):
    """FamilyIndexes of `fx`, or None when its parts are not what this module reads."""
    cdef FamilyIndexes out = FamilyIndexes()
    out.any_proto = fx.any_proto
    if type(out.any_proto) is not int or type(fx.proto_bits) is not dict:
        return None
    out.proto_bits = fx.proto_bits
    for index in (fx.src, fx.dst, fx.sport, fx.dport):
        if type(index.memo) is not dict:
            return None
    out.src_memo = fx.src.memo
    out.dst_memo = fx.dst.memo
    out.sport_memo = fx.sport.memo
    out.dport_memo = fx.dport.memo
    out.src_lookup = fx.src.lookup
    out.dst_lookup = fx.dst.lookup
    out.sport_lookup = fx.sport.lookup
    out.dport_lookup = fx.dport.lookup
    return out


cdef double _SLOT_WIDTH = FLOW_SLOT
cdef object _NO_INTERFACE = object()  # what no interface name is (see FastPath.last_ifs)


cdef inline PyObject *_known_item(dict d, object key) except NULL:
    """d[key], borrowed (KeyError as d[key] raises it)."""
    cdef PyObject *found = PyDict_GetItem(d, key)
    if found is NULL:
        raise KeyError(key)
    return found


cdef inline int _narrow(object value, long long *out) except -1:
    """Whether `value` is an int that a long long holds (then in *out)."""
    cdef int overflow = 0
    if type(value) is not int:
        return False
    out[0] = PyLong_AsLongLongAndOverflow(value, &overflow)
    return overflow == 0


def timer_slot(double deadline):
    """_timer_slot, for tests (ips/core/flow.py's `int(deadline // _SLOT) + 1`)."""
    cdef double floordiv
    return _timer_slot(deadline, &floordiv)


cdef object _timer_slot(double deadline, double *floor_out):
    """`int(deadline // _SLOT) + 1` as ips/core/flow.py computes a flow's timer slot: the
    float floor division done as CPython's float_floor_div does it (the same operations,
    so the same double, left in *floor_out), then int(); None for a deadline int() refuses
    (not finite)."""
    cdef double mod, div, floordiv
    if not isfinite(deadline):
        return None
    mod = fmod(deadline, _SLOT_WIDTH)
    div = (deadline - mod) / _SLOT_WIDTH
    if mod:
        if (_SLOT_WIDTH < 0) != (mod < 0):
            div -= 1.0
    if div:
        floordiv = floor(div)
        if div - floordiv > 0.5:
            floordiv += 1.0
    else:
        floordiv = copysign(0.0, deadline / _SLOT_WIDTH)
    floor_out[0] = floordiv
    if not -9.0e18 < floordiv < 9.0e18:
        return PyLong_FromDouble(floordiv) + 1 if isfinite(floordiv) else None
    return PyLong_FromLongLong(<long long>floordiv + 1)  # exact: an integral double


# ips/detect/common.py's not_a_host: an IPv4 address by its first byte (NOT_A_HOST_V4),
# an IPv6 one multicast (ff00::/8), loopback or unspecified.
cdef bytes NOT_A_HOST_V4 = _detect_common.NOT_A_HOST_V4
if len(NOT_A_HOST_V4) != 256:
    raise ImportError("ips.detect.common.NOT_A_HOST_V4 is not a table of 256 bytes")
cdef bytes V6_LOOPBACK = bytes(15) + b"\x01"
cdef bytes V6_UNSPECIFIED = bytes(16)


cdef inline bint _not_a_host(bytes addr):
    cdef const uint8_t *a = <const uint8_t *>PyBytes_AS_STRING(addr)
    if PyBytes_GET_SIZE(addr) == 4:
        return (<const uint8_t *>PyBytes_AS_STRING(NOT_A_HOST_V4))[a[0]] != 0
    return a[0] == 0xFF or addr == V6_LOOPBACK or addr == V6_UNSPECIFIED


cdef type RULE = CompiledRule
cdef Py_ssize_t R_HITS = _offset(CompiledRule, "hits")
cdef type DECISION = Decision
cdef Py_ssize_t D_VERDICT = _offset(Decision, "verdict")
cdef Py_ssize_t D_EFFECTS = _offset(Decision, "effects")
cdef tuple EMPTY = ()

# A 5-tuple key is looked up in several dictionaries (the flows, each scan detector's index):
# a tuple does not keep its hash, so it is computed once and handed to each lookup, which is
# then the same lookup (CPython's own functions, private but exported; before 3.13 only).
cdef extern from *:
    """
    #if PY_VERSION_HEX < 0x030D0000
    #define ips_get_known(d, k, h) _PyDict_GetItem_KnownHash((d), (k), (h))
    #else
    #define ips_get_known(d, k, h) PyDict_GetItemWithError((d), (k))
    #endif
    """
    PyObject *ips_get_known(object d, object key, Py_hash_t h) except? NULL


# ---- the candidate cache ----------------------------------------------------------------------
# A packet of no flow finds its candidate rules as CompiledPolicy.candidate_entry finds them:
# up to six dictionary reads (the memos of its addresses, ports and interface pair, then the
# entry memoised for the bitset those make). Every read that finds its key changes nothing,
# so a packet whose reads would all find theirs can take the entry they lead to from a cache
# of this module, keyed by the packet's own dimensions, without making them: the same answer
# and, as in Python, nothing changed. Whether they would all find their keys is known
# exactly from each memo's version tag (PEP 509: every change of a dictionary gives it a new
# tag, unique among all dictionaries): a memo whose tag is the one a slot noted when it read
# the key there has not changed since; one that changed (a new key, or emptied when full)
# is read again for this key, and the slot noted afresh when it still holds the same value.
# CPython 3.12 deprecates the tag (3.14 removes it): there, this cache is not used.
cdef extern from *:
    """
    #if PY_VERSION_HEX < 0x030C0000
    #define IPS_DICT_VERSIONS 1
    static uint64_t ips_dict_version(PyObject *d) { return ((PyDictObject *)d)->ma_version_tag; }
    #else
    #define IPS_DICT_VERSIONS 0
    static uint64_t ips_dict_version(PyObject *d) { (void)d; return 0; }
    #endif
    #define IPS_CAND_SLOTS 8192  /* a power of two */
    """
    bint IPS_DICT_VERSIONS
    int IPS_CAND_SLOTS
    uint64_t ips_dict_version(PyObject *d)

cdef enum:
    # the memos a cache slot depends on (ips_cand_slot.versions)
    CAND_SRC = 0
    CAND_DST = 1
    CAND_SPORT = 2
    CAND_DPORT = 3
    CAND_IFS = 4
    CAND_ENTRY = 5
    # how far candidate_bits reads for a packet (ips_cand_slot.reads): the protocol bits
    # alone (none of its rules takes the protocol), the addresses too (none takes both),
    # or every dimension
    READS_PROTO = 0
    READS_ADDRESSES = 1
    READS_ALL = 2

cdef struct ips_cand_slot:
    PyObject *entry           # the memoised entry (a reference held); NULL: an empty slot
    PyObject *iif             # the interface pair, by identity (references held)
    PyObject *oif
    uint64_t versions[6]      # each memo's tag when the slot last found its key there
    long long values[5]       # what the memos of src, dst, sport, dport, the pair gave
    long long bits            # the bitset, the candidates memo's key
    int reads
    uint16_t sport, dport
    uint8_t proto, alen
    uint8_t src[16]
    uint8_t dst[16]


cdef extern from "<string.h>" nogil:
    int memcmp(const void *a, const void *b, size_t n)
    void *memcpy(void *dst, const void *src, size_t n)

# Whether two addresses of `n` bytes (4 or 16) are equal: fixed-size compares the compiler
# makes inline (a memcmp of a size it does not know is a call).
cdef extern from *:
    """
    static inline int ips_same_address(const void *a, const void *b, Py_ssize_t n) {
        if (n == 4) {
            uint32_t x, y;
            memcpy(&x, a, 4);
            memcpy(&y, b, 4);
            return x == y;
        }
        if (n == 16) {
            uint64_t x[2], y[2];
            memcpy(x, a, 16);
            memcpy(y, b, 16);
            return ((x[0] ^ y[0]) | (x[1] ^ y[1])) == 0;
        }
        return memcmp(a, b, (size_t)n) == 0;
    }
    """
    bint ips_same_address(const void *a, const void *b, Py_ssize_t n) nogil
    void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen)

cdef enum:
    PROTO_ICMP = 1
    PROTO_TCP = 6
    PROTO_UDP = 17
    PROTO_ICMPV6 = 58
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_ACK = 0x10
    STATE_FLAGS = 0x07
    SYN_ACK_FIN_RST = 0x17
    SYN_ACK = 0x12
    TCP_NONE = 0
    TCP_SYN_SENT = 1
    TCP_SYN_RECV = 2
    TCP_ESTABLISHED = 3
    TCP_CLOSED = 6
    TCP_CLOSING = 5
    LINKTYPE_ETHERNET = 1
    LINKTYPE_RAW = 101
    OFFLOAD_FLOW = 1
    OFFLOAD_HANDSHAKE_ACK = 2
    OFFLOAD_BARE_ACKS = 3
    # RuleProg.kind
    RULE_BAIL = 0      # reached: Python decides (a condition or an action not done here)
    RULE_NEVER = 1     # cannot match a packet of the fast path (ICMP type, fragment)
    RULE_CHECK = 2     # conditions evaluated here
    # length operators
    LEN_NONE = 0
    LEN_EQ = 1
    LEN_NE = 2
    LEN_LT = 3
    LEN_LE = 4
    LEN_GT = 5
    LEN_GE = 6
    LEN_RANGE = 7
    # RuleProg.limit_per: the key of a rule's `limit` buckets (ips/engine/engine.py _limit_key)
    LIMIT_NONE = 0
    LIMIT_SRC = 1
    LIMIT_DST = 2
    LIMIT_FLOW = 3
    LIMIT_RULE = 4
    # flood detectors counted here per packet, at most (a policy has one or two of a kind)
    MAX_FLOODS = 8
    # _probe_plan's answers: `_probe` does nothing, files the probe (in one scan at least,
    # or counts it skipped), or does what this module does not (Python)
    PLAN_NOTHING = 0
    PLAN_FILE = 1
    PLAN_PYTHON = 2
    # ScanProg.action
    SCAN_NOTHING = 0
    SCAN_SKIP = 1
    SCAN_FILE = 2

_LIMIT_PER = {"src": LIMIT_SRC, "dst": LIMIT_DST, "flow": LIMIT_FLOW, "rule": LIMIT_RULE}

# ---- token buckets --------------------------------------------------------------------------
# The detectors' floods (ips/detect/flood.py Flood.count and BucketDetector.take) and the
# rules' limits (ips/core/tables.py TokenBuckets.take) keep [tokens, last update, ...] lists of Python
# floats; this module updates them for the packets it decides, with the same double
# operations in the same order, so that both paths leave the same bits behind. The product
# is rounded before the sum, as Python rounds it: a fused multiply-add (which a compiler may
# make of `a + b * c`) rounds once and could differ in the last bit.
cdef extern from *:
    """
    static double ips_refill(double tokens, double elapsed, double rate) {
        volatile double product = elapsed * rate;
        return tokens + product;
    }
    """
    double ips_refill(double tokens, double elapsed, double rate)


cdef struct BucketUpdate:
    PyObject *bucket    # the bucket's list (borrowed: its detector's table holds it)
    double tokens       # its tokens after this packet
    bint refilled       # its last update moves to now
    PyObject *buckets   # a new key's: its detector's table (borrowed), NULL for an update
    PyObject *key       # and the key (borrowed: the packet's address)
    PyObject *attrs     # and its detector's __dict__ (borrowed: its FloodProg holds it)


cdef class FloodProg:
    """One flood detector (Flood) as this module counts its packets: Flood.count for a
    packet whose bucket exists and has a token. Read when the policy is loaded (a detector's
    rate, burst and table never change afterwards: BucketDetector empties its table in
    place)."""
    cdef dict buckets
    cdef bint per_src
    cdef double rate, burst
    cdef object ignore            # the `ignore` AddrList, or None
    cdef Py_ssize_t memory        # the keys its table holds before making room (Python's)
    cdef dict attrs               # its __dict__: `oldest_use`, which a new bucket lowers


cdef tuple _flood_progs(object floods):
    """FloodProgs of the flood detectors a PacketInterest names, or None when one of them is
    not what this module knows how to count (then their packets go to Python)."""
    progs = []
    for det in floods:
        if not isinstance(det, Flood) or type(det).count is not Flood.count or (
            type(det).take is not Flood.take
        ):
            return None  # a flood that counts otherwise: not what _floods_take mirrors
        if type(det.buckets) is not dict:
            return None
        if type(det.rate) is not float or type(det.burst) is not float:
            return None
        prog = FloodProg()
        prog.buckets = det.buckets
        prog.per_src = bool(det.per_src)
        prog.rate = det.rate
        prog.burst = det.burst
        prog.ignore = det.ignore
        prog.memory = det.memory if type(det.memory) is int else 0
        attrs = getattr(det, "__dict__", None)
        prog.attrs = attrs if type(attrs) is dict else {}
        progs.append(prog)
    if len(progs) > MAX_FLOODS:
        return None
    return tuple(progs)


cdef object _vlan_tags(const uint8_t *p, Py_ssize_t n, Py_ssize_t *off, uint16_t *etype):
    """The VLAN ids of an Ethernet frame's tags, outermost first, as ips/core/decode.py
    `_by_ethertype` peels them from `off` (whose ethertype, a tag's, is `etype`); `off` and
    `etype` moved past them. None for what it counts malformed (more than _MAX_VLAN_TAGS
    tags, a tag cut short), which is left to it."""
    cdef list tags = []
    cdef Py_ssize_t at = off[0]
    cdef uint16_t kind = etype[0]
    while kind in _VLAN_TPIDS:
        if len(tags) >= _MAX_VLAN_TAGS or at + 4 > n:
            return None
        tags.append(((p[at] << 8) | p[at + 1]) & 0x0FFF)
        kind = (p[at + 2] << 8) | p[at + 3]
        at += 4
    off[0] = at
    etype[0] = kind
    return tuple(tags)


# ---- the whole decoder, for the frames the fast decoder of _handle leaves ---------------------
# `_handle` decodes at once what most packets are (IPv4 without options, not a fragment, or
# IPv6 without extension headers; TCP, UDP, an ICMP echo). Whatever else an Ethernet or raw IP
# frame holds is decoded here as ips/core/decode.py's decode_frame decodes it (the same tests
# in the same order: the same Packet fields, or the same Malformed reason): IPv6 extension
# headers, IPv4 options, fragments, every ICMP and ICMPv6 message, the other protocols, and
# the malformed. FastPath._rest then decides what it can (_flowless_other, _decide) and
# counts the malformed as Engine._undecodable counts them.

cdef enum:
    DECODED_PACKET = 0
    DECODED_MALFORMED = 1
    DECODED_NOT_IP = 2
    DECODED_NOT_HERE = 3   # a link type this module does not read: Python's decoder
    FRAG_NONE_C = 0
    FRAG_FIRST_C = 1
    FRAG_LATER_C = 2
    PROTO_SCTP_C = 132

cdef struct ips_decoded:
    int reason            # an index of DECODE_REASONS (DECODED_MALFORMED)
    Py_ssize_t ip_at      # where the IP datagram starts in the frame
    Py_ssize_t length     # the datagram's length (Packet.length: its data, cut to it)
    Py_ssize_t vlan_at    # where the first VLAN tag starts, and how many there are
    int vlan_count
    int family, proto, sport, dport, flags, icmp_type, icmp_code, ttl, tos, frag
    Py_ssize_t l4_offset, payload_offset

# The reason codes, by index, as ips/core/decode.py spells them (its Malformed constants).
cdef tuple DECODE_REASONS = tuple(m.reason for m in (
    _decode.M_IP_TRUNCATED, _decode.M_IP_BAD_VERSION, _decode.M_IPV4_TRUNCATED,
    _decode.M_IPV4_BAD_IHL, _decode.M_IPV4_BAD_TOTAL_LENGTH, _decode.M_IPV4_BAD_OPTION,
    _decode.M_IPV4_TINY_FRAGMENT, _decode.M_IPV4_TCP_FRAG_OFFSET_1, _decode.M_IPV6_TRUNCATED,
    _decode.M_IPV6_JUMBO, _decode.M_IPV6_EXT_TRUNCATED, _decode.M_IPV6_BAD_HBH,
    _decode.M_IPV6_TOO_MANY_EXT, _decode.M_IPV6_TINY_FRAGMENT, _decode.M_TCP_TRUNCATED,
    _decode.M_TCP_BAD_DOFF, _decode.M_UDP_TRUNCATED, _decode.M_UDP_BAD_LENGTH,
    _decode.M_UDPLITE_TRUNCATED, _decode.M_SCTP_TRUNCATED, _decode.M_ICMP_TRUNCATED,
    _decode.M_ICMPV6_TRUNCATED, _decode.M_L2_TRUNCATED, _decode.M_L2_TOO_MANY_VLANS,
))

cdef enum:
    R_IP_TRUNCATED = 0
    R_IP_BAD_VERSION = 1
    R_IPV4_TRUNCATED = 2
    R_IPV4_BAD_IHL = 3
    R_IPV4_BAD_TOTAL_LENGTH = 4
    R_IPV4_BAD_OPTION = 5
    R_IPV4_TINY_FRAGMENT = 6
    R_IPV4_TCP_FRAG_OFFSET_1 = 7
    R_IPV6_TRUNCATED = 8
    R_IPV6_JUMBO = 9
    R_IPV6_EXT_TRUNCATED = 10
    R_IPV6_BAD_HBH = 11
    R_IPV6_TOO_MANY_EXT = 12
    R_IPV6_TINY_FRAGMENT = 13
    R_TCP_TRUNCATED = 14
    R_TCP_BAD_DOFF = 15
    R_UDP_TRUNCATED = 16
    R_UDP_BAD_LENGTH = 17
    R_UDPLITE_TRUNCATED = 18
    R_SCTP_TRUNCATED = 19
    R_ICMP_TRUNCATED = 20
    R_ICMPV6_TRUNCATED = 21
    R_L2_TRUNCATED = 22
    R_L2_TOO_MANY_VLANS = 23

# ips/core/decode.py's constants, read once: the extension headers it walks, and the bounds
cdef bint _EXT_KNOWN = (
    _decode._EXT_ALL == frozenset((0, 43, 60, 135, 44, 51)) and _decode._EXT_HBH == 0
    and _decode._EXT_FRAG == 44 and _decode._EXT_AH == 51 and _decode._NO_NEXT == 59
    and _decode._ETH_IPV4 == 0x0800 and _decode._ETH_IPV6 == 0x86DD
    and _decode._PORTS_ONLY == frozenset((PROTO_SCTP_C, _PROTO_UDPLITE))
    and _decode._ICMPS == frozenset((PROTO_ICMP, PROTO_ICMPV6))
)
cdef int _MAX_IPV6_EXT = _decode._MAX_IPV6_EXT


cdef inline int _malformed_at(ips_decoded *d, int reason):
    d.reason = reason
    return DECODED_MALFORMED


cdef inline int _tiny(ips_decoded *d, int family):
    return _malformed_at(d, R_IPV4_TINY_FRAGMENT if family == 4 else R_IPV6_TINY_FRAGMENT)


cdef int _ips_decode_frame(const uint8_t *p, Py_ssize_t n, int linktype, ips_decoded *d):
    """decode_frame (Engine.handle_python's decoding) of an Ethernet or raw IP frame: its
    answer's kind (DECODED_*), the Packet's fields or the reason in `d`."""
    cdef Py_ssize_t off = 0
    cdef uint16_t etype
    cdef int version
    d.vlan_count = 0
    d.vlan_at = 0
    if not _EXT_KNOWN:
        return DECODED_NOT_HERE
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            return _malformed_at(d, R_L2_TRUNCATED)
        etype = (p[12] << 8) | p[13]
        off = 14
        d.vlan_at = 14
        while _VLAN_TPID[etype]:
            if d.vlan_count >= _MAX_VLAN_TAGS:
                return _malformed_at(d, R_L2_TOO_MANY_VLANS)
            if off + 4 > n:
                return _malformed_at(d, R_L2_TRUNCATED)
            etype = (p[off + 2] << 8) | p[off + 3]
            d.vlan_count += 1
            off += 4
        if etype == 0x0800:
            version = 4
        elif etype == 0x86DD:
            version = 6
        else:
            return DECODED_NOT_IP
        # _l3_expect: the datagram must be of the version its link layer announced
        if off >= n:
            return _malformed_at(d, R_IP_TRUNCATED)
        if (p[off] >> 4) != version:
            return _malformed_at(d, R_IP_BAD_VERSION)
    elif linktype == LINKTYPE_RAW:
        # decode_l3 (and decode_ipv4, which Engine.handle_python calls for version 4)
        if n < 1:
            return _malformed_at(d, R_IP_TRUNCATED)
        version = p[0] >> 4
        if version != 4 and version != 6:
            return _malformed_at(d, R_IP_BAD_VERSION)
    else:
        return DECODED_NOT_HERE
    d.ip_at = off
    if version == 4:
        return _ips_decode_ipv4(p + off, n - off, d)
    return _ips_decode_ipv6(p + off, n - off, d)


cdef int _ips_decode_ipv4(const uint8_t *p, Py_ssize_t n, ips_decoded *d):
    """decode_ipv4."""
    cdef Py_ssize_t hl, total, i, olen
    cdef int fo, proto
    if n < 20:
        return _malformed_at(d, R_IPV4_TRUNCATED)
    hl = (p[0] & 0x0F) << 2
    if hl < 20:
        return _malformed_at(d, R_IPV4_BAD_IHL)
    total = (p[2] << 8) | p[3]
    if total < 20:
        return _malformed_at(d, R_IPV4_BAD_TOTAL_LENGTH)
    if total > n:
        return _malformed_at(d, R_IPV4_TRUNCATED)
    if hl > total:
        return _malformed_at(d, R_IPV4_BAD_IHL)
    if hl > 20:
        # _ipv4_options_ok
        i = 20
        while i < hl:
            if p[i] == 0:
                break
            if p[i] == 1:
                i += 1
                continue
            if i + 1 >= hl:
                return _malformed_at(d, R_IPV4_BAD_OPTION)
            olen = p[i + 1]
            if olen < 2 or i + olen > hl:
                return _malformed_at(d, R_IPV4_BAD_OPTION)
            i += olen
    d.family = 4
    d.length = total
    d.ttl = p[8]
    d.tos = p[1]
    proto = p[9]
    d.proto = proto
    d.sport = d.dport = d.flags = 0
    d.icmp_type = d.icmp_code = -1
    d.frag = FRAG_NONE_C
    fo = (p[6] << 8) | p[7]
    if fo & 0x3FFF:
        if fo & 0x1FFF:
            if proto == PROTO_TCP and fo & 0x1FFF == 1:
                return _malformed_at(d, R_IPV4_TCP_FRAG_OFFSET_1)
            d.frag = FRAG_LATER_C
            d.l4_offset = -1
            d.payload_offset = total
            return DECODED_PACKET
        d.frag = FRAG_FIRST_C
    if proto == PROTO_TCP:
        return _ips_decode_tcp(p, total, hl, d)
    return _ips_decode_l4(p, total, hl, d)


cdef int _ips_decode_ipv6(const uint8_t *p, Py_ssize_t n, ips_decoded *d):
    """_decode_ipv6."""
    cdef Py_ssize_t end, off, hlen
    cdef int nh, count = 0, fo
    if n < 40:
        return _malformed_at(d, R_IPV6_TRUNCATED)
    nh = p[6]
    end = (p[4] << 8) | p[5]
    if end == 0 and nh == 0:
        return _malformed_at(d, R_IPV6_JUMBO)
    end += 40
    if end > n:
        return _malformed_at(d, R_IPV6_TRUNCATED)
    d.family = 6
    d.length = end
    d.ttl = p[7]
    d.tos = ((p[0] & 0x0F) << 4) | (p[1] >> 4)
    d.sport = d.dport = d.flags = 0
    d.icmp_type = d.icmp_code = -1
    d.frag = FRAG_NONE_C
    off = 40
    while nh == 0 or nh == 43 or nh == 60 or nh == 135 or nh == 44 or nh == 51:
        count += 1
        if count > _MAX_IPV6_EXT:
            return _malformed_at(d, R_IPV6_TOO_MANY_EXT)
        if off + 8 > end:
            return _malformed_at(d, R_IPV6_EXT_TRUNCATED)
        if nh == 44:
            fo = (p[off + 2] << 8) | p[off + 3]
            nh = p[off]
            off += 8
            if fo & 0xFFF8:
                d.proto = nh
                d.frag = FRAG_LATER_C
                d.l4_offset = -1
                d.payload_offset = end
                return DECODED_PACKET
            if fo & 1:
                d.frag = FRAG_FIRST_C
            continue
        if nh == 0 and off != 40:
            return _malformed_at(d, R_IPV6_BAD_HBH)
        if nh == 51:
            hlen = (p[off + 1] + 2) << 2
        else:
            hlen = (p[off + 1] + 1) << 3
        if off + hlen > end:
            return _malformed_at(d, R_IPV6_EXT_TRUNCATED)
        nh = p[off]
        off += hlen
    d.proto = nh
    if nh == PROTO_TCP:
        return _ips_decode_tcp(p, end, off, d)
    if nh == 59:
        d.l4_offset = -1
        d.payload_offset = end
        return DECODED_PACKET
    return _ips_decode_l4(p, end, off, d)


cdef int _ips_decode_tcp(const uint8_t *p, Py_ssize_t end, Py_ssize_t off, ips_decoded *d):
    """_decode_tcp: the TCP header at `off`, of either family (a first fragment too short for
    it is the family's tiny fragment)."""
    cdef Py_ssize_t doff
    if end - off < 20:
        return _tiny(d, d.family) if d.frag else _malformed_at(d, R_TCP_TRUNCATED)
    doff = (p[off + 12] >> 4) << 2
    if doff < 20:
        return _malformed_at(d, R_TCP_BAD_DOFF)
    if off + doff > end:
        return _tiny(d, d.family) if d.frag else _malformed_at(d, R_TCP_BAD_DOFF)
    d.sport = (p[off] << 8) | p[off + 1]
    d.dport = (p[off + 2] << 8) | p[off + 3]
    d.flags = p[off + 13]
    d.l4_offset = off
    d.payload_offset = off + doff
    return DECODED_PACKET


cdef int _ips_decode_l4(const uint8_t *p, Py_ssize_t end, Py_ssize_t off, ips_decoded *d):
    """_decode_l4: the transport header at `off` (every protocol but TCP)."""
    cdef Py_ssize_t avail = end - off, hlen
    cdef int proto = d.proto, ulen
    cdef bint echo
    d.l4_offset = off
    if proto == PROTO_UDP:
        if avail < 8:
            return _tiny(d, d.family) if d.frag else _malformed_at(d, R_UDP_TRUNCATED)
        ulen = (p[off + 4] << 8) | p[off + 5]
        if ulen < 8 or (ulen > avail and not d.frag):
            return _malformed_at(d, R_UDP_BAD_LENGTH)
        d.sport = (p[off] << 8) | p[off + 1]
        d.dport = (p[off + 2] << 8) | p[off + 3]
        d.payload_offset = off + 8
        return DECODED_PACKET
    if proto == PROTO_ICMP or proto == PROTO_ICMPV6:
        if avail < 4:
            if d.frag:
                return _tiny(d, d.family)
            return _malformed_at(d, R_ICMP_TRUNCATED if proto == PROTO_ICMP else R_ICMPV6_TRUNCATED)
        d.icmp_type = p[off]
        d.icmp_code = p[off + 1]
        if proto == PROTO_ICMP:
            echo = d.icmp_type == 8 or d.icmp_type == 0
        else:
            echo = d.icmp_type == 128 or d.icmp_type == 129
        if echo:
            if avail < 8:
                if d.frag:
                    return _tiny(d, d.family)
                return _malformed_at(
                    d, R_ICMP_TRUNCATED if proto == PROTO_ICMP else R_ICMPV6_TRUNCATED)
            d.sport = d.dport = (p[off + 4] << 8) | p[off + 5]
        d.payload_offset = off + 8 if avail >= 8 else end
        return DECODED_PACKET
    if proto == PROTO_SCTP_C or proto == PROTO_UDPLITE_C:
        hlen = 12 if proto == PROTO_SCTP_C else 8
        if avail < hlen:
            if d.frag:
                return _tiny(d, d.family)
            return _malformed_at(
                d, R_SCTP_TRUNCATED if proto == PROTO_SCTP_C else R_UDPLITE_TRUNCATED)
        d.sport = (p[off] << 8) | p[off + 1]
        d.dport = (p[off + 2] << 8) | p[off + 3]
        d.payload_offset = off + hlen
        return DECODED_PACKET
    d.payload_offset = off  # (GRE, ESP, IGMP...: not parsed; the header starts here)
    return DECODED_PACKET


cdef object _decoded_vlans(const uint8_t *frame, ips_decoded *d):
    """The Packet's vlans: the ids of the frame's tags, outermost first (_by_ethertype)."""
    if d.vlan_count == 0:
        return ()
    cdef int i
    cdef Py_ssize_t at
    tags = []
    for i in range(d.vlan_count):
        at = d.vlan_at + 4 * i
        tags.append(((frame[at] << 8) | frame[at + 1]) & 0x0FFF)
    return tuple(tags)


def decode_frame_compiled(bytes data, int linktype):
    """What this module's decoder makes of a frame, for the tests that hold it to
    ips/core/decode.py's decode_frame: a Packet, the Malformed reason (a str), None (no IP),
    or NotImplemented (a link type it leaves to Python)."""
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(data)
    cdef ips_decoded d
    cdef int kind = _ips_decode_frame(p, PyBytes_GET_SIZE(data), linktype, &d)
    if kind == DECODED_NOT_HERE:
        return NotImplemented
    if kind == DECODED_NOT_IP:
        return None
    if kind == DECODED_MALFORMED:
        return DECODE_REASONS[d.reason]
    return _decoded_packet(p, &d)


cdef object _decoded_packet(const uint8_t *frame, ips_decoded *d):
    """The Packet decode_frame makes."""
    cdef const uint8_t *ip = frame + d.ip_at
    cdef Py_ssize_t alen = 4 if d.family == 4 else 16
    cdef Py_ssize_t src_at = 12 if d.family == 4 else 8
    return PACKET(
        PyBytes_FromStringAndSize(<const char *>ip, d.length), d.family,
        PyBytes_FromStringAndSize(<const char *>(ip + src_at), alen),
        PyBytes_FromStringAndSize(<const char *>(ip + src_at + alen), alen),
        d.proto, d.sport, d.dport, d.flags, d.icmp_type, d.icmp_code, d.ttl, d.tos,
        d.l4_offset, d.payload_offset, d.frag, _decoded_vlans(frame, d),
    )


cdef int _floods_take(tuple floods, object src, object dst, double now,
                      BucketUpdate *out, bint make_new=False) except -2:
    """Flood.count of every flood in `floods` for one packet, without changing anything:
    the updates to make (their number), or -1 when a bucket is missing (Python makes it) or
    has no token left (over the rate: Python alerts, limits or asks for a block). With
    `make_new`, a missing bucket is one to make (`take`'s new key: a full bucket less the
    packet's token) when its table has room (else `take` makes room first: Python); see
    _floods_apply."""
    cdef FloodProg flood
    cdef int n = 0
    cdef PyObject *found
    cdef double tokens, elapsed
    cdef bint refilled
    for flood in floods:
        key = src if flood.per_src else dst
        if flood.ignore is not None:
            # The same membership test Flood.count makes (an ignored packet is not counted).
            if src in flood.ignore or (not flood.per_src and key in flood.ignore):
                continue
        found = PyDict_GetItem(flood.buckets, key)
        if found is NULL and make_new:
            if len(flood.buckets) >= flood.memory:
                return -1
            out[n].bucket = NULL
            out[n].tokens = flood.burst - 1.0
            out[n].refilled = True
            out[n].buckets = <PyObject *>flood.buckets
            out[n].key = <PyObject *>key
            out[n].attrs = <PyObject *>flood.attrs
            n += 1
            continue
        if found is NULL or type(<object>found) is not list or PyList_GET_SIZE(<object>found) < 2:
            return -1
        first = <object>PyList_GET_ITEM(<object>found, 0)
        last = <object>PyList_GET_ITEM(<object>found, 1)
        if not PyFloat_CheckExact(first) or not PyFloat_CheckExact(last):
            return -1
        tokens = PyFloat_AS_DOUBLE(first)
        elapsed = now - PyFloat_AS_DOUBLE(last)
        refilled = False
        if elapsed > 0.0:
            tokens = ips_refill(tokens, elapsed, flood.rate)
            tokens = tokens if tokens < flood.burst else flood.burst
            refilled = True
        if not tokens >= 1.0:
            return -1
        out[n].bucket = found
        out[n].tokens = tokens - 1.0
        out[n].refilled = refilled
        out[n].buckets = NULL
        n += 1
    return n


cdef int _floods_apply(BucketUpdate *updates, int n, object now_obj) except -1:
    """The updates _floods_take planned, made: a bucket's tokens (and its last update), or a
    new key's bucket as BucketDetector.take makes it ([burst - 1, now, -inf, 0.0], at the
    end of its table, its time lowering the detector's `oldest_use` bound)."""
    cdef int i
    cdef list bucket
    cdef PyObject *oldest
    for i in range(n):
        if updates[i].buckets is not NULL:
            PyDict_SetItem(<dict>updates[i].buckets, <object>updates[i].key,
                           [updates[i].tokens, now_obj, NEG_INF, 0.0])
            oldest = PyDict_GetItem(<dict>updates[i].attrs, "oldest_use")
            if oldest is not NULL and now_obj < <object>oldest:
                (<dict>updates[i].attrs)["oldest_use"] = now_obj
            continue
        bucket = <list><object>updates[i].bucket
        bucket[0] = updates[i].tokens
        if updates[i].refilled:
            bucket[1] = now_obj
    return 0

cdef int _OFFLOAD_WHEN_APP_DONE = OFFLOAD_WHEN_APP_DONE
cdef int _OFFLOAD_LATER = OFFLOAD_LATER

# The fields of a RuleSpec this module knows; a rule whose spec sets any other (a field added
# later) goes to Python, so a new condition can never be skipped here by mistake. (`depth`
# only narrows where `contains` reads: a pattern found in the whole payload sends the packet
# to Python, which knows the depth, and one not found there is not found within it either.)
KNOWN_SPEC_FIELDS = frozenset((
    "index", "action", "span", "text", "families", "protos", "src", "dst", "sport", "dport",
    "iif", "oif", "anyif", "direction", "flags", "icmp_types", "icmp_code", "length",
    "states", "fragment", "contains", "depth", "limit", "rewrite", "reject_with", "alert", "message",
    "log", "inspect", "app", "sid", "severity", "label",
))
_LENGTH_OPS = {"=": LEN_EQ, "!=": LEN_NE, "<": LEN_LT, "<=": LEN_LE, ">": LEN_GT,
               ">=": LEN_GE, "range": LEN_RANGE}


cdef class RuleProg:
    """One candidate rule as this module runs it."""
    cdef int kind
    cdef object rule
    cdef bint terminal
    cdef object decision          # the prebuilt Decision, or None: a match goes to Python
    cdef object offload_decision
    cdef object handshake_ack_decision
    cdef object bare_acks_decision
    cdef bint accepts
    cdef bint drops               # its verdict is drop (a refused first packet leaves no flow)
    cdef bint has_flags
    cdef int flags_value, flags_mask
    cdef int length_op, length_lo, length_hi
    cdef bint has_states, want_new, want_est
    cdef tuple contains           # ((pattern, nocase), ...)
    cdef bint has_icmp            # `type`: the ICMP types (and code) it matches
    cdef uint8_t icmp_types[256]
    cdef int icmp_code            # -1: any code
    cdef int limit_per            # LIMIT_NONE, or the key of its `limit` buckets
    cdef dict limit_buckets       # its TokenBuckets' table (never replaced: emptied in place)
    cdef double limit_rate, limit_burst
    cdef Py_ssize_t limit_max_keys  # TokenBuckets.max_keys (-1: unknown, no new key here)
    cdef long long owed_hits      # hits counted here, not yet added to the rule's (_flush)


cdef RuleProg _rule_prog(object rule):
    cdef RuleProg prog = RuleProg()
    prog.rule = rule
    prog.kind = RULE_BAIL
    prog.terminal = rule.terminal
    prog.decision = rule.decision
    prog.offload_decision = rule.offload_decision
    prog.handshake_ack_decision = rule.handshake_ack_decision
    prog.bare_acks_decision = rule.bare_acks_decision
    prog.accepts = rule.verdict == ACCEPT
    prog.drops = rule.verdict == DROP and rule.refuses is True
    prog.contains = ()
    if type(rule) is not RULE:
        return prog
    for decision in (rule.decision, rule.offload_decision, rule.handshake_ack_decision,
                     rule.bare_acks_decision):
        if decision is not None and type(decision) is not DECISION:
            return prog
    spec = rule.spec
    fields = getattr(spec, "__dataclass_fields__", None)
    if fields is None:
        return prog
    for name, field in fields.items():
        if name not in KNOWN_SPEC_FIELDS and getattr(spec, name) != field.default:
            return prog
    if spec.app:
        return prog
    limiter = rule.limiter
    if (limiter is None) != (spec.limit is None):
        return prog
    if limiter is not None:
        # A `limit`: TokenBuckets.take, done here for a bucket that exists and has a token.
        if type(limiter) is not TokenBuckets or type(limiter.buckets) is not dict:
            return prog  # (a subclass may take otherwise: not what _limit_take mirrors)
        if type(limiter.rate) not in (float, int) or type(limiter.burst) is not float:
            return prog
        if rule.limit_key not in _LIMIT_PER:
            return prog
        prog.limit_per = _LIMIT_PER[rule.limit_key]
        prog.limit_buckets = limiter.buckets
        # float * int converts the int as float() does: the same double
        prog.limit_rate = float(limiter.rate)
        prog.limit_burst = limiter.burst
        max_keys = getattr(limiter, "max_keys", None)
        prog.limit_max_keys = max_keys if type(max_keys) is int and max_keys > 0 else -1
    for addr in (spec.src, spec.dst):
        if addr is not None and addr.dynamic:
            return prog
    if spec.fragment:
        # The packets of this module are not fragments: never a match.
        prog.kind = RULE_NEVER
        return prog
    prog.icmp_code = -1
    if spec.icmp_types is not None:
        # TCP and UDP packets have icmp_type -1: never a match for them.
        prog.has_icmp = True
        for itype in spec.icmp_types:
            if not 0 <= itype <= 255:
                return prog
            prog.icmp_types[itype] = 1
        if spec.icmp_code is not None:
            if not 0 <= spec.icmp_code <= 255:
                return prog
            prog.icmp_code = spec.icmp_code
    if spec.flags is not None:
        prog.has_flags = True
        prog.flags_value, prog.flags_mask = spec.flags
    if spec.length is not None:
        op, lo, hi = spec.length
        prog.length_op = _LENGTH_OPS[op]
        prog.length_lo = lo
        prog.length_hi = hi
    if spec.states is not None:
        prog.has_states = True
        prog.want_new = "new" in spec.states
        prog.want_est = "established" in spec.states
    prog.contains = tuple((bytes(p), bool(nocase)) for p, nocase in spec.contains)
    any_dynamic = (
        prog.has_flags or prog.length_op or prog.has_states or prog.contains or prog.has_icmp
    )
    if rule.check is not None and not any_dynamic:
        return prog  # the compiler checks something this module does not know of
    if rule.check is None and any_dynamic:
        return prog
    prog.kind = RULE_CHECK
    return prog


cdef inline object _handshake_choice(int kind, object plain, object handshake_ack,
                                     object bare_acks):
    """The Decision of a SYN+ACK for the offload kind `_handshake_offload` chose."""
    if kind == OFFLOAD_HANDSHAKE_ACK:
        return handshake_ack
    if kind == OFFLOAD_BARE_ACKS:
        return bare_acks
    return plain


cdef class FastPath:
    """The fast path of one Engine (made by it, refreshed at each policy load)."""

    cdef object stats
    cdef dict stats_dict
    cdef object verdicts
    cdef bint verdicts_plain  # a dict whose __setitem__ is dict's (a Counter): PyDict_SetItem
    cdef dict flows
    cdef dict nat_replies
    cdef object blocks
    cdef object policy
    cdef object blocked          # the `banned` table's members dict, or None
    cdef bint has_detect
    cdef bint detect_declared
    cdef uint8_t tcp_quiet[256]
    cdef bint udp_unreplied_busy
    # What the detectors do with the packets they look at that this module decides anyway
    # (PacketInterest): the floods it counts itself (None: it may not; Python), reflection's
    # amplifier ports, and whether a forward echo reply of an unanswered flow is wanted.
    cdef tuple udp_floods
    cdef bytes amplifier_ports
    cdef tuple echo_floods
    cdef bint echo_reply_busy
    cdef object default_decision
    cdef object default_offload  # None unless the default verdict is accept
    cdef bint default_fast       # default accept or drop (reject makes a reply: Python)
    cdef bint offload_on
    cdef double reoffload_after
    cdef dict programs           # id(candidate tuple) -> (tuple, [RuleProg])
    cdef object last_rules       # the candidate tuple of the last packet, and its program
    cdef list last_progs
    cdef object other_rules      # the one before (a flow's other direction: a ping's reply)
    cdef list other_progs
    cdef public long long fast_packets
    # Packets of no flow, refused, decided here (fast_packets counts them too).
    cdef public long long flowless_packets
    cdef public long long answers_noted  # refused packets of no flow that answered a probe
    # What a flowless packet needs (see _flowless): whether it may be decided here at all,
    # the detectors' declaration for a flow's first packet, the flow table (its __dict__: its
    # counters and queues are plain attributes), the application layer, the default's
    # Decision when it drops, and the compiled policy's index (its memos, read as
    # CompiledPolicy.candidate_bits reads them).
    cdef bint flowless_on
    cdef bytes first_tcp
    cdef tuple answer_indexes
    cdef tuple pending_probes
    cdef object note_answer
    cdef public bint answers_in_c  # PacketInterest.answers_note_outcome: note_answer done here
    cdef bint first_udp_quiet
    cdef int first_udp               # PacketInterest.first_udp (when not first_udp_quiet)
    # New probes (see _probe_plan): PacketInterest.first_syn_floods as this module counts
    # them (None: a first SYN goes to Python), the scans it files probes in (probes_in_c:
    # PacketInterest.probe_scans declared, and each is what ScanProg reads), the candidate
    # entry _flowless_rules found last (the discarded flow's cache), the flow table's id
    # mixing (FlowTable._open's flow_id), and the probes filed here.
    cdef tuple syn_floods
    cdef bint probes_in_c
    cdef bint slots_in_c             # the flow table's timer heap is a list (heapq's)
    cdef ScanProg probe_portscan, probe_sweep
    cdef object flowless_entry
    cdef dict syn_accepted           # (destination, port) of SYNs not refused (a guess)
    cdef unsigned long long id_mult, id_seed
    cdef public long long probes_filed
    cdef public long long probes_resolved  # scans whose due probes were weighed ahead here
    cdef public long long quiet_in_c       # those weighed by _resolve_quietly (not Python)
    cdef object probe_kind, probe_answer  # the plan's probe: its kind, its answer's 5-tuple
    cdef Py_hash_t probe_answer_hash
    cdef dict table
    cdef object engine_flows  # the FlowTable whose __dict__ `table` is (None with it)
    cdef object flow_timeouts
    cdef object app
    cdef object default_drop
    cdef object not_ip_decision  # Engine._not_ip, or None (Python counts not-IP frames)
    # What _rest and _flowless_other read (see _refresh_rest): whether they may decide
    # anything, the engine's Decisions of malformed frames by reason and EngineStats.malformed,
    # whether the detectors' ICMP routing is Detectors._icmp's (icmp_declared), the scans'
    # indexes an ICMP unreachable's quote is looked up in, whether `sweep` is on, and the
    # flow table's timeouts of ICMP and of the protocols without ports.
    cdef bint rest_on
    cdef dict malformed_decisions
    cdef object malformed_counts  # (a Counter: a dict subclass)
    cdef bint icmp_declared
    cdef tuple icmp_indexes
    cdef bint icmp_sweep
    cdef double icmp_timeout, other_timeout
    cdef public long long malformed_packets       # malformed frames counted here
    cdef public long long other_flowless_packets  # of flowless_packets, by _flowless_other
    cdef public long long other_flows  # accepted first packets without ports filed here
    cdef public long long compactions  # unreplied queues compacted here (_compact_unreplied)
    cdef dict families
    cdef dict if_memo
    cdef dict candidates_memo
    cdef FamilyIndexes family4, family6
    cdef double udp_new_timeout  # flow_timeouts.udp_new (FlowTimeouts is frozen)
    # Counts owed to the engine's objects: what this module counted for the packets it
    # decided since the last `_flush`, written there in one go. Nothing but this module's
    # own C code runs while anything is owed: every call out of it (into Python: the
    # engine's path, a lookup, a detector's note, a Packet made) and every return to its
    # caller flushes first, so no Python code ever reads a counter that lags.
    cdef bint owed
    cdef long long owed_packets      # EngineStats.packets
    # flows opened and discarded (_flowless): the flow table's _next_id, _created and
    # _discarded, and the stand-ins their unreplied queue has for them
    cdef long long owed_discarded
    cdef dict owed_table             # the flow table those are owed to
    cdef int owed_verdict_kinds      # EngineStats.verdicts, in the order first counted
    cdef PyObject *owed_verdicts[4]  # (references held until flushed)
    cdef long long owed_verdict_counts[4]
    cdef list owed_rules             # the RuleProgs with owed_hits
    cdef bytes last_addr, other_addr # _address's last two
    cdef list port_ints              # _port's ints (None: not made yet)
    cdef double slot_floor           # _slot_of's last answer (None: none yet)
    cdef object last_slot
    cdef bint bits_are_wide          # _flowless_rules' bitset (see _bits_start)
    cdef long long bits_narrow
    cdef object bits_wide
    cdef object last_iif, last_oif, last_ifs  # the last (iif, oif) pair, made once
    # What a handshake's answer needs (see _syn_ack): whether it may be decided here at all,
    # the detectors' declaration for reverse TCP packets (None: no detector), the default's
    # Decisions with OFFLOAD_HANDSHAKE_ACK and OFFLOAD_BARE_ACKS, and the flow table's
    # timeout of state SYN_RECV.
    cdef public bint syn_ack_on
    cdef bytes reverse_tcp_quiet
    cdef object default_handshake_ack
    cdef object default_bare_acks
    cdef object syn_recv_timeout
    cdef public long long syn_ack_packets  # handshake answers decided here
    # With application parsing on: the inspector's state of a TCP flow without payload yet
    # (AppInspector.tcp_quiet_state; None: such flows' answers go to Python), the offset of
    # its server_base slot, and the bytes under which offload_kind's app_reading holds a
    # flow back (the policy's app-stream-bytes x APP_OFFLOAD_WAIT).
    cdef type quiet_state
    cdef Py_ssize_t quiet_server_base
    # A quiet flow's first payload that names it unknown (AppInspector._first_payload),
    # decided here (`_first_payload_unknown`) when first_unknown_on: the inspector is
    # AppInspector with the counters and reassembler this module reads; the offset of the
    # quiet state's client_base slot (the server's is quiet_server_base).
    cdef public bint first_unknown_on
    cdef Py_ssize_t quiet_client_base
    cdef public long long first_unknown_packets  # such first payloads decided here
    cdef object app_reading_bytes
    # The flow table's timeout of state ESTABLISHED, its handshakes and their bound
    # (FlowTable._handshake), for a handshake's last ACK.
    cdef object est_timeout
    cdef object handshakes      # an OrderedDict
    # The candidate cache (see ips_cand_slot; NULL: not used), its hits, and whether the
    # last _candidate_entry read a memo that missed its key (Python's lookup ran).
    cdef ips_cand_slot *cand_slots
    cdef public long long cand_hits
    cdef bint memo_missed
    # The flow table's attributes as _table_view read them last (borrowed references)
    cdef uint64_t table_version
    cdef PyObject *table_opened
    cdef PyObject *table_active
    cdef PyObject *table_max_flows
    cdef PyObject *table_tcp_timeouts
    cdef PyObject *table_wheel
    cdef PyObject *table_unreplied
    cdef bint cand_narrow            # every value _candidate_lookup read fits a long long
    cdef int cand_reads              # how far it read (READS_*)
    cdef long long cand_values[5]    # the values it read (CAND_SRC ... CAND_IFS)
    # What an accepted SYN's flow needs (see _syn_first): whether it may be filed here at
    # all, the flow table's timeout of state SYN_SENT, whether the default accepts (with a
    # prebuilt Decision), and with application parsing on, the inspector's quiet state
    # (AppInspector.tcp_quiet_state: None, such SYNs go to Python) and its slots' offsets.
    cdef public bint syn_first_on
    # Whether a refused first datagram detected as DNS is read without the Flow and the
    # inspector's state (_inspect_refused_dns; False: _inspect_refused_first, for the tests
    # that hold the two together)
    cdef public bint refused_dns_on
    cdef public long long refused_dns  # refused first DNS datagrams read so
    # What the inspector left on a refused UDP flow that a new scan probe keeps (set only
    # around that probe's filing: _refused_flow reads them; None otherwise)
    cdef object refused_app
    cdef object refused_app_proto
    cdef int refused_icmp  # Flow.icmp of the flow _refused_flow makes (-1 but for ICMP)
    cdef public long long refused_hellos  # refused first ClientHellos read so
    cdef public long long refused_requests  # refused first HTTP segments read so
    cdef object syn_sent_timeout
    cdef bint default_accepts
    cdef type syn_quiet_state
    cdef Py_ssize_t quiet_client_base_at, quiet_server_base_at
    cdef Py_ssize_t quiet_client_fin_at, quiet_server_fin_at
    cdef public long long syn_flows  # accepted SYNs whose flow was filed here
    # _walk's answer
    cdef RuleProg walk_matched
    cdef object walk_bucket
    # A `limit` bucket the walk would make (a new key: _limit_new_key), when walk_new_keys
    cdef bint walk_new_keys
    cdef bint walk_frag  # the packet walked is a first fragment (`fragment` rules: Python)
    cdef dict walk_new_buckets
    cdef object walk_new_key
    cdef double walk_new_tokens
    cdef double walk_tokens

    def __init__(self, engine, double reoffload_after):
        # The engine itself is not kept: it holds this object, and a cycle would leave both
        # to the garbage collector (tests/pure/test_heap.py); what is kept are its parts.
        self.reoffload_after = reoffload_after
        self.refused_dns_on = True
        self.refused_dns = 0
        self.refused_hellos = 0
        self.refused_requests = 0
        self.refused_icmp = -1
        self.programs = {}
        self.fast_packets = 0
        self.flowless_packets = 0
        self.answers_noted = 0
        self.owed_rules = []
        self.last_iif = self.last_oif = _NO_INTERFACE  # (no pair made yet)
        self.port_ints = [None] * 65536
        self.syn_ack_packets = 0
        self.first_unknown_packets = 0
        self.probes_filed = 0
        self.probes_resolved = 0
        self.cand_hits = 0
        self.quiet_in_c = 0
        if IPS_DICT_VERSIONS:
            self.cand_slots = <ips_cand_slot *>PyMem_Calloc(IPS_CAND_SLOTS, sizeof(ips_cand_slot))
        _bind_meta()
        self.refresh(engine)

    def __dealloc__(self):
        self._cand_clear()
        PyMem_Free(self.cand_slots)
        self.cand_slots = NULL

    cdef int _cand_clear(self) except -1:
        """Every slot of the candidate cache emptied (a new policy: other memos)."""
        cdef Py_ssize_t i
        cdef ips_cand_slot *slot
        if self.cand_slots is NULL:
            return 0
        for i in range(IPS_CAND_SLOTS):
            slot = &self.cand_slots[i]
            if slot.entry is not NULL:
                Py_XDECREF(slot.entry)
                Py_XDECREF(slot.iif)
                Py_XDECREF(slot.oif)
                slot.entry = slot.iif = slot.oif = NULL
        return 0

    def refresh(self, engine):
        """Read the engine's state again (its policy was loaded)."""
        self._flush()  # (nothing is owed when called from Python: a habit kept)
        self.stats = engine.stats
        # EngineStats is a plain dataclass: its counters live in its __dict__
        self.stats_dict = engine.stats.__dict__
        self.verdicts = engine.stats.verdicts
        self.verdicts_plain = (isinstance(self.verdicts, dict)
                               and type(self.verdicts).__setitem__ is dict.__setitem__)
        self.flows = engine.flows._flows
        self.nat_replies = engine._nat_replies
        self.blocks = engine.blocks
        self.policy = engine.policy
        table = engine._blocked_table
        self.blocked = table.members if table is not None else None
        detect = engine.detect
        self.has_detect = detect is not None
        self.detect_declared = True
        self.udp_unreplied_busy = False
        self.udp_floods = ()
        self.amplifier_ports = None
        self.echo_floods = ()
        self.echo_reply_busy = False
        cdef int i
        for i in range(256):
            self.tcp_quiet[i] = 1
        if detect is not None:
            interest = getattr(detect, "interest", None)
            if interest is None:
                self.detect_declared = False
            else:
                for i in range(256):
                    self.tcp_quiet[i] = 1 if interest.tcp_quiet[i] else 0
                self.udp_unreplied_busy = bool(interest.udp_unreplied)
                self.udp_floods = _flood_progs(interest.udp_floods)
                ports = interest.amplifier_ports
                if ports is not None and (type(ports) is not bytes or len(ports) != 65536):
                    self.udp_floods = None  # not the table this module reads: Python
                    ports = None
                self.amplifier_ports = ports
                self.echo_floods = _flood_progs(interest.echo_floods)
                self.echo_reply_busy = bool(interest.echo_reply_unanswered)
        self.default_decision = engine._default
        self.default_offload = engine._default_offload
        verdict = engine._default.verdict
        self.default_fast = (verdict == ACCEPT or verdict == DROP) and (
            type(engine._default) is DECISION
            and (self.default_offload is None or type(self.default_offload) is DECISION)
        )
        self.offload_on = bool(engine.policy.offload)
        self._refresh_flowless(engine)
        self._refresh_rest(engine)
        self._refresh_syn_ack(engine)
        self._refresh_syn_first(engine)
        self.programs = {}
        self.last_rules = None
        self.last_progs = None
        self.other_rules = None
        self.other_progs = None

    cdef _refresh_flowless(self, engine):
        """What _flowless and _not_ip read, checked to be what they mirror; flowless_on False
        (every packet of no flow goes to Python) or not_ip_decision None (every frame that
        is not IP goes to Python) when anything is not."""
        self._cand_clear()
        self.table_opened = NULL  # (the table's view read again: _table_view)
        self.flowless_on = False
        self.table = None
        self.engine_flows = None
        self.slots_in_c = False
        self.not_ip_decision = None
        self.first_tcp = None
        self.answer_indexes = ()
        self.pending_probes = ()
        self.note_answer = None
        self.first_udp_quiet = False
        self.first_udp = FIRST_BUSY
        self.syn_floods = ()
        self.syn_accepted = {}  # (a new policy: guessed afresh)
        self.probes_in_c = False
        self.probe_portscan = self.probe_sweep = None
        self.default_drop = None
        # ---- the flow table: its counters and queues are plain attributes
        flows = engine.flows
        if type(flows) is not FLOW_TABLE or type(flows.__dict__) is not dict:
            return
        table = flows.__dict__
        if "_opened" not in table:
            return
        for name in ("_next_id", "_created", "_discarded", "_active", "max_flows"):
            if type(table.get(name)) is not int:
                return
        if type(table.get("_tcp_timeouts")) is not tuple or type(table.get("_wheel")) is not dict:
            return
        if type(table.get("_unreplied")) is not deque or type(flows.timeouts) is not FlowTimeouts:
            return
        self.table = table
        self.engine_flows = flows
        self.flow_timeouts = flows.timeouts
        self.slots_in_c = type(table.get("_slots")) is list
        not_ip = engine._not_ip
        if type(not_ip) is DECISION and type(self.stats_dict.get("not_ip")) is int:
            self.not_ip_decision = not_ip
        # ---- the detectors' declaration for a flow's first packet
        detect = engine.detect
        if detect is not None:
            interest = getattr(detect, "interest", None)
            if interest is None:
                return
            first_tcp = interest.first_tcp
            if first_tcp is not None and (type(first_tcp) is not bytes or len(first_tcp) != 256):
                return
            indexes = tuple(interest.answer_indexes)
            for index in indexes:
                if type(index) is not dict:
                    return
            pendings = tuple(interest.pending_probes)
            for pending in pendings:
                if type(pending) is not deque:
                    return
            self.first_tcp = first_tcp
            self.answer_indexes = indexes
            self.pending_probes = pendings
            # (a bound method held here, not in the declaration: Detectors holds that, and
            # a method of its own there would be a reference cycle, garbage at each load)
            self.note_answer = getattr(detect, "note_answer", None)
            self.answers_in_c = bool(getattr(interest, "answers_note_outcome", False))
            self.first_udp_quiet = bool(interest.first_udp_quiet)
            first_udp = getattr(interest, "first_udp", FIRST_BUSY)
            self.first_udp = first_udp if type(first_udp) is int else FIRST_BUSY
            self.syn_floods = _flood_progs(getattr(interest, "first_syn_floods", ()))
            self._refresh_probes(interest, table)
        else:
            self.first_tcp = bytes(256)  # no detector: nothing to do with any first packet
            self.first_udp_quiet = True
        # ---- the policy: its candidates found as CompiledPolicy finds them, its default
        policy = engine.policy
        if type(policy) is not COMPILED_POLICY:
            return  # (a subclass may find its candidates otherwise)
        default = engine._default
        if type(default) is DECISION and default.verdict == DROP and engine._default_refuses:
            self.default_drop = default
        self.app = engine.app
        self.families = policy._families
        self.family4 = _family_indexes(policy._families[4])
        self.family6 = _family_indexes(policy._families[6])
        if self.family4 is None or self.family6 is None:
            return
        if type(self.flow_timeouts.udp_new) not in (float, int):
            return
        self.udp_new_timeout = self.flow_timeouts.udp_new
        self.if_memo = policy._if_memo
        self.candidates_memo = policy._candidates_memo
        self.flowless_on = True

    cdef _refresh_rest(self, engine):
        """What _rest, _malformed_frame and _flowless_other read, checked to be what they
        mirror (after _refresh_flowless); rest_on False (every frame `_handle`'s own decoder
        leaves is decided by Python, decoded here when it can be) when anything is not."""
        self.rest_on = False
        self.malformed_decisions = None
        self.malformed_counts = None
        self.icmp_declared = False
        self.icmp_indexes = ()
        self.icmp_sweep = False
        malformed = engine._malformed
        counts = engine.stats.malformed
        if type(malformed) is dict and type(counts) is Counter:
            self.malformed_decisions = malformed
            self.malformed_counts = counts
        detect = engine.detect
        if detect is not None:
            # Detectors._icmp routes the messages by type as _icmp_busy reads it (a subclass
            # may not); the scans' indexes are those `_answer` looks a quote up in
            interest = getattr(detect, "interest", None)
            if type(detect) is not _detectors.Detectors or interest is None:
                return
            indexes = tuple(interest.answer_indexes)
            if tuple(scan.index for scan in detect.scans) != indexes or any(
                type(index) is not dict for index in indexes
            ):
                return
            self.icmp_indexes = indexes
            self.icmp_sweep = detect.sweep is not None
            if bool(self.echo_reply_busy) != (detect.reflection is not None):
                return
        self.icmp_declared = True
        timeouts = self.flow_timeouts
        if timeouts is None or type(timeouts.icmp) not in (float, int) or type(
            timeouts.other
        ) not in (float, int):
            return
        self.icmp_timeout = timeouts.icmp
        self.other_timeout = timeouts.other
        self.rest_on = True

    cdef _refresh_probes(self, interest, dict table):
        """Whether _flowless may file a new probe itself (probes_in_c), and what it files in:
        the scans PacketInterest.probe_scans names, each the ScanProg of the detector whose
        index and queue answer_indexes and pending_probes hold, in that order."""
        scans = getattr(interest, "probe_scans", None)
        if not probes_known or type(scans) is not tuple or len(<tuple>scans) != 2:
            return
        portscan, sweep = scans
        if portscan is not None and type(portscan) is not PortScan:
            return
        if sweep is not None and type(sweep) is not Sweep:
            return
        progs = [_scan_prog(det) for det in scans if det is not None]
        if None in progs or not progs:
            return
        indexes = tuple([(<ScanProg>prog).index for prog in progs])
        pendings = tuple([(<ScanProg>prog).pending for prog in progs])
        if len(indexes) != len(self.answer_indexes) or len(pendings) != len(self.pending_probes):
            return
        cdef Py_ssize_t i
        for i in range(len(indexes)):
            if indexes[i] is not self.answer_indexes[i] or pendings[i] is not self.pending_probes[i]:
                return
        mult = table.get("_id_mult")
        seed = table.get("_id_seed")
        if type(mult) is not int or type(seed) is not int or not (0 <= mult < 2 ** 63) or not (
            0 <= seed < 2 ** 63
        ) or _FLOW_ID_MASK != 2 ** 53 - 1:
            return
        self.id_mult = mult
        self.id_seed = seed
        if portscan is not None:
            self.probe_portscan = progs[0]
            self.probe_portscan.by_host = True
        if sweep is not None:
            self.probe_sweep = progs[len(progs) - 1]
            self.probe_sweep.by_host = False
        self.probes_in_c = True

    cdef _refresh_syn_ack(self, engine):
        """What _syn_ack reads, checked to be what it mirrors; syn_ack_on False (every
        handshake answer goes to Python) when anything is not."""
        self.syn_ack_on = False
        self.reverse_tcp_quiet = None
        self.default_handshake_ack = None
        self.default_bare_acks = None
        self.syn_recv_timeout = None
        self.quiet_state = None
        self.app_reading_bytes = None
        self.first_unknown_on = False
        if self.table is None:
            return  # the flow table is not the one this module reads (_refresh_flowless)
        timeouts = self.table["_tcp_timeouts"]
        if len(timeouts) <= TCP_ESTABLISHED or type(timeouts[TCP_SYN_RECV]) is not float or (
            type(timeouts[TCP_ESTABLISHED]) is not float
        ):
            return
        handshakes = engine.flows.handshakes
        if type(handshakes) is not OrderedDict or type(HANDSHAKE_MEMORY) is not int:
            return
        if FLOW_SLOT != 1.0:
            return  # _syn_ack's timer slot is computed for slots of one second
        detect = engine.detect
        if detect is not None:
            interest = getattr(detect, "interest", None)
            if interest is None:
                return  # a detector that declares nothing (volume): every packet is observed
            quiet = getattr(interest, "reverse_tcp_quiet", None)
            if type(quiet) is not bytes or len(quiet) != 256:
                return
            self.reverse_tcp_quiet = quiet
        policy = engine.policy
        if type(policy) is not COMPILED_POLICY:
            return  # (a subclass may find its candidates otherwise)
        handshake = engine._default_handshake_ack
        bare_acks = engine._default_bare_acks
        if type(handshake) is not DECISION or type(bare_acks) is not DECISION:
            return
        self.default_handshake_ack = handshake
        self.default_bare_acks = bare_acks
        self.syn_recv_timeout = timeouts[TCP_SYN_RECV]
        self.est_timeout = timeouts[TCP_ESTABLISHED]
        self.handshakes = engine.flows.handshakes
        self.app = engine.app
        quiet = getattr(engine.app, "tcp_quiet_state", None)
        limit = policy.policy.app_stream_bytes
        if type(quiet) is type and type(limit) is int:
            try:
                self.quiet_server_base = _offset(quiet, "server_base")
                from ips.engine.offload import APP_OFFLOAD_WAIT  # (the engine imports this module)
                self.app_reading_bytes = limit * APP_OFFLOAD_WAIT
                self.quiet_state = quiet
                self.quiet_client_base = _offset(quiet, "client_base")
                self.first_unknown_on = type(engine.app) is APP_INSPECTOR
            except ImportError:
                pass  # not the slots this module writes: such flows' answers go to Python
        self.families = policy._families
        self.if_memo = policy._if_memo
        self.candidates_memo = policy._candidates_memo
        self.syn_ack_on = True

    cdef list _program(self, tuple rules):
        if rules is self.last_rules:  # consecutive packets of one flow, or flows alike
            return self.last_progs
        if rules is self.other_rules:  # the two directions of one flow, in turn
            progs = self.other_progs
        else:
            progs = self._lookup_program(rules)
        self.other_rules = self.last_rules
        self.other_progs = self.last_progs
        self.last_rules = rules
        self.last_progs = progs
        return progs

    cdef list _lookup_program(self, tuple rules):
        cdef PyObject *found = PyDict_GetItem(self.programs, id(rules))
        if found is not NULL:
            pair = <tuple>found
            if pair[0] is rules:
                return <list>pair[1]
        self._flush()
        progs = [_rule_prog(rule) for rule in rules]
        if len(self.programs) >= 65536:
            self.programs = {}
        self.programs[id(rules)] = (rules, progs)
        return progs

    def handle(self, data, meta, now):
        """The Decision of `data` (bytes, as Engine.handle takes them) when the fast path
        may decide it, with everything counted. Otherwise nothing is changed, and the answer
        is the packet decoded (a `Packet`, as ips/core/decode.py makes it: the engine decides
        it with `handle_packet`), or None when this module does not decode it (the engine
        decodes it itself)."""
        if type(data) is not bytes:
            return None
        linktype = _get(meta, M_LINKTYPE) if type(meta) is META else meta.linktype
        try:
            return self._handle(<const uint8_t *>PyBytes_AS_STRING(data),
                                PyBytes_GET_SIZE(data), linktype, meta, now)
        finally:
            self._flush()

    def flush(self):
        """Write what is owed (see `_flush`); for tests, which look at it between packets
        fed to `run_pcap`'s parts."""
        self._flush()

    cdef bint _reused(self, object flow) except -1:
        """FlowTable.open's port reuse, for a SYN (no ACK) on `flow`'s tuple: when the flow is
        closing or closed, or offloaded (the engine saw none of its end), the table ends it
        (`_reuse`: removed, counted, kept for the tick's flow end) and True. False: nothing
        done (an open flow not settled yet, which open settles first: Python)."""
        if type(flow) is not FLOW or self.engine_flows is None:
            return False
        if not (_get(flow, F_TCP_STATE) >= TCP_CLOSING or _get(flow, F_OFFLOADED)):
            return False
        if self.table["_opened"] is not None:
            return False
        self._flush()  # (what is owed to the table first: _reuse is Python)
        self.engine_flows._reuse(flow)
        return True

    cdef int _table_view(self) except -1:
        """The flow table's attributes _flowless reads (table_*: borrowed from its __dict__,
        valid while that dictionary's version tag is table_version), read again when it
        changed (see ips_cand_slot: a dictionary's tag changes with any change of it)."""
        cdef dict table = self.table
        cdef uint64_t version = ips_dict_version(<PyObject *>table)
        if IPS_DICT_VERSIONS and version == self.table_version and self.table_opened is not NULL:
            return 0
        self.table_opened = _known_item(table, "_opened")
        self.table_active = _known_item(table, "_active")
        self.table_max_flows = _known_item(table, "max_flows")
        self.table_tcp_timeouts = _known_item(table, "_tcp_timeouts")
        self.table_wheel = _known_item(table, "_wheel")
        self.table_unreplied = _known_item(table, "_unreplied")
        self.table_version = version
        return 0

    cdef int _flush(self) except -1:
        """Write the counts owed to the engine's objects (see `owed`)."""
        if self.owed:
            self._write_owed()
        return 0

    cdef int _write_owed(self) except -1:
        cdef PyObject *found
        cdef int i
        cdef long long n
        cdef RuleProg prog
        self.owed = False
        counts = self.stats_dict
        if self.owed_packets:
            n = self.owed_packets
            self.owed_packets = 0
            counts["packets"] = counts["packets"] + n
        if self.owed_discarded:
            n = self.owed_discarded
            self.owed_discarded = 0
            table = self.owed_table
            self.owed_table = None
            table["_next_id"] = table["_next_id"] + n
            table["_created"] = table["_created"] + n
            table["_discarded"] = table["_discarded"] + n
            unreplied = table["_unreplied"]
            unreplied.extend((GONE_STAND_IN,) * n)  # (appended one by one: the same)
        verdicts = self.verdicts
        for i in range(self.owed_verdict_kinds):
            verdict = <object>self.owed_verdicts[i]
            n = self.owed_verdict_counts[i]
            found = PyDict_GetItem(verdicts, verdict)
            # PyDict_SetItem, as Counter's own __setitem__ is dict's: Counter's __delitem__
            # shares that slot, so `verdicts[verdict] =` went through a method lookup and a
            # wrapper call, a few µs on cold caches
            if self.verdicts_plain:
                PyDict_SetItem(verdicts, verdict, n if found is NULL else <object>found + n)
            else:
                verdicts[verdict] = n if found is NULL else <object>found + n
            Py_DECREF(verdict)  # the reference owed_verdicts held
            self.owed_verdicts[i] = NULL
        self.owed_verdict_kinds = 0
        if self.owed_rules:
            rules = self.owed_rules
            self.owed_rules = []
            for prog in rules:
                rule = prog.rule
                n = prog.owed_hits
                prog.owed_hits = 0
                _set(rule, R_HITS, _get(rule, R_HITS) + n)
        return 0

    cdef inline object _memo_or_lookup(self, dict memo, object lookup, object key):
        """A dimension's candidate bits for key, as CompiledPolicy.candidate_bits reads
        them: its memo, else its lookup (Python, which memoises: nothing owed then)."""
        cdef PyObject *found = PyDict_GetItem(memo, key)
        if found is not NULL:
            return <object>found
        self._flush()
        self.memo_missed = True
        return lookup(key)

    # The candidate bitset of _flowless_rules, made as CompiledPolicy.candidate_bits makes
    # it (the same values combined by | and &: the same int), in a C integer while every
    # value fits one (a policy of fewer than 64 rules; an interface bitset's complement is
    # a negative int, in two's complement as Python's & reads it), else in Python ints.
    cdef inline int _bits_start(self, object value) except -1:
        self.bits_are_wide = False
        self.bits_narrow = 0
        self.bits_wide = None
        return self._bits_or(value)

    cdef inline int _bits_or(self, object value) except -1:
        cdef long long narrow
        if not self.bits_are_wide and _narrow(value, &narrow):
            self.bits_narrow |= narrow
        else:
            self._bits_widen()
            self.bits_wide = self.bits_wide | value
        return 0

    cdef inline int _bits_and(self, object value) except -1:
        cdef long long narrow
        if not self.bits_are_wide and _narrow(value, &narrow):
            self.bits_narrow &= narrow
        else:
            self._bits_widen()
            self.bits_wide = self.bits_wide & value
        return 0

    cdef inline int _bits_widen(self) except -1:
        if not self.bits_are_wide:
            self.bits_wide = PyLong_FromLongLong(self.bits_narrow)
            self.bits_are_wide = True
        return 0

    cdef inline bint _bits_nonzero(self):
        return bool(self.bits_wide) if self.bits_are_wide else self.bits_narrow != 0

    cdef object _slot_of(self, double deadline):
        """_timer_slot(deadline), the last answer kept: with slots of one second, that
        division is floor() (fmod by 1.0 and the subtraction are exact), so every deadline
        in [slot_floor, slot_floor + 1) has the same slot."""
        cdef double floordiv
        if self.last_slot is not None and (
            self.slot_floor <= deadline < self.slot_floor + 1.0
        ):
            return self.last_slot
        slot = _timer_slot(deadline, &floordiv)
        if _SLOT_WIDTH == 1.0 and slot is not None:
            self.slot_floor = floordiv
            self.last_slot = slot
        return slot

    cdef inline object _address(self, const uint8_t *at, Py_ssize_t size):
        """The bytes of an address: one of the last two made when it is the same (a scan,
        a flow's two directions: the object and its hash made once; bytes do not change)."""
        cdef bytes known = self.last_addr
        if known is not None and PyBytes_GET_SIZE(known) == size and (
            ips_same_address(PyBytes_AS_STRING(known), at, size)
        ):
            return known
        known = self.other_addr
        if known is not None and PyBytes_GET_SIZE(known) == size and (
            ips_same_address(PyBytes_AS_STRING(known), at, size)
        ):
            self.other_addr = self.last_addr
            self.last_addr = known
            return known
        made = PyBytes_FromStringAndSize(<const char *>at, size)
        self.other_addr = self.last_addr
        self.last_addr = made
        return made

    cdef inline object _port(self, int port):
        """The int of a port (0..65535), each made once (ints do not change)."""
        cdef PyObject *known = PyList_GET_ITEM(self.port_ints, port)
        if <object>known is not None:
            return <object>known
        made = port
        self.port_ints[port] = made
        return made

    cdef inline int _owe_hit(self, RuleProg prog) except -1:
        """The rule's `hits` + 1 (owed)."""
        if prog.owed_hits == 0:
            self.owed_rules.append(prog)
        prog.owed_hits += 1
        self.owed = True
        return 0

    cdef object _handle(self, const uint8_t *p, Py_ssize_t n, int linktype, object meta,
                        object now_obj):
        cdef Py_ssize_t off = 0
        cdef int proto, family, sport, dport, flags = 0, doff, hl
        cdef int icmp_type = -1, icmp_code = -1
        cdef Py_ssize_t total, payload_offset, ulen
        cdef Py_ssize_t addr_len, src_off, dst_off
        cdef int ttl, tos
        cdef uint16_t etype
        cdef object vlans = ()
        # (the frame as given: what this decoder leaves, `_rest` decodes whole)
        cdef const uint8_t *frame = p
        cdef Py_ssize_t frame_n = n
        if linktype == LINKTYPE_ETHERNET:
            if n < 14:
                return self._rest(frame, frame_n, linktype, meta, now_obj)
            etype = (p[12] << 8) | p[13]
            off = 14
            if _VLAN_TPID[etype]:
                vlans = _vlan_tags(p, n, &off, &etype)
                if vlans is None:
                    return self._rest(frame, frame_n, linktype, meta, now_obj)  # malformed
            if etype != 0x0800 and etype != 0x86DD:
                return self._not_ip()
            p += off
            n -= off
            if n < 1 or (p[0] >> 4) != (4 if etype == 0x0800 else 6):
                return self._rest(frame, frame_n, linktype, meta, now_obj)
        elif linktype != LINKTYPE_RAW:
            return None
        if n < 20:
            return self._rest(frame, frame_n, linktype, meta, now_obj)
        # ---- decode: only what the Python decoder accepts without a second look
        if (p[0] >> 4) == 4:
            family = 4
            if (p[0] & 0x0F) != 5:
                return self._rest(frame, frame_n, linktype, meta, now_obj)  # options
            total = (p[2] << 8) | p[3]
            if total < 20 or total > n:
                return self._rest(frame, frame_n, linktype, meta, now_obj)
            if ((p[6] << 8) | p[7]) & 0x3FFF:
                return self._rest(frame, frame_n, linktype, meta, now_obj)  # a fragment
            proto = p[9]
            hl = 20
        elif (p[0] >> 4) == 6:
            family = 6
            if n < 40:
                return self._rest(frame, frame_n, linktype, meta, now_obj)
            ulen = (p[4] << 8) | p[5]
            if ulen == 0:
                return self._rest(frame, frame_n, linktype, meta, now_obj)
            total = 40 + ulen
            if total > n:
                return self._rest(frame, frame_n, linktype, meta, now_obj)
            proto = p[6]
            hl = 40
        else:
            return self._rest(frame, frame_n, linktype, meta, now_obj)
        if proto == PROTO_TCP:
            if total - hl < 20:
                return self._rest(frame, frame_n, linktype, meta, now_obj)
            doff = (p[hl + 12] >> 4) << 2
            if doff < 20 or hl + doff > total:
                return self._rest(frame, frame_n, linktype, meta, now_obj)
            flags = p[hl + 13]
            payload_offset = hl + doff
        elif proto == PROTO_UDP:
            if total - hl < 8:
                return self._rest(frame, frame_n, linktype, meta, now_obj)
            ulen = (p[hl + 4] << 8) | p[hl + 5]
            if ulen < 8 or ulen > total - hl:
                return self._rest(frame, frame_n, linktype, meta, now_obj)
            payload_offset = hl + 8
        elif proto == (PROTO_ICMP if family == 4 else PROTO_ICMPV6):
            # Echo requests and replies here: the identifier is in both port fields (the
            # flow's key), as ips/core/decode.py puts it. Other ICMP messages: `_rest`.
            if total - hl < 8:
                return self._rest(frame, frame_n, linktype, meta, now_obj)
            icmp_type = p[hl]
            icmp_code = p[hl + 1]
            if family == 4:
                if icmp_type != 8 and icmp_type != 0:
                    return self._rest(frame, frame_n, linktype, meta, now_obj)
            elif icmp_type != 128 and icmp_type != 129:
                return self._rest(frame, frame_n, linktype, meta, now_obj)
            payload_offset = hl + 8
        else:
            return self._rest(frame, frame_n, linktype, meta, now_obj)
        if icmp_type >= 0:
            sport = dport = (p[hl + 4] << 8) | p[hl + 5]
        else:
            sport = (p[hl] << 8) | p[hl + 1]
            dport = (p[hl + 2] << 8) | p[hl + 3]
        addr_len = 4 if family == 4 else 16
        src_off = 12 if family == 4 else 8
        dst_off = 16 if family == 4 else 24
        src = self._address(p + src_off, addr_len)
        dst = self._address(p + dst_off, addr_len)
        decision = self._decide(p, proto, total, payload_offset, sport, dport, flags, icmp_type,
                                icmp_code, src, dst, meta, now_obj)
        if decision is not None:
            return decision
        # Not for this path: the packet as the Python decoder makes it, for the engine.
        self._flush()  # (Packet.__init__ is Python)
        if family == 4:
            ttl = p[8]
            tos = p[1]
        else:
            ttl = p[7]
            tos = ((p[0] & 0x0F) << 4) | (p[1] >> 4)
        return PACKET(PyBytes_FromStringAndSize(<const char *>p, total), family, src, dst, proto,
                      sport, dport, flags, icmp_type, icmp_code, ttl, tos, hl, payload_offset, 0,
                      vlans)

    cdef object _decide(self, const uint8_t *p, int proto, Py_ssize_t total,
                        Py_ssize_t payload_offset, int sport, int dport, int flags,
                        int icmp_type, int icmp_code, object src, object dst, object meta,
                        object now_obj):
        """The Decision of a decoded TCP, UDP or ICMP echo packet, counted; None: nothing
        changed."""
        cdef double now = now_obj
        # ---- blocks and translations
        if self.blocked is not None and self.blocked:
            expiry = self.blocked.get(src)
            if expiry is not None and expiry > now_obj:
                return None
        cdef bint meta_slots = type(meta) is META
        mac = _get(meta, M_MAC) if meta_slots else meta.mac
        if mac is not None and self.blocks.macs:
            return None
        if self.nat_replies:
            return None
        # ---- the flow
        py_sport = self._port(sport)
        py_dport = self._port(dport)
        key = (proto, src, py_sport, dst, py_dport)
        cdef Py_hash_t key_hash = hash(key)
        cdef PyObject *found = ips_get_known(self.flows, key, key_hash)
        if found is NULL:
            if proto != PROTO_TCP and proto != PROTO_UDP:
                # an ICMP message (`_rest` and the echoes of `_handle`'s decoder)
                return self._flowless_other(p, proto, total, payload_offset, flags, False,
                                            icmp_type, icmp_code, src, dst, py_sport, py_dport,
                                            meta, meta_slots, now_obj, now)
            return self._flowless(p, proto, total, payload_offset, sport, dport, flags, src,
                                  dst, py_sport, py_dport, key, key_hash, meta, meta_slots,
                                  now_obj, now)
        if proto == PROTO_TCP and flags & STATE_FLAGS:
            if flags & SYN_ACK_FIN_RST == SYN_ACK:
                # a responder's SYN+ACK: the handshake's answer, decided here when it needs
                # nothing but the state machine's one step and the reverse candidates
                return self._syn_ack(p, total, payload_offset, sport, dport, flags, src, dst,
                                     <object>found, meta, meta_slots, now_obj, now)
            if flags & SYN_ACK_FIN_RST == TCP_SYN and self._reused(<object>found):
                # A SYN on the tuple of a closed or offloaded connection (the client reused
                # its port): FlowTable.open ends that flow (_reuse) and opens a new one, as
                # for a SYN of no flow, which is decided here (or, if not, by Python, which
                # then finds no flow: the same steps in the same order).
                return self._flowless(p, proto, total, payload_offset, sport, dport, flags,
                                      src, dst, py_sport, py_dport, key, key_hash, meta,
                                      meta_slots, now_obj, now)
            return None  # the state machine's business
        flow = <object>found
        if type(flow) is not FLOW:
            return None
        if _get(flow, F_NAT) is not None:
            return None
        # With application parsing on, a TCP flow that carried no payload yet (the
        # inspector's quiet state): AppInspector.inspect does nothing with a segment without
        # payload, SYN, FIN or RST (_quiet), so its handshake's ACK and bare ACKs are decided
        # here (offload_kind gives a TCP packet without payload none; a refusal, which may
        # owe the inspector's events, goes to Python). So are bare ACKs of a flow whose
        # streams the inspector reads, when `inspect` does nothing with them either
        # (`_bare_segment_reads_nothing`).
        # So is the first payload of a quiet flow when it names the flow unknown by itself
        # (AppInspector._first_payload: `_first_payload_unknown`), which is then named and
        # finished here once the packet is decided (`_name_unknown`).
        app_state = _get(flow, F_APP_STATE)
        cdef bint app_quiet = False
        cdef bint first_unknown = False
        cdef bint fwd = _get(flow, F_SPORT) == py_sport and _get(flow, F_SRC) == src
        if app_state is not None:
            if proto != PROTO_TCP:
                return None
            if payload_offset < total:
                if type(app_state) is not self.quiet_state or not self._first_payload_unknown(
                    flow, app_state, p, total, payload_offset, fwd
                ):
                    return None
                first_unknown = True
            elif type(app_state) is not self.quiet_state and not _bare_segment_reads_nothing(
                self.app, app_state, flow, py_sport, src
            ):
                return None
            if not self.app.enabled:  # (an app object is there: either state needs one)
                return None
            app_quiet = True
        cdef bint replied = _get(flow, F_REPLIED)
        if not fwd:
            replied = True
        # A handshake's last step (SYN_RECV, an ACK either way: FlowTable._tcp_update), done
        # here when moving the flow to ESTABLISHED would not file it sooner on the timer
        # wheel (its timeout grows); the initiator's ACK records its handshake (_handshake).
        cdef bint handshake_done = False
        if proto == PROTO_TCP:
            if _get(flow, F_TCP_STATE) != TCP_ESTABLISHED:
                if _get(flow, F_TCP_STATE) != TCP_SYN_RECV or not (flags & TCP_ACK):
                    return None
                if not self.syn_ack_on or self.table["_opened"] is not None:
                    return None
                if self._refiled_sooner(flow, now_obj, now, self.est_timeout):
                    return None
                handshake_done = True
        # ---- detectors: Detectors.observe for a packet past its flow's first
        cdef BucketUpdate updates[MAX_FLOODS]
        cdef int n_updates = 0
        cdef tuple floods = None
        if self.has_detect:
            if not self.detect_declared:
                return None
            if proto == PROTO_TCP:
                if not self.tcp_quiet[flags]:
                    return None
            elif proto == PROTO_UDP:
                if self.udp_unreplied_busy and not replied:
                    # forward, of a flow nobody answered: the udpfloods count it, reflection
                    # wants it when it comes from an amplifier port (to another port)
                    if self.udp_floods is None:
                        return None
                    if self.amplifier_ports is not None and sport != dport and (
                        (<const uint8_t *>PyBytes_AS_STRING(self.amplifier_ports))[sport]
                    ):
                        return None
                    floods = self.udp_floods
            elif icmp_type == (8 if proto == PROTO_ICMP else 128):
                # an echo request: the icmpfloods count it (sweep and reflection look at a
                # flow's first, which is never here: its flow would not exist yet)
                if self.echo_floods is None:
                    return None
                floods = self.echo_floods
            elif icmp_type == (0 if proto == PROTO_ICMP else 129):
                if fwd and not replied and self.echo_reply_busy:
                    return None  # an echo reply nobody asked for: reflection's
            elif self._icmp_busy(proto, icmp_type, False, fwd, replied, p, total,
                                 payload_offset - 8 if payload_offset < total else -1, dst,
                                 key):
                return None  # (any other ICMP message: `_rest`)
        # ---- the rules the flow's cache names
        if meta_slots:
            iif = _get(meta, M_IIF)
            oif = _get(meta, M_OIF)
        else:
            iif = meta.iif
            oif = meta.oif
        cache_obj = _get(flow, F_CACHE_FWD) if fwd else _get(flow, F_CACHE_REV)
        # An ICMP message's flow answered for the first time (an echo's or a neighbour
        # solicitation's reply): its reverse candidates found as the engine finds them
        # (CompiledPolicy.candidate_entry: ICMP has no ports), its cache set once decided.
        new_cache = None
        if cache_obj is None and not fwd and (proto == PROTO_ICMP or proto == PROTO_ICMPV6) and (
            self.rest_on and self.flowless_on and not _get(flow, F_OFFLOADED)
        ):
            entry = self._portless_entry(proto, src, dst, False, iif, oif)
            if entry is None:
                return None
            cache_obj = new_cache = (self.policy, iif, oif, entry[0], entry[1], entry[2])
        if type(cache_obj) is not tuple or len(<tuple>cache_obj) < 6:
            return None
        cdef tuple cache = <tuple>cache_obj
        if cache[0] is not self.policy or cache[1] != iif or cache[2] != oif:
            return None
        # The rules this flags byte can reach, as the engine walks them (`walks[flags]`,
        # made by CompiledPolicy.walk when missing, so that both paths leave the same walks
        # behind); all the candidates when none has a `flags` condition.
        rules = cache[3]
        walks = cache[5]
        if walks is not None:
            rules = walks[flags]
            if rules is None:
                rules = self.policy.walk(cache[3], walks, flags)
        if type(rules) is not tuple:
            return None
        cdef list progs = self._program(<tuple>rules)
        cdef RuleProg matched = None
        cdef Py_ssize_t length = total
        cdef object limit_bucket = None   # the matched rule's `limit` bucket, and its tokens
        cdef double limit_tokens = 0.0
        if self._walk(progs, p, total, payload_offset, flags, icmp_type, icmp_code, replied,
                      src, dst, flow, now) < 0:
            return None
        matched = self.walk_matched
        limit_bucket = self.walk_bucket
        limit_tokens = self.walk_tokens
        if matched is None and not self.default_fast:
            return None
        if app_quiet and not (
            matched.accepts if matched is not None else self.default_offload is not None
        ):
            return None  # refused while the inspector reads: what it owes (_owed) is Python's
        # The floods' buckets last: nothing that may still send the packet to Python (and
        # no Python code) runs between their reading and their update.
        if floods is not None and len(floods) > 0:
            n_updates = _floods_take(floods, src, dst, now, updates)
            if n_updates < 0:
                return None
        # ---- decided: count as the Python path does (its order matters only for what is
        # read back, and nothing here reads what it wrote but the offload: the cache first)
        if new_cache is not None:
            _set(flow, F_CACHE_REV, new_cache)
        cdef int i
        cdef list bucket
        for i in range(n_updates):
            bucket = <list><object>updates[i].bucket
            bucket[0] = updates[i].tokens
            if updates[i].refilled:
                bucket[1] = now_obj
        if limit_bucket is not None:
            (<list>limit_bucket)[0] = limit_tokens
            (<list>limit_bucket)[1] = now_obj
        self.owed_packets += 1
        self.owed = True
        if fwd:
            _set(flow, F_PKTS_FWD, _get(flow, F_PKTS_FWD) + 1)
            _set(flow, F_BYTES_FWD, _get(flow, F_BYTES_FWD) + length)
            _set(flow, F_PAYLOAD_FWD, _get(flow, F_PAYLOAD_FWD) + (total - payload_offset))
            _set(flow, F_FLAGS_FWD, _get(flow, F_FLAGS_FWD) | flags)
        else:
            _set(flow, F_PKTS_REV, _get(flow, F_PKTS_REV) + 1)
            _set(flow, F_BYTES_REV, _get(flow, F_BYTES_REV) + length)
            _set(flow, F_PAYLOAD_REV, _get(flow, F_PAYLOAD_REV) + (total - payload_offset))
            _set(flow, F_FLAGS_REV, _get(flow, F_FLAGS_REV) | flags)
            _set(flow, F_REPLIED, True)
        if now > <double>_get(flow, F_LAST_SEEN):
            _set(flow, F_LAST_SEEN, now_obj)
        if handshake_done:
            _set(flow, F_TCP_STATE, TCP_ESTABLISHED)
            if fwd:
                self._handshake(flow)  # (before this packet's MAC is the flow's, as there)
        if first_unknown:
            # (before the offload is weighed: offload_kind reads the protocol and the
            # inspector's state as the inspector left them)
            self._name_unknown(flow)
        if mac is not None and fwd and _get(flow, F_MAC) is None:
            _set(flow, F_MAC, mac)
        # offload_kind offloads an ICMP flow on an echo only
        cdef bint offloadable = icmp_type < 0 or icmp_type == (
            0 if proto == PROTO_ICMP else 129) or icmp_type == (8 if proto == PROTO_ICMP else 128)
        if matched is not None:
            decision = matched.decision
            self._owe_hit(matched)
            if matched.accepts and self.offload_on and replied and offloadable:
                if self._offload_kind(flow, proto, payload_offset < total, now) == OFFLOAD_FLOW:
                    decision = matched.offload_decision
        else:
            decision = self.default_decision
            if self.default_offload is not None and self.offload_on and replied and offloadable:
                if self._offload_kind(flow, proto, payload_offset < total, now) == OFFLOAD_FLOW:
                    decision = self.default_offload
        self._count_verdict(decision)
        return decision

    cdef bint _first_payload_unknown(self, object flow, object quiet, const uint8_t *p,
                                     Py_ssize_t total, Py_ssize_t payload_offset,
                                     bint fwd) except -1:
        """Whether AppInspector._first_payload names this TCP segment's flow unknown (the
        flow's first payload, no SYN, FIN or RST, not a fragment: the caller's; its quiet
        state `quiet`): the flow not named yet, the payload taken whole by the reassembler
        (below its bound, under its memory cap), at its direction's start when the SYN
        gave one, and ips/app/detect.py's detect_stream (ported: ips_detect_stream) answers
        unknown for it. Changes nothing."""
        if not self.first_unknown_on:
            return False
        app = self.app
        if not app.unknown_at_once or _get(flow, F_APP_PROTO) is not None:
            return False
        counters = app.counters
        if type(counters) is not APP_COUNTERS or type(counters.protocols) is not COUNTER:
            return False
        reassembler = app.reassembler
        if type(reassembler) is not REASSEMBLER:
            return False
        cdef Py_ssize_t n = total - payload_offset
        limit = reassembler.limit
        used = reassembler.used
        cap = reassembler.memory_cap
        if type(limit) is not int or type(used) is not int or type(cap) is not int:
            return False
        if n >= <Py_ssize_t>limit or used + n > cap:
            return False
        base = _get(quiet, self.quiet_client_base if fwd else self.quiet_server_base)
        if type(base) is not int:
            return False
        # (a packet of this path has no IP options or IPv6 extension headers)
        cdef Py_ssize_t l4 = 20 if (p[0] >> 4) == 4 else 40
        cdef uint32_t seq
        if base >= 0:
            seq = ((<uint32_t>p[l4 + 4] << 24) | (<uint32_t>p[l4 + 5] << 16)
                   | (<uint32_t>p[l4 + 6] << 8) | <uint32_t>p[l4 + 7])
            if <object>seq != base:
                return False
        return ips_detect_stream(p + payload_offset, n) == IPS_DET_UNKNOWN

    cdef int _name_unknown(self, object flow) except -1:
        """What AppInspector._first_payload leaves when it names a flow unknown: its fields
        made and final, the protocol named and counted, no inspector state (the reassembler
        never held the bytes)."""
        fields = APP_FIELDS()
        fields.client_done = True
        fields.server_done = True
        _set(flow, F_APP, fields)
        _set(flow, F_APP_PROTO, APP_UNKNOWN)
        _count_in(self.app.counters.protocols, APP_UNKNOWN)
        _set(flow, F_APP_STATE, None)
        self.first_unknown_packets += 1
        return 0

    cdef int _count_verdict(self, object decision) except -1:
        """EngineStats.verdicts as the Python path counts a Decision, and this path's own."""
        cdef PyObject *verdict = (<PyObject **>((<char *><PyObject *>decision) + D_VERDICT))[0]
        cdef int i
        self.fast_packets += 1
        for i in range(self.owed_verdict_kinds):
            if self.owed_verdicts[i] == verdict:
                self.owed_verdict_counts[i] += 1
                return 0
        if verdict is NULL:
            raise AttributeError("slot not set")
        if self.owed_verdict_kinds == 4:
            self._flush()
        i = self.owed_verdict_kinds
        Py_INCREF(<object>verdict)
        self.owed_verdicts[i] = verdict
        self.owed_verdict_counts[i] = 1
        self.owed_verdict_kinds = i + 1
        self.owed = True
        return 0

    cdef object _not_ip(self):
        """An Ethernet frame that carries no IP (ARP, LLDP...): Engine.handle_python's
        `_undecodable(None)`, counted as there (EngineStats.packets and not_ip; such a
        Decision is returned before the verdicts are counted, and settles nothing)."""
        if self.not_ip_decision is None:
            return None
        counts = self.stats_dict
        self.owed_packets += 1
        self.owed = True
        counts["not_ip"] = counts["not_ip"] + 1
        self.fast_packets += 1
        return self.not_ip_decision

    # ---- the frames the fast decoder leaves (see _ips_decode_frame) ------------------------

    cdef object _rest(self, const uint8_t *frame, Py_ssize_t n, int linktype, object meta,
                      object now_obj):
        """A frame `_handle`'s own decoder does not take, decoded as decode_frame decodes it:
        a malformed one counted as Engine._undecodable counts it, a frame without IP as
        `_not_ip`; an ICMP or ICMPv6 message of any type (not a fragment) decided by
        `_decide`, a later fragment or a packet of another protocol (GRE, IGMP...) of no
        flow by `_flowless_other`. Otherwise the Packet, for Engine.handle_packet; None when
        this module does not read the link type."""
        cdef ips_decoded d
        cdef int kind = _ips_decode_frame(frame, n, linktype, &d)
        if kind == DECODED_NOT_HERE:
            return None
        if kind == DECODED_NOT_IP:
            return self._not_ip()
        if kind == DECODED_MALFORMED:
            return self._malformed_frame(DECODE_REASONS[d.reason])
        cdef const uint8_t *p = frame + d.ip_at
        cdef int proto = d.proto
        cdef Py_ssize_t alen = 4 if d.family == 4 else 16
        cdef Py_ssize_t src_at = 12 if d.family == 4 else 8
        cdef bint icmp = proto == PROTO_ICMP or proto == PROTO_ICMPV6
        decision = None
        if self.rest_on:
            if d.frag == FRAG_NONE_C and icmp:
                src = self._address(p + src_at, alen)
                dst = self._address(p + src_at + alen, alen)
                decision = self._decide(p, proto, d.length, d.payload_offset, d.sport, d.dport, 0,
                                        d.icmp_type, d.icmp_code, src, dst, meta, now_obj)
            elif d.frag == FRAG_FIRST_C and (proto == PROTO_TCP or proto == PROTO_UDP) and (
                d.family == 4 and d.l4_offset == 20 and self.flowless_on
                and not self.app.enabled
            ):
                # A first fragment of TCP or UDP (IPv4 without options: the headers where
                # this module reads them; parsing off) is any packet to _decide: its
                # headers are whole, and only a `fragment` rule tells it apart (_walk).
                src = self._address(p + src_at, alen)
                dst = self._address(p + src_at + alen, alen)
                self.walk_frag = True
                try:
                    decision = self._decide(p, proto, d.length, d.payload_offset, d.sport,
                                            d.dport, d.flags, -1, -1, src, dst, meta, now_obj)
                finally:
                    self.walk_frag = False
            elif d.frag == FRAG_LATER_C or (
                d.frag == FRAG_NONE_C and proto != PROTO_TCP and proto != PROTO_UDP
                and proto != PROTO_UDPLITE_C and proto != PROTO_SCTP_C
            ):
                src = self._address(p + src_at, alen)
                dst = self._address(p + src_at + alen, alen)
                decision = self._other_of_no_flow(p, &d, src, dst, meta, now_obj)
        if decision is not None:
            return decision
        self._flush()  # (Packet.__init__ is Python)
        return _decoded_packet(frame, &d)

    cdef object _malformed_frame(self, object reason):
        """Engine._undecodable of a Malformed: EngineStats.packets and malformed[reason]
        counted, the engine's Decision for the reason (made by Python the first time: None
        then); returned, as there, before the verdicts are counted."""
        if self.malformed_decisions is None or self.malformed_counts is None:
            return None
        cdef PyObject *found = PyDict_GetItem(self.malformed_decisions, reason)
        if found is NULL:
            return None
        decision = <object>found
        counts = self.malformed_counts
        found = PyDict_GetItem(counts, reason)
        counts[reason] = 1 if found is NULL else <object>found + 1
        self.owed_packets += 1
        self.owed = True
        self.fast_packets += 1
        self.malformed_packets += 1
        return decision

    cdef object _other_of_no_flow(self, const uint8_t *p, ips_decoded *d, object src,
                                  object dst, object meta, object now_obj):
        """A later fragment, or a packet of a protocol without ports the detectors ignore,
        when it has no flow: `_decide`'s checks of blocks and translations, then
        `_flowless_other`; None when it has a flow (Python)."""
        if self.blocked is not None and self.blocked:
            expiry = self.blocked.get(src)
            if expiry is not None and expiry > now_obj:
                return None
        cdef bint meta_slots = type(meta) is META
        mac = _get(meta, M_MAC) if meta_slots else meta.mac
        if mac is not None and self.blocks.macs:
            return None
        if self.nat_replies:
            return None
        py_sport = self._port(d.sport)
        py_dport = self._port(d.dport)
        key = (d.proto, src, py_sport, dst, py_dport)
        cdef Py_hash_t key_hash = hash(key)
        if ips_get_known(self.flows, key, key_hash) is not NULL:
            return None
        return self._flowless_other(p, d.proto, d.length, d.payload_offset, d.flags,
                                    d.frag == FRAG_LATER_C, d.icmp_type, d.icmp_code, src, dst,
                                    py_sport, py_dport, meta, meta_slots, now_obj,
                                    <double>now_obj)

    cdef bint _unreachable_answers(self, const uint8_t *p, Py_ssize_t total,
                                   Py_ssize_t l4_offset, object dst) except -1:
        """Whether an ICMP or ICMPv6 destination unreachable answers a pending probe of a
        scan (Detectors._icmp: `quoted_answer`, then `_answer` in each scan's index: a
        failure, weighed at once, Python's)."""
        cdef Py_ssize_t off = l4_offset + 8, ihl, l4, src_at
        cdef int version, proto
        cdef Py_ssize_t alen
        if not self.icmp_indexes:
            return False  # no scan: `_icmp` does nothing with it
        # ips/detect/scan.py quoted_answer
        if l4_offset < 0 or total < off + 28:
            return False
        version = p[off] >> 4
        if version == 4:
            ihl = (p[off] & 0x0F) * 4
            if ihl < 20 or ((p[off + 6] << 8) | p[off + 7]) & 0x1FFF:
                return False
            proto = p[off + 9]
            src_at = off + 12
            alen = 4
            l4 = off + ihl
        elif version == 6:
            proto = p[off + 6]
            src_at = off + 8
            alen = 16
            l4 = off + 40
            if total < off + 40:
                return False  # (a cut quote's addresses are shorter: never the addressee)
        else:
            return False
        if PyBytes_GET_SIZE(dst) != alen or not ips_same_address(
            PyBytes_AS_STRING(dst), p + src_at, alen
        ) or total < l4 + 8:
            return False
        quoted_src = PyBytes_FromStringAndSize(<const char *>(p + src_at), alen)
        quoted_dst = PyBytes_FromStringAndSize(<const char *>(p + src_at + alen), alen)
        if proto == PROTO_TCP or proto == PROTO_UDP or proto == PROTO_UDPLITE_C or (
            proto == PROTO_SCTP_C
        ):
            answer = (proto, quoted_dst, (p[l4 + 2] << 8) | p[l4 + 3], quoted_src,
                      (p[l4] << 8) | p[l4 + 1])
        elif (proto == PROTO_ICMP and p[l4] == 8) or (proto == PROTO_ICMPV6 and p[l4] == 128):
            ident = (p[l4 + 4] << 8) | p[l4 + 5]
            answer = (proto, quoted_dst, ident, quoted_src, ident)
        else:
            return False
        for index in self.icmp_indexes:
            if PyDict_GetItem(<dict>index, answer) is not NULL:
                return True
        return False

    cdef int _icmp_busy(self, int proto, int icmp_type, bint first, bint fwd, bint replied,
                        const uint8_t *p, Py_ssize_t total, Py_ssize_t l4_offset,
                        object dst, object key) except -1:
        """What Detectors._icmp does with an ICMP or ICMPv6 message that is no echo request
        (whose floods `_decide` counts): 0 nothing, 1 something (Python). By the message's
        protocol, as `_icmp` reads its types (`v4`: ICMP, whatever the IP version). `key`:
        the packet's 5-tuple (a flow's first answer is looked up with it: `_answers`)."""
        cdef bint v4 = proto == PROTO_ICMP
        if not self.icmp_declared:
            return 1
        if icmp_type == (3 if v4 else 1):
            return 1 if self._unreachable_answers(p, total, l4_offset, dst) else 0
        if icmp_type == (8 if v4 else 128):
            return 1  # an echo request: the floods (`_decide`), and a first one's sweep
        if (v4 and (icmp_type == 0 or icmp_type == 14 or icmp_type == 18)) or (
            not v4 and icmp_type == 129
        ):
            # an answer: a first one may answer a probe (`_answers`: its own 5-tuple in a
            # scan's index, noted: Python); reflection counts one forward of a flow not
            # answered
            if first and self.icmp_sweep:
                for index in self.icmp_indexes:
                    if PyDict_GetItem(<dict>index, key) is not NULL:
                        return 1
            if fwd and not replied and self.echo_reply_busy:
                return 1
            return 0
        if first and self.icmp_sweep and v4 and (icmp_type == 13 or icmp_type == 17):
            return 1  # a timestamp or address mask request: sweep's probe
        return 0

    cdef object _flowless_other(self, const uint8_t *p, int proto, Py_ssize_t total,
                                Py_ssize_t payload_offset, int flags, bint frag_later,
                                int icmp_type, int icmp_code, object src, object dst,
                                object py_sport, object py_dport, object meta,
                                bint meta_slots, object now_obj, double now):
        """`_flowless` for a packet of no flow that is no TCP or UDP (an ICMP or ICMPv6
        message, GRE, IGMP...) or a later fragment, with application parsing off: the engine
        refuses it with nothing to say, the detectors do nothing with it (Detectors.observe
        of a flow's first packet: `_icmp`, by its type; nothing for a later fragment or a
        protocol other than SCTP and UDP-Lite), and the flow FlowTable.open makes for it is
        discarded (its timer slot: ICMP's timeout, or `other`'s). None: nothing changed.
        Blocks and translations were checked by the caller."""
        cdef Py_ssize_t l4_offset
        cdef object probe_kind = None  # sweep's probe, an echo request: planned once decided
        cdef int probe_plan = PLAN_NOTHING
        cdef tuple floods = None
        cdef BucketUpdate updates[MAX_FLOODS]
        cdef int n_updates = 0
        if not self.flowless_on or not self.rest_on or self.app.enabled:
            return None
        if self.has_detect and not frag_later:
            if proto == PROTO_ICMP or proto == PROTO_ICMPV6:
                # (the header is 8 bytes before a payload; a message without one quotes
                # nothing: quoted_answer wants 28 bytes past the header)
                l4_offset = payload_offset - 8 if payload_offset < total else -1
                if icmp_type == (8 if proto == PROTO_ICMP else 128):
                    # an echo request (`_icmp`): sweep files it as a probe, each icmpflood
                    # counts it (their buckets taken last); reflection: Python
                    if self.echo_reply_busy or self.echo_floods is None:
                        return None
                    floods = self.echo_floods
                    if self.icmp_sweep:
                        probe_kind = PROBE_ECHO
                elif self._icmp_busy(proto, icmp_type, True, True, False, p, total, l4_offset,
                                     dst, (proto, src, py_sport, dst, py_dport)):
                    return None
            elif proto == PROTO_SCTP_C or proto == PROTO_UDPLITE_C or (
                proto == PROTO_TCP or proto == PROTO_UDP
            ):
                return None
        # ---- the flow table: FlowTable.open would make a flow, without making room
        cdef dict table = self.table
        self._table_view()
        if <object>self.table_opened is not None:
            return None
        active = <object>self.table_active
        if active >= <object>self.table_max_flows:
            return None
        # A flood over its rate drops the packet before the rules (as in _flowless): asked
        # before the candidate lookups, the buckets taken again last.
        if floods is not None and len(floods) > 0:
            if _floods_take(floods, src, dst, now, updates, True) < 0:
                return None
        # ---- the rules: CompiledPolicy.candidate_entry without ports (a later fragment:
        # only the rules that need no transport header, `frag_ok`)
        if meta_slots:
            iif = _get(meta, M_IIF)
            oif = _get(meta, M_OIF)
        else:
            iif = meta.iif
            oif = meta.oif
        entry = self._portless_entry(proto, src, dst, frag_later, iif, oif)
        self.flowless_entry = entry  # (an accepted message's flow keeps it: _file_other)
        if entry is None:
            return None
        rules = self._entry_walk(entry, flags)
        if rules is None:
            return None
        cdef list progs = self._program(<tuple>rules)
        cdef RuleProg prog
        if frag_later:
            for prog in progs:
                if prog.kind == RULE_NEVER:
                    return None  # a `fragment` rule (RULE_NEVER for other packets): Python
        self.walk_new_keys = True  # (a rule's `limit` bucket for a new key made here)
        try:
            if self._walk(progs, p, total, payload_offset, flags, icmp_type, icmp_code, False,
                          src, dst, None, now) < 0:
                return None
        finally:
            self.walk_new_keys = False
        cdef RuleProg matched = self.walk_matched
        if matched is None:
            decision = self.default_drop
            if decision is None:
                if self.default_accepts and not frag_later:
                    return self._file_other(p, proto, total, payload_offset, icmp_type,
                                            icmp_code, src, dst, py_sport, py_dport, meta,
                                            meta_slots, now_obj, now, None, probe_kind,
                                            floods)
                return None  # a default that rejects: a reply is made (Python)
        else:
            if not matched.drops:
                if matched.accepts and not frag_later:
                    return self._file_other(p, proto, total, payload_offset, icmp_type,
                                            icmp_code, src, dst, py_sport, py_dport, meta,
                                            meta_slots, now_obj, now, matched, probe_kind,
                                            floods)
                return None  # a reject, a rewrite: Python
            decision = matched.decision
        # ---- an echo request refused: what `_probe` does with it (the due probes first)
        if probe_kind is not None:
            probe_plan = self._probe_plan(probe_kind, proto, src, py_sport, dst, py_dport,
                                          now_obj, now)
            if probe_plan == PLAN_PYTHON:
                return None
        # ---- FlowTable._discard_opened: the timer slot the flow would have had
        cdef double timeout
        self._table_view()
        if proto == PROTO_TCP:
            # (a later fragment's flags byte is 0: FlowTable._tcp_update leaves TCP_NONE)
            timeout = (<tuple><object>self.table_tcp_timeouts)[TCP_NONE]
        elif proto == PROTO_UDP or proto == PROTO_UDPLITE_C:
            timeout = self.udp_new_timeout
        elif proto == PROTO_ICMP or proto == PROTO_ICMPV6:
            timeout = self.icmp_timeout
        else:
            timeout = self.other_timeout
        slot = self._slot_of(now + timeout)
        if slot is None:
            return None
        cdef bint new_slot = not PyDict_Contains(<object>self.table_wheel, slot)
        if new_slot and not self.slots_in_c:
            return None
        if self.owed_table is not None and self.owed_table is not table:
            self._flush()
            self._table_view()
        unreplied = <object>self.table_unreplied
        # (the unreplied queue to compact first, as FlowTable does: once decided)
        compact = len(unreplied) + self.owed_discarded + 1 > 2 * (active + 1) + 1024
        # The floods' buckets last: nothing that may still send the packet to Python (and
        # no Python code) runs between their reading and their update.
        if floods is not None and len(floods) > 0:
            n_updates = _floods_take(floods, src, dst, now, updates, True)
            if n_updates < 0:
                return None
        if compact:
            self._compact_unreplied(table)
        # ---- decided: count as the Python path does (the probe holds the discarded flow,
        # made before this packet's flow is owed: its id is the next one)
        if probe_plan == PLAN_FILE:
            self.refused_icmp = icmp_type << 8 | icmp_code
            try:
                self._probe_file(p, proto, total, payload_offset, 0, src, py_sport, dst,
                                 py_dport, meta, meta_slots, now_obj, None)
            finally:
                self.refused_icmp = -1
        _floods_apply(updates, n_updates, now_obj)
        self._limit_new_apply(now_obj)
        if self.walk_bucket is not None:
            (<list>self.walk_bucket)[0] = self.walk_tokens
            (<list>self.walk_bucket)[1] = now_obj
        if new_slot:
            PyDict_SetItem(<object>self.table_wheel, slot, set())
            _heappush(table["_slots"], slot)
        self.owed_packets += 1
        self.owed_discarded += 1
        self.owed_table = table
        self.owed = True
        if matched is not None:
            self._owe_hit(matched)
        self._count_verdict(decision)
        self.flowless_packets += 1
        self.other_flowless_packets += 1
        return decision

    cdef object _file_other(self, const uint8_t *p, int proto, Py_ssize_t total,
                            Py_ssize_t payload_offset, int icmp_type, int icmp_code,
                            object src, object dst, object py_sport, object py_dport,
                            object meta, bint meta_slots, object now_obj, double now,
                            RuleProg matched, object probe_kind, tuple floods):
        """The Decision of a first packet without ports (an ICMP or ICMPv6 message, GRE...,
        not a fragment) that the rules `_flowless_other` walked accept (`matched`, or the
        default when None), with its flow filed as the engine's path files it (as
        `_syn_first` files an accepted SYN's: FlowTable.open's id and counts, the Flow with
        the forward candidate cache, its interfaces, the sender's MAC and, for ICMP, its
        first type and code; the rule's hits and `limit` bucket; FlowTable.settle's two
        keys, the timer slot of ICMP's or `other`'s timeout, the end of the unreplied
        queue); None: nothing changed (Python decides). The detectors do nothing with it
        (checked by the caller) but, for an echo request, sweep's probe (`probe_kind`,
        filed holding this flow) and the icmpfloods' count (`floods`, which have a token);
        it is not replied: no offload."""
        if not self.syn_first_on or not self.rest_on:
            return None  # (the flow table and the ids are not what this module files)
        if matched is None:
            decision = self.default_decision
        else:
            if matched.decision is None:
                return None
            decision = matched.decision
        entry = self.flowless_entry
        if type(entry) is not tuple or len(<tuple>entry) != 3:
            return None
        cdef dict table = self.table
        if table["_opened"] is not None:
            return None
        active = table["_active"]
        if active >= table["max_flows"]:
            return None  # open makes room first: expiry, eviction (Python)
        cdef double timeout = (
            self.icmp_timeout if proto == PROTO_ICMP or proto == PROTO_ICMPV6 else
            self.other_timeout
        )
        slot = self._slot_of(now + timeout)  # (settle's deadline: first_seen + timeout)
        if slot is None:
            return None
        wheel = table["_wheel"]
        cdef PyObject *found = PyDict_GetItem(wheel, slot)
        bucket = None if found is NULL else <object>found
        if bucket is None:
            if not self.slots_in_c:
                return None
        elif type(bucket) is not set:
            return None
        unreplied = table["_unreplied"]
        # (the unreplied queue to compact first, as FlowTable does: once decided)
        compact = len(unreplied) + self.owed_discarded + 1 > 2 * (active + 1) + 1024
        cdef int probe_plan = PLAN_NOTHING
        if probe_kind is not None:
            probe_plan = self._probe_plan(probe_kind, proto, src, py_sport, dst, py_dport,
                                          now_obj, now)
            if probe_plan == PLAN_PYTHON:
                return None
        cdef BucketUpdate updates[MAX_FLOODS]
        cdef int n_updates = 0
        if floods is not None and len(floods) > 0:
            n_updates = _floods_take(floods, src, dst, now, updates, True)
            if n_updates < 0:
                return None
        if compact:
            # (FlowTable.settle compacts after filing the flow, which the filter keeps)
            self._compact_unreplied(table)
            unreplied = table["_unreplied"]
        # ---- decided. What is owed is written first: the flow's id follows those of the
        # flows discarded before it, and its place in the unreplied queue their stand-ins.
        self._flush()
        flow = self._refused_flow(p, proto, total, payload_offset, 0, src, py_sport, dst,
                                  py_dport, meta, meta_slots, now_obj, None)
        _set(flow, F_END_REASON, None)
        if icmp_type >= 0:
            _set(flow, F_ICMP, icmp_type << 8 | icmp_code)
        table["_next_id"] = table["_next_id"] + 1
        table["_active"] = active + 1
        table["_created"] = table["_created"] + 1
        if probe_plan == PLAN_FILE:
            self._probe_file(p, proto, total, payload_offset, 0, src, py_sport, dst,
                             py_dport, meta, meta_slots, now_obj, None, flow)
        _floods_apply(updates, n_updates, now_obj)
        self._limit_new_apply(now_obj)
        self._settle_filed(flow, (proto, src, py_sport, dst, py_dport), slot, bucket, unreplied,
                           matched, decision, now_obj)
        self.other_flows += 1
        return decision

    cdef int _settle_filed(self, object flow, object key, object slot, object bucket,
                           object unreplied, RuleProg matched, object decision,
                           object now_obj) except -1:
        """The end of filing a new flow decided here (_syn_first, _file_other), as the
        engine and FlowTable.settle end it: the rule's `limit` bucket written, the flow's
        two keys in the table (`key` the forward one), the flow on the timer wheel under
        `slot` (its `bucket`, made when None), at the end of the unreplied queue, and the
        packet, the rule's hit and the verdict owed."""
        if self.walk_bucket is not None:
            (<list>self.walk_bucket)[0] = self.walk_tokens
            (<list>self.walk_bucket)[1] = now_obj
        flows = self.flows
        flows[key] = flow
        flows[(key[0], key[3], key[4], key[1], key[2])] = flow
        if bucket is None:
            bucket = set()
            PyDict_SetItem(self.table["_wheel"], slot, bucket)
            _heappush(self.table["_slots"], slot)
        (<set>bucket).add(flow)
        _set(flow, F_SLOT, slot)
        unreplied.append(flow)
        self.owed_packets += 1
        self.owed = True
        if matched is not None:
            self._owe_hit(matched)
        self._count_verdict(decision)
        return 0

    cdef int _compact_unreplied(self, dict table) except -1:
        """FlowTable's compaction of its unreplied queue (`_discard_opened`, `settle`: a
        queue longer than twice the table and 1,024 keeps only the flows still filed and not
        replied, in their order), for a packet decided: what is owed written first (the
        stand-ins of the flows discarded before it, which it drops)."""
        self._flush()
        cdef object gone = FLOW_GONE
        kept = deque()
        for flow in <object>table["_unreplied"]:
            if type(flow) is FLOW:
                slot = _get(flow, F_SLOT)
                replied = _get(flow, F_REPLIED)
            else:
                slot = flow._slot
                replied = flow.replied
            if slot != gone and not replied:
                kept.append(flow)
        table["_unreplied"] = kept
        self._table_view()
        self.compactions += 1
        return 0

    cdef object _portless_entry(self, int proto, object src, object dst, bint frag_later,
                                object iif, object oif):
        """CompiledPolicy.candidate_entry of a packet whose protocol has no ports, or of a
        later fragment (candidate_bits: the protocol's bits, the addresses', then `frag_ok`
        for a later fragment, and the interfaces': the same memo reads and, on a miss, the
        same lookups, in the same order); None when the bitset's entry is not memoised
        (Python makes it)."""
        cdef PyObject *found
        cdef FamilyIndexes fx = self.family4 if len(src) == 4 else self.family6
        found = PyDict_GetItem(fx.proto_bits, proto)
        self._bits_start(fx.any_proto)
        self._bits_or(<object>found if found is not NULL else 0)
        if self._bits_nonzero():
            self._bits_and(self._memo_or_lookup(fx.src_memo, fx.src_lookup, src))
            self._bits_and(self._memo_or_lookup(fx.dst_memo, fx.dst_lookup, dst))
            if self._bits_nonzero():
                if frag_later:
                    self._bits_and(self.families[4 if len(src) == 4 else 6].frag_ok)
                if iif is not self.last_iif or oif is not self.last_oif:
                    self.last_iif = iif
                    self.last_oif = oif
                    self.last_ifs = (iif, oif)
                found = PyDict_GetItem(self.if_memo, self.last_ifs)
                if found is NULL:
                    self._flush()
                    if_bits = self.policy._interface_bits(iif, oif)
                else:
                    if_bits = <object>found
                self._bits_and(if_bits)
            else:
                self._bits_start(0)
        else:
            self._bits_start(0)
        bits = self.bits_wide if self.bits_are_wide else PyLong_FromLongLong(self.bits_narrow)
        found = PyDict_GetItem(self.candidates_memo, bits)
        if found is NULL:
            return None
        entry = <object>found
        if type(entry) is not tuple or len(<tuple>entry) != 3:
            return None
        return entry

    cdef object _flowless(self, const uint8_t *p, int proto, Py_ssize_t total,
                          Py_ssize_t payload_offset, int sport, int dport, int flags,
                          object src, object dst, object py_sport, object py_dport,
                          object key, Py_hash_t key_hash, object meta, bint meta_slots,
                          object now_obj, double now):
        """The Decision of a TCP or UDP packet of no flow (a flow's first packet) when the
        engine would refuse it with nothing to say: the flow FlowTable.open makes for it,
        discarded before it was filed (Engine._discard, FlowTable._discard_opened), and
        everything counted as there; None: nothing changed. Blocks and translations were
        checked by the caller."""
        if not self.flowless_on:
            return None
        if proto != PROTO_TCP and proto != PROTO_UDP:
            return None
        # With application parsing on, the inspector's first look at the flow
        # (AppInspector.inspect): for a TCP segment without payload, `_start` and `_quiet`
        # make a quiet state that goes with the refused flow (`release` then counts
        # nothing, owes nothing), and ask passive DNS the responder's name, which is done
        # below once decided; for a payload, the protocol detection's answer says what stays
        # once the flow is discarded (`_app_first_look`: counted below once decided, the
        # parsers of TLS, HTTP and SSH run then, or Python's: DNS, QUIC, a segment at the
        # bound or over the memory cap).
        cdef bint app_on = self.app.enabled
        cdef int app_look = APP_LOOK_NONE
        if app_on:
            app_look = _app_first_look(self.app, proto, p + payload_offset,
                                       total - payload_offset, flags)
            if app_look == APP_LOOK_PYTHON:
                return None
        # A SYN to a destination and port whose last SYN the rules accepted is most likely
        # accepted too: a new connection, Python's. Looking its candidates up here first
        # would be done twice (a guess that only chooses the path: Python decides the
        # same, and a SYN it would refuse is decided there as before).
        if proto == PROTO_TCP and flags & SYN_ACK_FIN_RST == TCP_SYN and self.syn_accepted and (
            not self.syn_first_on  # (accepted SYNs filed here: no guess needed, _syn_first)
        ):
            if PyDict_GetItem(self.syn_accepted, (dst, py_dport)) is not NULL:
                return None
        # ---- the detectors (Detectors.observe of a flow's first packet, forward)
        cdef int need
        cdef bint answers = False
        cdef int probe_plan = PLAN_NOTHING  # a new probe to file (_probe_plan)
        probe_kind = None  # a probe's kind: planned once the rules refuse the packet
        cdef tuple floods = None
        cdef BucketUpdate updates[MAX_FLOODS]
        cdef int n_updates = 0
        cdef int i
        if proto == PROTO_TCP:
            if self.first_tcp is None:
                return None
            need = (<const uint8_t *>PyBytes_AS_STRING(self.first_tcp))[flags]
            if need != FIRST_NOTHING:
                if need != FIRST_ANSWER and need != FIRST_ANSWER_ELSE_PROBE and (
                    need != FIRST_ANSWER_ELSE_PROBE_IF_EMPTY
                ):
                    return None  # FIRST_BUSY, or a value this module does not know
                for index in self.answer_indexes:
                    if ips_get_known(index, key, key_hash) is not NULL:
                        answers = True
                        break
                if answers:
                    if flags & TCP_RST or self.note_answer is None:
                        return None  # a failed probe: weighed at once (Python)
                elif need == FIRST_ANSWER_ELSE_PROBE or (
                    need == FIRST_ANSWER_ELSE_PROBE_IF_EMPTY and payload_offset >= total
                ):
                    # a probe (a SYN, an ACK without payload): `_probe` does nothing with
                    # it, or files it as _probe_plan plans (below, once the rules refuse
                    # the packet: an accepted one is Python's, and not planned for nothing)
                    probe_kind = PROBE_SYN if need == FIRST_ANSWER_ELSE_PROBE else PROBE_ACK
            if flags & SYN_ACK_FIN_RST == TCP_SYN and self.syn_floods is not None and len(
                self.syn_floods
            ):
                # synflood counts a SYN after the scans (`_tcp`): its buckets taken last
                floods = self.syn_floods
                if answers and not self.answers_in_c:
                    return None  # (Python's note_answer would run between the floods'
                                 # reading and their update)
            elif flags & SYN_ACK_FIN_RST == TCP_SYN and self.syn_floods is None:
                return None  # floods this module does not count
        elif not self.first_udp_quiet:
            # `_udp`: the floods count it (their buckets taken last, below), and by
            # first_udp, the scans note it as an answer or take it as a probe
            need = self.first_udp
            if need != FIRST_NOTHING and need != FIRST_ANSWER_ELSE_PROBE:
                return None  # FIRST_BUSY (reflection), or a value this module does not know
            floods = self.udp_floods
            if floods is None:
                return None  # floods this module does not count
            if need == FIRST_ANSWER_ELSE_PROBE and not (
                TRACEROUTE_FIRST <= dport < TRACEROUTE_END
            ):
                for index in self.answer_indexes:
                    if ips_get_known(index, key, key_hash) is not NULL:
                        answers = True
                        break
                if answers:
                    if self.note_answer is None:
                        return None
                    if len(floods) and not self.answers_in_c:
                        return None  # (Python's note_answer would run between the floods'
                                     # reading and their update)
                else:
                    # a probe: `_probe` does nothing with it, or files it (_probe_plan)
                    probe_kind = PROBE_DATAGRAM
        # ---- the flow table: FlowTable.open would make a flow, without making room
        cdef dict table = self.table
        self._table_view()
        if <object>self.table_opened is not None:
            return None  # an open flow not settled: open settles it first (Python)
        active = <object>self.table_active
        if active >= <object>self.table_max_flows:
            return None  # open makes room first: expiry, eviction (Python)
        # A flood over its rate with `limit` drops the packet before the rules (the engine's
        # `_limited`), which the Python path then never looks up: so whether the floods let
        # it go is asked before the candidate lookups (which fill the policy's memos), and
        # their buckets are taken again last (below).
        if floods is not None and len(floods) > 0:
            if _floods_take(floods, src, dst, now, updates, True) < 0:
                return None
        # ---- the rules
        if meta_slots:
            iif = _get(meta, M_IIF)
            oif = _get(meta, M_OIF)
        else:
            iif = meta.iif
            oif = meta.oif
        rules = self._flowless_rules(proto, src, dst, py_sport, py_dport, flags, iif, oif)
        if rules is None:
            return None
        cdef list progs = self._program(<tuple>rules)
        if self._walk(progs, p, total, payload_offset, flags, -1, -1, False, src, dst, None,
                      now) < 0:
            return None
        cdef RuleProg matched = self.walk_matched
        if matched is None:
            decision = self.default_drop
            if decision is None:
                filed = self._syn_first(p, proto, total, payload_offset, sport, flags, src, dst,
                                        py_sport, py_dport, key, key_hash, meta, meta_slots,
                                        now_obj, now, None, probe_kind, answers, floods, app_look)
                if filed is not None:
                    return filed  # an accepted SYN's flow, filed here (_syn_first)
                self._syn_not_refused(proto, flags, dst, py_dport)
                return None  # a default that accepts (the flow is filed) or rejects
        else:
            if not matched.drops:
                filed = self._syn_first(p, proto, total, payload_offset, sport, flags, src, dst,
                                        py_sport, py_dport, key, key_hash, meta, meta_slots,
                                        now_obj, now, matched, probe_kind, answers, floods,
                                        app_look)
                if filed is not None:
                    return filed  # an accepted SYN's flow, filed here (_syn_first)
                self._syn_not_refused(proto, flags, dst, py_dport)
                return None  # accepted: the flow is filed (Python)
            decision = matched.decision
        # ---- a probe, refused: what `_probe` does with it (the due probes weighed first)
        if probe_kind is not None:
            probe_plan = self._probe_plan(probe_kind, proto, src, py_sport, dst, py_dport,
                                          now_obj, now)
            if probe_plan == PLAN_PYTHON:
                return None
        # ---- FlowTable._discard_opened: the timer slot the flow would have had (made here
        # when missing), and the unreplied queue must not need compacting (Python does)
        cdef double timeout
        self._table_view()  # (read again: Python may have run since)
        if proto == PROTO_TCP:
            if flags & TCP_RST:
                state = TCP_CLOSED
            elif flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
                state = TCP_SYN_SENT
            else:
                state = TCP_NONE
            timeout = (<tuple><object>self.table_tcp_timeouts)[state]
        else:
            timeout = self.udp_new_timeout  # unreplied UDP
        slot = self._slot_of(now + timeout)  # (now is now_obj's double: the same sum)
        if slot is None:
            return None
        cdef bint new_slot = not PyDict_Contains(<object>self.table_wheel, slot)
        if new_slot and not self.slots_in_c:
            return None
        if self.owed_table is not None and self.owed_table is not table:
            self._flush()  # (a table that is not the one owed to: never, but cheap to say)
            self._table_view()
        unreplied = <object>self.table_unreplied
        # (the unreplied queue to compact first, as FlowTable does: once decided)
        compact = len(unreplied) + self.owed_discarded + 1 > 2 * (active + 1) + 1024
        if (app_look == APP_LOOK_DNS or app_look == APP_LOOK_INSPECT) and not _flow_ids_known(
            table
        ):
            return None  # (the inspector's flow is made with the table's next id)
        if probe_plan == PLAN_FILE and app_on and not _probe_flow_known(
            proto, app_look, self.refused_dns_on
        ):
            # A new probe's flow is the inspector's flow in Python: the one it reads (its
            # UDP state, a TCP stream's fields) is the one the probe keeps. _refused_flow
            # makes a flow the inspector has not read: only a TCP segment without payload
            # (whose quiet state goes with the refused flow) is filed here.
            return None
        # The floods' buckets last: nothing that may still send the packet to Python (and
        # no Python code) runs between their reading and their update.
        if floods is not None and len(floods) > 0:
            n_updates = _floods_take(floods, src, dst, now, updates, True)
            if n_updates < 0:
                return None
        if compact:
            self._compact_unreplied(table)
        # ---- decided: count as the Python path does: the inspector's first look (`_start`
        # asks passive DNS the responder's name: its order and expiry are what that
        # leaves), the detectors (the answer it gives to a pending probe, as `_tcp` notes
        # it; the last Python code run here)
        dst_name = None  # (the flow's, which a new probe keeps: _refused_flow)
        datagram = None  # (a DNS datagram's reading: _inspect_refused_dns)
        if app_on:
            if app_look == APP_LOOK_INSPECT or app_look == APP_LOOK_DNS:
                self._flush()  # (the inspector asks passive DNS itself)
                if app_look == APP_LOOK_DNS and self.refused_dns_on:
                    self.refused_dns += 1
                    datagram = _RefusedDatagram.__new__(_RefusedDatagram)
                    events = _inspect_refused_dns(self.app, table, p, total, payload_offset,
                                                  proto, sport, dport, src, dst, now_obj,
                                                  datagram)
                    dst_name = datagram.dst_name
                else:
                    events = _inspect_refused_first(self.app, table, p, total,
                                                    payload_offset, proto, sport, dport,
                                                    flags, src, dst, now_obj)
                if events is not None:
                    # Engine._finish's Decision for a refusal with effects (a DNS message's
                    # events): no data, no reply, the rule, or the default's reason
                    decision = DECISION(
                        _get(decision, D_VERDICT),
                        matched.rule if matched is not None else None,
                        None, None, list(events), "" if matched is not None else "default",
                    )
            else:
                names = self.app.names
                if names is not None and _name_of_does_something(names, dst):
                    self._flush()
                    dst_name = names.name_of(dst, now_obj)
                if app_look == APP_LOOK_TLS_HELLO:
                    self._flush()  # (the inspector's parser is called)
                    self.refused_hellos += 1
                elif app_look == APP_LOOK_HTTP_REQUESTS:
                    self._flush()  # (the inspector's parser is called)
                    self.refused_requests += 1
                if app_look != APP_LOOK_NONE:
                    _count_app_first_look(self.app, app_look, p + payload_offset,
                                          total - payload_offset)
        if answers:
            self._note_answer(key, key_hash, now_obj)
        if probe_plan == PLAN_FILE:
            if app_on and proto == PROTO_UDP:
                # What the inspector left on the UDP flow a probe keeps (_refused_flow)
                self.refused_app = _released_udp_fields(app_look, datagram)
                self.refused_app_proto = (
                    APP_DNS if app_look == APP_LOOK_DNS else
                    APP_UNKNOWN if app_look == APP_LOOK_UNKNOWN else None
                )
            # (before this packet's flow is owed: its id is the next one)
            try:
                self._probe_file(p, proto, total, payload_offset, flags, src, py_sport, dst,
                                 py_dport, meta, meta_slots, now_obj, dst_name)
            finally:
                self.refused_app = self.refused_app_proto = None
        _floods_apply(updates, n_updates, now_obj)
        if self.walk_bucket is not None:
            (<list>self.walk_bucket)[0] = self.walk_tokens
            (<list>self.walk_bucket)[1] = now_obj
        if new_slot:
            # FlowTable._discard_opened: the timer slot the flow would have had is made
            # (empty: an eviction's scan counts such slots), its number on the heap
            self._table_view()  # (read again: Python may have run since)
            PyDict_SetItem(<object>self.table_wheel, slot, set())
            _heappush(table["_slots"], slot)
        # The flow's counting (its id, created, discarded, its stand-in in the unreplied
        # queue) and the packet's, owed (_flush).
        self.owed_packets += 1
        self.owed_discarded += 1
        self.owed_table = table
        self.owed = True
        if matched is not None:
            self._owe_hit(matched)
        self._count_verdict(decision)
        self.flowless_packets += 1
        return decision

    cdef object _syn_ack(self, const uint8_t *p, Py_ssize_t total, Py_ssize_t payload_offset,
                         int sport, int dport, int flags, object src, object dst, object flow,
                         object meta, bint meta_slots, object now_obj, double now):
        """The Decision of a responder's SYN+ACK (no FIN, no RST) answering the SYN of a flow
        the policy accepted (state SYN_SENT), when it needs no Python: everything
        FlowTable.open, Detectors.observe, the engine's rule loop and offload_kind do with
        it, done and counted here; None: nothing changed. Blocks and translations were
        checked by the caller. Its conditions:

          * the flow has no translation, no application-layer work left (or, with parsing
            on, the inspector's quiet state and an answer without payload: _quiet's step
            is done here, and only the bare ACKs' offload while the inspector reads, as
            app_reading says),
            is not offloaded (a flow back from the kernel notes when), and has no
            candidates of this direction yet (the reverse direction's first packet: its
            candidates are found here as CompiledPolicy.candidate_entry finds them, and
            kept on the flow);
          * the flow table has no unsettled flow, and moving the flow to SYN_RECV would not
            file it sooner on the timer wheel (_refile_if_sooner: Python refiles it);
          * the detectors declared that they do nothing with a reverse TCP packet of these
            flags (PacketInterest.reverse_tcp_quiet);
          * walked with state established, the candidates reach a terminal accept or drop
            with a prebuilt Decision (a `limit` with a token), or none matches and the
            default accepts or drops.

        The offload is offload_kind's for a SYN+ACK: OFFLOAD_HANDSHAKE_ACK when both
        directions' candidates allow it (a plan weighed as needs_met weighs it), or
        OFFLOAD_BARE_ACKS when the inspector reads or an L7 clause waits, which the engine
        does not count (only OFFLOAD_FLOW marks the flow offloaded)."""
        if not self.syn_ack_on or type(flow) is not FLOW:
            return None
        if _get(flow, F_NAT) is not None:
            return None
        # ---- the application layer: AppInspector.inspect of an answer without payload on a
        # flow without payload yet (_quiet: the server's start), and offload_kind's
        # app_reading, which holds such a flow back while it carries few bytes
        app_state = _get(flow, F_APP_STATE)
        cdef bint app_reading = False
        if app_state is not None:
            if type(app_state) is not self.quiet_state or not self.app.enabled:
                return None  # no state of the kind done here, or parsing turned off (release)
            if payload_offset < total:
                return None  # its first payload: the streams start (Python)
            if not (_get(flow, F_BYTES_FWD) + _get(flow, F_BYTES_REV) + total
                    < self.app_reading_bytes):
                return None  # past app_reading's bound: offload_kind weighs it (Python)
            app_reading = True
        if _get(flow, F_SPORT) == sport and _get(flow, F_SRC) == src:
            return None  # forward: a SYN+ACK from the initiator is no answer
        if _get(flow, F_TCP_STATE) != TCP_SYN_SENT or _get(flow, F_OFFLOADED):
            return None
        if _get(flow, F_CACHE_REV) is not None:
            return None  # a reverse packet came before it (rare): Python
        if self.reverse_tcp_quiet is not None and not (
            (<const uint8_t *>PyBytes_AS_STRING(self.reverse_tcp_quiet))[flags]
        ):
            return None  # a detector looks at it
        cdef dict table = self.table
        if table["_opened"] is not None:
            return None  # an open flow not settled: open settles it first (Python)
        # ---- FlowTable._tcp_update: SYN_SENT -> SYN_RECV refiles the flow only if sooner
        if self._refiled_sooner(flow, now_obj, now, self.syn_recv_timeout):
            return None
        last_seen = _get(flow, F_LAST_SEEN)
        seen = now_obj if now > <double>last_seen else last_seen
        # ---- the reverse direction's candidates, and the rules
        if meta_slots:
            iif = _get(meta, M_IIF)
            oif = _get(meta, M_OIF)
        else:
            iif = meta.iif
            oif = meta.oif
        entry = self._candidate_entry(PROTO_TCP, src, dst, self._port(sport), self._port(dport),
                                      iif, oif)
        if entry is None:
            return None
        walk = self._entry_walk(<tuple>entry, flags)
        if walk is None:
            return None
        cdef list progs = self._program(<tuple>walk)
        if self._walk(progs, p, total, payload_offset, flags, -1, -1, True, src, dst, flow,
                      now) < 0:
            return None
        cdef RuleProg matched = self.walk_matched
        if matched is None and not self.default_fast:
            return None
        if app_reading and not (
            matched.accepts if matched is not None else self.default_offload is not None
        ):
            return None  # refused while the inspector reads: what it owes (_owed) is Python's
        # ---- decided: count as the Python path does (FlowTable.open, then the engine)
        if self.walk_bucket is not None:
            (<list>self.walk_bucket)[0] = self.walk_tokens
            (<list>self.walk_bucket)[1] = now_obj
        self.owed_packets += 1
        self.owed = True
        _set(flow, F_PKTS_REV, _get(flow, F_PKTS_REV) + 1)
        _set(flow, F_BYTES_REV, _get(flow, F_BYTES_REV) + total)
        _set(flow, F_PAYLOAD_REV, _get(flow, F_PAYLOAD_REV) + (total - payload_offset))
        _set(flow, F_FLAGS_REV, _get(flow, F_FLAGS_REV) | flags)
        _set(flow, F_REPLIED, True)
        if seen is not last_seen:
            _set(flow, F_LAST_SEEN, seen)
        _set(flow, F_TCP_STATE, TCP_SYN_RECV)
        rev_cache = (self.policy, iif, oif, entry[0], entry[1], entry[2])
        _set(flow, F_CACHE_REV, rev_cache)
        cdef Py_ssize_t l4 = 20 if (p[0] >> 4) == 4 else 40
        cdef uint32_t seq
        if app_reading:
            # _quiet: the server's stream starts after its SYN's sequence number
            seq = ((<uint32_t>p[l4 + 4] << 24) | (<uint32_t>p[l4 + 5] << 16)
                   | (<uint32_t>p[l4 + 6] << 8) | <uint32_t>p[l4 + 7])
            _set(app_state, self.quiet_server_base, (<object>seq + 1) & 0xFFFFFFFF)
        if matched is not None:
            decision = matched.decision
            self._owe_hit(matched)
            if matched.accepts and self.offload_on:
                decision = _handshake_choice(self._handshake_offload(flow, app_reading),
                                             decision, matched.handshake_ack_decision,
                                             matched.bare_acks_decision)
        else:
            decision = self.default_decision
            if self.default_offload is not None and self.offload_on:
                decision = _handshake_choice(self._handshake_offload(flow, app_reading),
                                             decision, self.default_handshake_ack,
                                             self.default_bare_acks)
        self._count_verdict(decision)
        self.syn_ack_packets += 1
        return decision

    cdef bint _refiled_sooner(self, object flow, object now_obj, double now,
                              object timeout) except -1:
        """Whether FlowTable._refile_if_sooner would move the flow on the timer wheel when
        its TCP state changes to one of this timeout (its slot from the packet's time, or
        its last_seen if later): Python does that."""
        slot_obj = _get(flow, F_SLOT)
        if slot_obj == -1:
            return False
        last_seen = _get(flow, F_LAST_SEEN)
        seen = now_obj if now > <double>last_seen else last_seen
        return int((seen + timeout) // FLOW_SLOT) + 1 < slot_obj

    cdef int _handshake(self, object flow) except -1:
        """FlowTable._handshake: the initiator completed a handshake (the same dict
        operations, in the same order)."""
        handshakes = self.handshakes
        src = _get(flow, F_SRC)
        if handshakes.pop(src, None) is None and len(handshakes) >= HANDSHAKE_MEMORY:
            handshakes.popitem(last=False)
        handshakes[src] = (_get(flow, F_TTL), _get(flow, F_MAC))
        return 0

    cdef int _handshake_offload(self, object flow, bint app_reading) except -1:
        """offload_kind's answer for a SYN+ACK just counted (state SYN_RECV, no
        translation, no application-layer work left but the inspector's reading, as
        app_reading says): OFFLOAD_HANDSHAKE_ACK, OFFLOAD_BARE_ACKS (the inspector reads,
        or an L7 clause waits), or 0. The plans are weighed in every case, as offload_kind
        weighs them (plan_of may make one again)."""
        fwd_cache = _get(flow, F_CACHE_FWD)
        rev_cache = _get(flow, F_CACHE_REV)
        if fwd_cache is None or rev_cache is None:
            return 0
        if fwd_cache[0] is not self.policy or rev_cache[0] is not self.policy:
            return 0
        fwd_state = fwd_cache[4]
        rev_state = rev_cache[4]
        if not (fwd_state and rev_state):
            return 0
        cdef bint app_pending = False
        if fwd_state == _OFFLOAD_WHEN_APP_DONE or rev_state == _OFFLOAD_WHEN_APP_DONE:
            app = _get(flow, F_APP)
            if _get(flow, F_APP_PROTO) is None or not (app is None or app.client_done):
                app_pending = True
        if fwd_state == _OFFLOAD_LATER and not self._plan_met(fwd_cache[3], flow, True):
            return 0
        if rev_state == _OFFLOAD_LATER and not self._plan_met(rev_cache[3], flow, False):
            return 0
        # (no back_since wait: offload_kind returns a handshake's kind before it)
        return OFFLOAD_BARE_ACKS if app_pending or app_reading else OFFLOAD_HANDSHAKE_ACK

    cdef int _note_answer(self, object key, Py_hash_t key_hash, object now_obj) except -1:
        """Detectors.note_answer(key, now): with every scan detector's answer declared as
        ScanDetector.answer's (PacketInterest.answers_note_outcome), each Probe found for the
        key goes from UNKNOWN to ANSWERED here; else (or anything not a Probe found) Python,
        whose marking is the same and leaves a probe marked here as it is."""
        cdef PyObject *found
        self.answers_noted += 1
        if self.answers_in_c:
            for index in self.answer_indexes:
                found = ips_get_known(index, key, key_hash)
                if found is NULL:
                    continue
                if type(<object>found) is not PROBE:
                    break
                if _get(<object>found, P_OUTCOME) == UNKNOWN_OUTCOME:
                    _set(<object>found, P_OUTCOME, ANSWERED_OUTCOME)
            else:
                return 0
        self._flush()
        self.note_answer(key, now_obj)
        return 0

    cdef bint _probe_repeats(self, int proto, object src, object sport, object dst,
                             object dport, object now_obj) except -1:
        """Whether a probe repeats one that every scan detector holds pending, while none
        has a probe due (PacketInterest.pending_probes): then `_probe` and
        ScanDetector.probe do nothing with it."""
        cdef tuple indexes = self.answer_indexes
        cdef tuple pendings = self.pending_probes
        if not indexes or len(pendings) != len(indexes):
            return False
        answer = (proto, dst, dport, src, sport)
        cdef Py_hash_t answer_hash = hash(answer)
        for index in indexes:
            if ips_get_known(index, answer, answer_hash) is NULL:
                return False
        for pending in pendings:
            if len(pending) and (<object>pending[0]).due <= now_obj:
                return False  # weighed first (Python)
        return True

    cdef int _syn_not_refused(self, int proto, int flags, object dst, object dport) except -1:
        """A SYN the rules do not refuse: its destination and port noted (syn_accepted), so
        that the next SYN there goes to Python at once (see _flowless)."""
        if proto != PROTO_TCP or flags & SYN_ACK_FIN_RST != TCP_SYN:
            return 0
        if len(self.syn_accepted) >= 65536:
            self.syn_accepted = {}
        self.syn_accepted[(dst, dport)] = True
        return 0

    cdef int _resolve_quietly(self, ScanProg prog, object now_obj, Py_ssize_t budget) except -2:
        """ScanDetector.resolve_quietly(now, budget) of a PortScan or Sweep whose methods are
        the classes' own, in compiled code: 1 (True: the due probes weighed as `resolve`
        weighs them, none of them completing a scan), 0 (False: nothing changed: more due
        than `budget`, or a detection), or -1: Python's to say (a long window, values not of
        the types read here, another method)."""
        if not _quiet_methods_known(prog) or budget > 64:
            return -1
        attrs = prog.attrs
        cdef PyObject *found = PyDict_GetItem(attrs, "slow")
        if found is NULL or <object>found is not None:
            return -1
        found = PyDict_GetItem(attrs, "threshold")
        if found is NULL or not PyFloat_CheckExact(<object>found):
            return -1
        cdef double threshold = PyFloat_AS_DOUBLE(<object>found) - QUIET_EPS
        if not PyFloat_CheckExact(now_obj):
            return -1
        cdef double now = PyFloat_AS_DOUBLE(now_obj)
        # The due probes (at most `budget`), as resolve_quietly lists them
        cdef list due = []
        for probe in prog.pending:
            if type(probe) is not PROBE:
                return -1
            when = _get(probe, P_DUE)
            if not PyFloat_CheckExact(when):
                return -1
            if not PyFloat_AS_DOUBLE(when) <= now:
                break
            if len(due) == budget:
                return 0
            due.append(probe)
        # Each weighed (`weigh`), on copies of what `_credit` changes: a window's score and
        # weights (keyed by the window and the target, as resolve_quietly keys them)
        cdef dict scores = {}
        cdef dict weights = {}
        cdef Py_ssize_t i, n = len(due)
        cdef double weight, old, score
        for i in range(n):
            probe = due[i]
            prog.quiet_weights[i] = 0.0
            if _get(probe, P_OUTCOME) == FAILED_OUTCOME:
                continue
            weight = self._weigh(prog, probe)
            if weight < -0.5:
                return -1
            prog.quiet_weights[i] = weight
            entry = _get(probe, P_ENTRY)
            if type(entry) is not SCAN_ENTRY:
                return -1
            if weight <= 0.0 or _get(entry, E_FIRED):
                continue
            target = _get(probe, P_TARGET)
            at = (id(entry), target)
            found = PyDict_GetItem(weights, at)
            if found is NULL:
                entry_weights = _get(entry, E_WEIGHTS)
                if type(entry_weights) is not dict:
                    return -1
                found = PyDict_GetItem(<dict>entry_weights, target)
                old_obj = 0.0 if found is NULL else <object>found
            else:
                old_obj = <object>found
            if not PyFloat_CheckExact(old_obj):
                return -1
            old = PyFloat_AS_DOUBLE(old_obj)
            if weight <= old:
                continue
            weights[at] = weight
            found = PyDict_GetItem(scores, id(entry))
            score_obj = _get(entry, E_SCORE) if found is NULL else <object>found
            if not PyFloat_CheckExact(score_obj):
                return -1
            score = PyFloat_AS_DOUBLE(score_obj) + (weight - old)
            scores[id(entry)] = score
            if score >= threshold:
                return 0  # a detection: its alert and response are Python's to make
        # `resolve`: each due probe out of the queue (`_leave`) and judged (`_judge`:
        # `_credit` for a positive weight, which completes no scan: seen above)
        for i in range(n):
            probe = self._leave_oldest(prog)
            if _get(probe, P_OUTCOME) == FAILED_OUTCOME:
                continue
            entry = _get(probe, P_ENTRY)
            target = _get(probe, P_TARGET)
            weight = prog.quiet_weights[i]
            if weight > 0.0:
                entry_weights = <dict>_get(entry, E_WEIGHTS)
                found = PyDict_GetItem(entry_weights, target)
                old = 0.0 if found is NULL else PyFloat_AS_DOUBLE(<object>found)
                if weight <= old or _get(entry, E_FIRED):
                    continue
                entry_weights[target] = weight
                _set(entry, E_SCORE, _get(entry, E_SCORE) + (weight - old))
        return 1

    cdef double _weigh(self, ScanProg prog, object probe) except -2:
        """PortScan.weigh (prog.by_host) or Sweep.weigh of a probe; -1: not the types read
        here (Python's)."""
        kind = _get(probe, P_KIND)
        outcome = _get(probe, P_OUTCOME)
        flow = _get(probe, P_FLOW)
        if type(flow) is not FLOW:
            return -1.0
        cdef int proto = _get(flow, F_PROTO)
        if prog.by_host:
            if outcome == ANSWERED_OUTCOME:
                return W_HANDSHAKE if kind == PROBE_SYN else 0.0
            if proto == PROTO_TCP:
                if <int>_get(flow, F_FLAGS_REV) & TCP_RST:
                    return W_FAILED
                if _get(flow, F_OFFLOADED):
                    return 0.0
                if _get(flow, F_REPLIED):
                    return W_HANDSHAKE if kind == PROBE_SYN and _get(flow, F_PKTS_REV) <= 1 else 0.0
                return W_FAILED if kind == PROBE_SYN else 0.0
            return 0.0 if _get(flow, F_REPLIED) else W_FAILED
        if outcome == ANSWERED_OUTCOME:
            return 0.0
        if proto == PROTO_TCP:
            if <int>_get(flow, F_FLAGS_REV) & TCP_RST:
                return W_FAILED
            return 0.0 if _get(flow, F_REPLIED) or kind != PROBE_SYN else W_FAILED
        if proto == PROTO_UDP or proto == PROTO_UDPLITE_C:
            return 0.0
        return 0.0 if _get(flow, F_REPLIED) else W_FAILED

    cdef int _probe_plan(self, object kind, int proto, object src, object sport, object dst,
                         object dport, object now_obj, double now) except -1:
        """What Detectors._probe would do with this probe (of `kind`, with ports), planned:
        PLAN_NOTHING (one of its addresses is no host, or every scan awaits its answer
        already, has detected its key in this window or is told to ignore its source),
        PLAN_FILE (a window to open, a probe to file or to count as skipped, in one scan at
        least: each ScanProg's plan, which _probe_file carries out once the packet is
        decided) or PLAN_PYTHON: a queue is full and ScanDetector._make_room would weigh its
        oldest early, a scan's due probes would report something or are too many, or this
        module does not file probes (probes_in_c False: then only a repeat of a pending
        probe while none is due does nothing here, _probe_repeats).

        The one change made here: the scans' due probes, weighed first as `_probe` weighs
        them (ScanDetector.resolve_quietly: only when that reports nothing and leaves none
        due), so that whatever decides the packet afterwards — this module or the Python
        path, whose `_probe` then finds none due — leaves the same state."""
        if _not_a_host(src) or _not_a_host(dst):
            return PLAN_NOTHING
        if not self.probes_in_c:
            if self._probe_repeats(proto, src, sport, dst, dport, now_obj):
                return PLAN_NOTHING
            return PLAN_PYTHON
        # `_probe` weighs the due probes of each scan first, up to RESOLVE_PER_PACKET: done
        # here when that reports nothing (no detection) and leaves none due (else Python)
        for prog in (self.probe_portscan, self.probe_sweep):
            if prog is None:
                continue
            pending = (<ScanProg>prog).pending
            if len(pending) and (<object>pending[0]).due <= now_obj:
                quiet = self._resolve_quietly(<ScanProg>prog, now_obj, RESOLVE_PER_PACKET)
                if quiet > 0:
                    self.quiet_in_c += 1
                if quiet < 0:
                    self._flush()
                    quiet = (<ScanProg>prog).det.resolve_quietly(now_obj, RESOLVE_PER_PACKET)
                if not quiet:
                    return PLAN_PYTHON
                self.probes_resolved += 1
        answer = (proto, dst, dport, src, sport)
        cdef Py_hash_t answer_hash = hash(answer)
        cdef int plan = PLAN_NOTHING
        cdef int action
        for prog in (self.probe_portscan, self.probe_sweep):
            if prog is None:
                continue
            if kind is PROBE_ECHO and prog is self.probe_portscan:
                (<ScanProg>prog).action = SCAN_NOTHING  # (`_probe` with ports False)
                continue
            action = self._scan_plan(<ScanProg>prog, answer, answer_hash, src, dst, dport,
                                     now_obj, now, kind is PROBE_ECHO)
            if action < 0:
                return PLAN_PYTHON
            if action != SCAN_NOTHING:
                plan = PLAN_FILE
        if plan == PLAN_FILE:
            self.probe_kind = kind
            self.probe_answer = answer
            self.probe_answer_hash = answer_hash
        return plan

    cdef int _scan_plan(self, ScanProg prog, object answer, Py_hash_t answer_hash, object src,
                        object dst, object dport, object now_obj, double now,
                        bint echo=False) except -2:
        """One scan's part of _probe_plan: `_probe`'s tests (its index, its `ignore`) and
        ScanDetector.probe's up to the filing (the window, `fired`, the cap per key, the
        queue's room), planned in prog; -1: Python's (a full queue weighing its oldest
        early)."""
        cdef PyObject *found
        cdef bint new
        prog.action = SCAN_NOTHING
        prog.new_window = False
        prog.make_room = False
        prog.echo_counts = False
        prog.echo_credit = False
        prog.old_entry = None
        prog.key = None
        prog.target = None
        if ips_get_known(prog.index, answer, answer_hash) is not NULL:
            return SCAN_NOTHING  # a retransmission: its first probe stands for it
        if prog.ignore is not None and src in prog.ignore:
            return SCAN_NOTHING
        if prog.by_host:
            key = (src, dst)
            target = dport
        else:
            key = src
            target = dst
        found = PyDict_GetItem(prog.entries, key)  # (an OrderedDict reads as a dict)
        entry = None
        if found is NULL:
            new = True
        else:
            entry = <object>found
            if type(entry) is not SCAN_ENTRY:
                return -1
            start = _get(entry, E_START)
            within = prog.within
            if PyFloat_CheckExact(start) and PyFloat_CheckExact(within) and (
                PyFloat_CheckExact(now_obj)
            ):
                new = not (now - PyFloat_AS_DOUBLE(start) <= PyFloat_AS_DOUBLE(within))
            else:
                new = not (now_obj - start <= within)
        cdef Py_ssize_t per_key = prog.per_key
        if new:
            prog.new_window = True
            prog.old_entry = entry
            skip = 0 >= per_key  # a new window's counts: nothing waits yet
        else:
            if _get(entry, E_FIRED):
                return SCAN_NOTHING  # detected in this window already
            waiting = _get(entry, E_WAITING)
            skip = (_get(entry, E_PENDING) >= per_key and target in waiting) or (
                len(waiting) >= per_key
            )
        prog.key = key
        prog.target = target
        if echo:
            if type(prog.det).ECHO_COUNTS is True:
                prog.echo_counts = True
                skip = False  # (`not echo and (...)`: an echo is never skipped)
            elif type(prog.det).ECHO_COUNTS is not False:
                return -1
        if skip:
            prog.action = SCAN_SKIP
            return SCAN_SKIP
        if len(prog.pending) >= prog.probes:
            # ScanDetector._make_room: the oldest probe leaves; it is weighed early (Python)
            # when its window has others waiting and it waited EARLY seconds, else forgotten
            # (done here: _probe_file)
            if len(prog.pending) != prog.probes:
                return -1  # (a queue longer than its bound: never, but Python's to judge)
            oldest = prog.pending[0]
            if type(oldest) is not PROBE:
                return -1
            old_entry = _get(oldest, P_ENTRY)
            if type(old_entry) is not SCAN_ENTRY:
                return -1
            if _get(old_entry, E_PENDING) - 1 > 0 and (
                now_obj - (_get(oldest, P_DUE) - GRACE_SECONDS) >= EARLY_SECONDS
            ):
                return -1
            prog.make_room = True
        if prog.echo_counts and self._echo_credit_plan(prog, entry, new, target) < 0:
            return -1
        prog.old_entry = entry
        prog.action = SCAN_FILE
        return SCAN_FILE

    cdef int _echo_credit_plan(self, ScanProg prog, object entry, bint new,
                               object target) except -2:
        """ScanDetector._credit of an echo that counts as it is sent (W_FAILED for its
        target), planned in prog when it does not detect; -1: Python's (it would detect, the
        long window hears it, or a method or a value is not what this mirrors)."""
        cdef double old = 0.0, score = 0.0
        if not _quiet_methods_known(prog) or getattr(prog.det, "slow", None) is not None:
            return -1
        threshold = getattr(prog.det, "threshold", None)
        if not PyFloat_CheckExact(threshold):
            return -1
        if not new:
            weights = _get(entry, E_WEIGHTS)
            score_obj = _get(entry, E_SCORE)
            if type(weights) is not dict or not PyFloat_CheckExact(score_obj):
                return -1
            found = (<dict>weights).get(target, 0.0)
            if not PyFloat_CheckExact(found):
                return -1
            old = PyFloat_AS_DOUBLE(found)
            score = PyFloat_AS_DOUBLE(score_obj)
        if not W_FAILED > old:
            return 0  # (`weight <= old`: nothing credited)
        if score + (W_FAILED - old) >= PyFloat_AS_DOUBLE(threshold) - QUIET_EPS:
            return -1  # it would detect (fire: Python)
        prog.echo_credit = True
        prog.echo_old = old
        return 0

    cdef int _probe_file(self, const uint8_t *p, int proto, Py_ssize_t total,
                         Py_ssize_t payload_offset, int flags, object src, object sport,
                         object dst, object dport, object meta, bint meta_slots,
                         object now_obj, object dst_name, object flow=None) except -1:
        """_probe_plan's plan carried out, as ScanDetector.probe does it in each scan, in
        order: the window opened (the old one out of `entries`, or the oldest evicted when
        full: `evicted`), a probe skipped counted, or a Probe filed (its window's counts, the
        queue, the index) holding the flow FlowTable.open made (_refused_flow; or `flow`, an
        accepted SYN's, filed: _syn_first)."""
        cdef ScanProg prog
        answer = self.probe_answer
        for obj in (self.probe_portscan, self.probe_sweep):
            if obj is None:
                continue
            prog = <ScanProg>obj
            if prog.action == SCAN_NOTHING:
                continue
            key = prog.key
            target = prog.target
            entry = prog.old_entry
            prog.old_entry = prog.key = prog.target = None  # (not kept past the packet)
            if prog.new_window:
                entries = prog.entries
                if entry is not None:
                    del entries[key]  # the old window lives on in its pending probes
                elif len(entries) >= prog.memory:
                    entries.popitem(last=False)  # the oldest window goes first
                    prog.attrs["evicted"] = prog.attrs["evicted"] + 1
                entry = PyType_GenericAlloc(SCAN_ENTRY, 0)
                _set(entry, E_START, now_obj)
                _set(entry, E_WEIGHTS, {})
                _set(entry, E_SCORE, 0.0)
                _set(entry, E_FIRED, False)
                _set(entry, E_PENDING, 0)
                _set(entry, E_WAITING, {})
                entries[key] = entry
            if prog.action == SCAN_SKIP:
                prog.attrs["probes_skipped"] = prog.attrs["probes_skipped"] + 1
                continue
            if prog.make_room:
                self._forget_oldest(prog)
            if flow is None:
                flow = self._refused_flow(p, proto, total, payload_offset, flags, src, sport,
                                          dst, dport, meta, meta_slots, now_obj, dst_name)
            probe = PyType_GenericAlloc(PROBE, 0)
            _set(probe, P_DUE, now_obj + GRACE_SECONDS)
            _set(probe, P_ENTRY, entry)
            _set(probe, P_KEY, key)
            _set(probe, P_TARGET, target)
            _set(probe, P_FLOW, flow)
            _set(probe, P_KIND, self.probe_kind)
            _set(probe, P_ANSWER, answer)
            _set(probe, P_OUTCOME, UNKNOWN_OUTCOME)
            _set(probe, P_SIZE, total)
            _set(probe, P_COPIES, 0)
            if prog.echo_counts:
                # counted as it is sent: FAILED, its window credited (_echo_credit_plan)
                _set(probe, P_OUTCOME, FAILED_OUTCOME)
                if prog.echo_credit:
                    (<dict>_get(entry, E_WEIGHTS))[target] = W_FAILED_OBJ
                    _set(entry, E_SCORE,
                         PyFloat_AS_DOUBLE(_get(entry, E_SCORE)) + (W_FAILED - prog.echo_old))
            _set(entry, E_PENDING, _get(entry, E_PENDING) + 1)
            waiting = <dict>_get(entry, E_WAITING)
            found = PyDict_GetItem(waiting, target)
            waiting[target] = 1 if found is NULL else <object>found + 1
            prog.pending.append(probe)
            prog.index[answer] = probe
            self.probes_filed += 1
        self.probe_answer = None
        return 0

    cdef int _forget_oldest(self, ScanProg prog) except -1:
        """ScanDetector._make_room when its oldest probe is forgotten (_scan_plan checked
        that it is not weighed early): out of the queue and `_leave`, `probes_dropped`."""
        self._leave_oldest(prog)
        prog.attrs["probes_dropped"] = prog.attrs["probes_dropped"] + 1
        return 0

    cdef object _leave_oldest(self, ScanProg prog):
        """The oldest pending probe out of the queue and ScanDetector._leave done for it (out
        of the index, its window's counts of pending probes and of waiting targets down);
        returns the probe."""
        cdef PyObject *found
        probe = prog.pending.popleft()
        prog.index.pop(_get(probe, P_ANSWER), None)
        entry = _get(probe, P_ENTRY)
        _set(entry, E_PENDING, _get(entry, E_PENDING) - 1)
        waiting = <dict>_get(entry, E_WAITING)
        target = _get(probe, P_TARGET)
        found = PyDict_GetItem(waiting, target)
        left = (0 if found is NULL else <object>found) - 1
        if left > 0:
            waiting[target] = left
        else:
            waiting.pop(target, None)
        return probe

    cdef object _refused_flow(self, const uint8_t *p, int proto, Py_ssize_t total,
                              Py_ssize_t payload_offset, int flags, object src, object sport,
                              object dst, object dport, object meta, bint meta_slots,
                              object now_obj, object dst_name):
        """The Flow FlowTable.open makes for this packet (Flow.__init__, the TCP state of
        its first packet, the next id), as the engine's path leaves it once refused: no
        application state (parsing off; with parsing on, a TCP segment without payload,
        whose quiet state `release` closes: app_state None, app None), the responder's name
        passive DNS gave (`_start`, with parsing on), the sender's MAC, the forward
        candidate cache and its interfaces, discarded (Engine._discard: out of every table,
        END_DISCARDED). Its id is the one after those owed (_flush writes them)."""
        cdef dict table = self.table
        cdef unsigned long long next_id = <unsigned long long>table["_next_id"] + (
            <unsigned long long>self.owed_discarded + 1
        )
        # (next_id * mult + seed) & _ID_MASK: modulo 2**64, whose low 53 bits are those
        cdef unsigned long long flow_id = (next_id * self.id_mult + self.id_seed) & (
            (<unsigned long long>1 << 53) - 1
        )
        if meta_slots:
            iif = _get(meta, M_IIF)
            oif = _get(meta, M_OIF)
            mac = _get(meta, M_MAC)
        else:
            iif = meta.iif
            oif = meta.oif
            mac = meta.mac
        entry = <tuple>self.flowless_entry
        cdef int state = TCP_NONE
        if proto == PROTO_TCP:
            if flags & TCP_RST:
                state = TCP_CLOSED
            elif flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
                state = TCP_SYN_SENT
        cdef bint v4 = len(src) == 4
        flow = PyType_GenericAlloc(FLOW, 0)
        _set(flow, F_FAMILY, 4 if v4 else 6)
        _set(flow, F_PROTO, proto)
        _set(flow, F_SRC, src)
        _set(flow, F_SPORT, sport)
        _set(flow, F_DST, dst)
        _set(flow, F_DPORT, dport)
        _set(flow, F_FLOW_ID, flow_id)
        _set(flow, F_FIRST_SEEN, now_obj)
        _set(flow, F_LAST_SEEN, now_obj)
        _set(flow, F_PKTS_FWD, 1)
        _set(flow, F_PKTS_REV, 0)
        _set(flow, F_BYTES_FWD, total)
        _set(flow, F_BYTES_REV, 0)
        _set(flow, F_PAYLOAD_FWD, total - payload_offset)
        _set(flow, F_PAYLOAD_REV, 0)
        _set(flow, F_FLAGS_FWD, flags)
        _set(flow, F_FLAGS_REV, 0)
        _set(flow, F_REPLIED, False)
        _set(flow, F_TCP_STATE, state)
        _set(flow, F_CACHE_FWD, (self.policy, iif, oif, entry[0], entry[1], entry[2]))
        _set(flow, F_CACHE_REV, None)
        _set(flow, F_NAT, None)
        _set(flow, F_OFFLOADED, False)
        _set(flow, F_BACK_SINCE, FLOW_NEVER)
        _set(flow, F_USER, None)
        _set(flow, F_END_REASON, FLOW_DISCARDED)
        _set(flow, F_TTL, p[8] if v4 else p[7])
        _set(flow, F_MAC, mac)
        _set(flow, F_ICMP, self.refused_icmp)
        _set(flow, F_APP_PROTO, self.refused_app_proto)
        _set(flow, F_APP, self.refused_app)
        _set(flow, F_APP_STATE, None)
        _set(flow, F_DST_NAME, dst_name)
        _set(flow, F_IIF, iif)
        _set(flow, F_OIF, oif)
        _set(flow, F_SLOT, FLOW_GONE)
        return flow

    cdef object _flowless_rules(self, int proto, object src, object dst, object sport,
                                object dport, int flags, object iif, object oif):
        """The rules the engine would walk for this packet: CompiledPolicy.candidate_entry
        (candidate_bits, with the same memo reads and, on a miss, the same lookups, in the
        same order), then its walk by TCP flags byte; None when the bitset's candidates are
        not memoised (Python makes them)."""
        entry = self._candidate_entry(proto, src, dst, sport, dport, iif, oif)
        self.flowless_entry = entry  # (a new probe's flow keeps it: _refused_flow)
        if entry is None:
            return None
        return self._entry_walk(entry, flags)

    cdef object _candidate_entry(self, int proto, object src, object dst, object sport,
                                 object dport, object iif, object oif):
        """CompiledPolicy.candidate_entry of a TCP or UDP packet (candidate_bits, with the
        same memo reads and, on a miss, the same lookups, in the same order): the memoised
        (rules, offload state, walks), or None when the bitset's entry is not memoised
        (Python makes it) or is not of that shape. From the candidate cache when every read
        would find its key (see ips_cand_slot)."""
        cdef ips_cand_slot *slot = NULL
        cdef Py_ssize_t alen = PyBytes_GET_SIZE(src)
        cdef int c_sport = 0, c_dport = 0
        cdef Py_uhash_t h
        if self.cand_slots is not NULL and PyBytes_GET_SIZE(dst) == alen and (
            type(sport) is int and type(dport) is int
        ):
            c_sport = sport
            c_dport = dport
            # (the addresses' hashes are the bytes' own, kept in them: the flow's key made them)
            h = (<Py_uhash_t>hash(src)) ^ ((<Py_uhash_t>hash(dst)) * <Py_uhash_t>0x9E3779B97F4A7C15)
            h ^= ((<Py_uhash_t>c_sport << 16) | <Py_uhash_t>c_dport) * <Py_uhash_t>0xC2B2AE3D27D4EB4F
            h ^= <Py_uhash_t>proto
            h ^= h >> 29
            slot = &self.cand_slots[h & <Py_uhash_t>(IPS_CAND_SLOTS - 1)]
            if slot.entry is not NULL and slot.sport == c_sport and slot.dport == c_dport and (
                slot.proto == proto and slot.alen == alen
                and slot.iif == <PyObject *>iif and slot.oif == <PyObject *>oif
                and ips_same_address(slot.src, PyBytes_AS_STRING(src), alen)
                and ips_same_address(slot.dst, PyBytes_AS_STRING(dst), alen)
            ):
                if self._cand_still(slot, src, dst, sport, dport, iif, oif):
                    self.cand_hits += 1
                    return <object>slot.entry
        entry = self._candidate_lookup(proto, src, dst, sport, dport, iif, oif)
        if slot is not NULL and entry is not None and not self.memo_missed:
            self._cand_fill(slot, proto, src, dst, c_sport, c_dport, iif, oif, entry)
        return entry

    cdef bint _cand_still(self, ips_cand_slot *slot, object src, object dst, object sport,
                          object dport, object iif, object oif) except -1:
        """Whether the memos the slot read would each find its key again, with the value
        the slot noted (each memo whose tag moved read again, and its tag noted)."""
        cdef FamilyIndexes fx = self.family4 if slot.alen == 4 else self.family6
        if slot.reads >= READS_ADDRESSES:
            if not self._cand_memo_holds(slot, CAND_SRC, fx.src_memo, src):
                return False
            if not self._cand_memo_holds(slot, CAND_DST, fx.dst_memo, dst):
                return False
        if slot.reads >= READS_ALL:
            if not self._cand_memo_holds(slot, CAND_SPORT, fx.sport_memo, sport):
                return False
            if not self._cand_memo_holds(slot, CAND_DPORT, fx.dport_memo, dport):
                return False
            if ips_dict_version(<PyObject *>self.if_memo) != slot.versions[CAND_IFS]:
                if not self._cand_memo_holds(slot, CAND_IFS, self.if_memo, (iif, oif)):
                    return False
        cdef PyObject *found
        if ips_dict_version(<PyObject *>self.candidates_memo) != slot.versions[CAND_ENTRY]:
            found = PyDict_GetItem(self.candidates_memo, PyLong_FromLongLong(slot.bits))
            if found is not slot.entry:
                return False
            slot.versions[CAND_ENTRY] = ips_dict_version(<PyObject *>self.candidates_memo)
        return True

    cdef inline bint _cand_memo_holds(self, ips_cand_slot *slot, int which, dict memo,
                                      object key) except -1:
        """Whether `memo` holds `key` with the value slot.values[which] (its tag noted)."""
        cdef uint64_t version = ips_dict_version(<PyObject *>memo)
        if version == slot.versions[which]:
            return True
        cdef PyObject *found = PyDict_GetItem(memo, key)
        cdef long long value
        if found is NULL or not _narrow(<object>found, &value) or value != slot.values[which]:
            return False
        slot.versions[which] = version
        return True

    cdef int _cand_fill(self, ips_cand_slot *slot, int proto, object src, object dst,
                        int sport, int dport, object iif, object oif, object entry) except -1:
        """The slot made for what _candidate_lookup just read (every memo found its key:
        their values, the bitset and the memos' tags are those it left in cand_*)."""
        cdef long long bits
        if self.bits_are_wide or not self.cand_narrow:
            return 0  # (a wide bitset: not cached)
        Py_INCREF(entry)
        Py_INCREF(iif)
        Py_INCREF(oif)
        Py_XDECREF(slot.entry)
        Py_XDECREF(slot.iif)
        Py_XDECREF(slot.oif)
        slot.entry = <PyObject *>entry
        slot.iif = <PyObject *>iif
        slot.oif = <PyObject *>oif
        slot.proto = proto
        slot.alen = PyBytes_GET_SIZE(src)
        slot.sport = sport
        slot.dport = dport
        memcpy(slot.src, PyBytes_AS_STRING(src), slot.alen)
        memcpy(slot.dst, PyBytes_AS_STRING(dst), slot.alen)
        slot.reads = self.cand_reads
        slot.bits = self.bits_narrow
        cdef FamilyIndexes fx = self.family4 if slot.alen == 4 else self.family6
        cdef int i
        for i in range(5):
            slot.values[i] = self.cand_values[i]
        slot.versions[CAND_SRC] = ips_dict_version(<PyObject *>fx.src_memo)
        slot.versions[CAND_DST] = ips_dict_version(<PyObject *>fx.dst_memo)
        slot.versions[CAND_SPORT] = ips_dict_version(<PyObject *>fx.sport_memo)
        slot.versions[CAND_DPORT] = ips_dict_version(<PyObject *>fx.dport_memo)
        slot.versions[CAND_IFS] = ips_dict_version(<PyObject *>self.if_memo)
        slot.versions[CAND_ENTRY] = ips_dict_version(<PyObject *>self.candidates_memo)
        return 0

    cdef inline object _cand_value(self, int which, object value):
        """A memo's value on its way into the bitset, noted for _cand_fill."""
        if not _narrow(value, &self.cand_values[which]):
            self.cand_narrow = False
        return value

    cdef object _candidate_lookup(self, int proto, object src, object dst, object sport,
                                  object dport, object iif, object oif):
        """_candidate_entry made as CompiledPolicy.candidate_entry makes it (memo_missed:
        whether a read missed, and Python looked its key up)."""
        cdef PyObject *found
        cdef FamilyIndexes fx = self.family4 if len(src) == 4 else self.family6
        self.memo_missed = False
        self.cand_narrow = True
        self.cand_reads = READS_PROTO
        found = PyDict_GetItem(fx.proto_bits, proto)
        self._bits_start(fx.any_proto)
        self._bits_or(<object>found if found is not NULL else 0)
        if self._bits_nonzero():
            # (src, then dst: the order of the lookups; the order of the & is the value's)
            self.cand_reads = READS_ADDRESSES
            self._bits_and(self._cand_value(
                CAND_SRC, self._memo_or_lookup(fx.src_memo, fx.src_lookup, src)))
            self._bits_and(self._cand_value(
                CAND_DST, self._memo_or_lookup(fx.dst_memo, fx.dst_lookup, dst)))
            if self._bits_nonzero():
                # TCP and UDP are PORT_PROTOS (and a packet of this module no fragment)
                self.cand_reads = READS_ALL
                self._bits_and(self._cand_value(
                    CAND_SPORT, self._memo_or_lookup(fx.sport_memo, fx.sport_lookup, sport)))
                self._bits_and(self._cand_value(
                    CAND_DPORT, self._memo_or_lookup(fx.dport_memo, fx.dport_lookup, dport)))
                if iif is not self.last_iif or oif is not self.last_oif:
                    self.last_iif = iif
                    self.last_oif = oif
                    self.last_ifs = (iif, oif)
                found = PyDict_GetItem(self.if_memo, self.last_ifs)
                if found is NULL:
                    self._flush()
                    self.memo_missed = True
                    if_bits = self.policy._interface_bits(iif, oif)
                else:
                    if_bits = <object>found
                self._bits_and(self._cand_value(CAND_IFS, if_bits))
        else:
            self._bits_start(0)
        bits = self.bits_wide if self.bits_are_wide else PyLong_FromLongLong(self.bits_narrow)
        found = PyDict_GetItem(self.candidates_memo, bits)
        if found is NULL:
            return None
        entry = <object>found
        if type(entry) is not tuple or len(<tuple>entry) != 3:
            return None
        return entry

    cdef object _entry_walk(self, tuple entry, int flags):
        """The rules of a candidate entry a packet with this TCP flags byte walks (the
        engine's `walks[flags]`, made by CompiledPolicy.walk when missing); None when they are
        not a tuple."""
        rules = entry[0]
        walks = entry[2]
        if type(rules) is not tuple:
            return None
        if walks is None:
            return rules
        walk = walks[flags]
        if walk is None:
            self._flush()
            walk = self.policy.walk(rules, walks, flags)  # made once per flags byte, kept
        if type(walk) is not tuple:
            return None
        return walk

    cdef int _walk(self, list progs, const uint8_t *p, Py_ssize_t total,
                   Py_ssize_t payload_offset, int flags, int icmp_type, int icmp_code,
                   bint replied, object src, object dst, object flow,
                   double now) except -2:
        """Walk the candidate rules `progs` in order, as the engine's rule loop would, without
        changing anything: -1 when a rule reached needs Python; otherwise 0, with
        walk_matched the first terminal rule that matches (None: none does, the default
        decides), and walk_bucket, walk_tokens its `limit` bucket and that bucket's tokens
        after this packet (None: no limit). `flow` is None for a packet of no flow (its
        first, refused: a `limit per flow` then goes to Python)."""
        cdef RuleProg prog
        cdef bint ok
        cdef double tokens
        self.walk_matched = None
        self.walk_bucket = None
        self.walk_tokens = 0.0
        self.walk_new_buckets = None
        for prog in progs:
            if prog.kind == RULE_NEVER:
                if self.walk_frag:
                    return -1  # (a `fragment` rule, which a first fragment matches: Python)
                continue
            if prog.kind == RULE_BAIL:
                return -1
            if prog.has_icmp:
                if icmp_type < 0 or not prog.icmp_types[icmp_type]:
                    continue
                if prog.icmp_code >= 0 and icmp_code != prog.icmp_code:
                    continue
            if prog.has_flags and (flags & prog.flags_mask) != prog.flags_value:
                continue
            if prog.length_op:
                if not _length_ok(prog.length_op, total, prog.length_lo, prog.length_hi):
                    continue
            if prog.has_states:
                if not (prog.want_est if replied else prog.want_new):
                    continue
            if prog.contains:
                ok = True
                for pattern, nocase in prog.contains:
                    if not _contains(p, payload_offset, total, <bytes>pattern, nocase):
                        ok = False
                        break
                if not ok:
                    continue
                # Found in the payload: whether it lies within the rule's depth, or the flow
                # is one whose payload the rule skips (encrypted), is the compiler's check.
                return -1
            # matched
            if not prog.terminal or prog.decision is None:
                return -1  # alerts, logs, rejects, rewrites: Python
            if prog.limit_per != LIMIT_NONE:
                bucket = _limit_bucket(prog, src, dst, flow)
                if bucket is None:
                    if self.walk_new_keys and self._limit_new_key(prog, src, dst):
                        self.walk_matched = prog  # (its new bucket: walk_new_*)
                        return 0
                    return -1  # a new key (or per flow of no flow): Python makes its bucket
                tokens = _limit_take(prog, <list>bucket, now)
                if not tokens >= 0.0:
                    return -1  # over the rate: its `else`, or the rules after it (Python)
                self.walk_bucket = bucket
                self.walk_tokens = tokens
            self.walk_matched = prog
            return 0
        return 0

    cdef bint _limit_new_key(self, RuleProg prog, object src, object dst) except -1:
        """Whether TokenBuckets.take would make this packet's bucket (a key it has none for,
        per src, dst or rule, in a table with room: `[burst - 1, now]`, a token taken),
        noted in walk_new_* for the caller to make once decided (only callers that set
        walk_new_keys do)."""
        cdef int per = prog.limit_per
        if prog.limit_max_keys < 0 or len(prog.limit_buckets) >= prog.limit_max_keys:
            return False  # (a full table shrinks first: Python)
        if per == LIMIT_SRC:
            key = src
        elif per == LIMIT_DST:
            key = dst
        elif per == LIMIT_RULE:
            key = None
        else:
            return False  # per flow: a flow of no flow has no id yet
        if PyDict_GetItem(prog.limit_buckets, key) is not NULL:
            return False  # (a bucket that is not a pair of floats: Python's)
        self.walk_new_buckets = prog.limit_buckets
        self.walk_new_key = key
        self.walk_new_tokens = prog.limit_burst - 1.0
        return True

    cdef int _limit_new_apply(self, object now_obj) except -1:
        """The bucket _limit_new_key noted, made as TokenBuckets.take makes it."""
        if self.walk_new_buckets is not None:
            (<dict>self.walk_new_buckets)[self.walk_new_key] = [self.walk_new_tokens, now_obj]
            self.walk_new_buckets = None
            self.walk_new_key = None
        return 0

    cdef int _offload_kind(self, object flow, int proto, bint has_payload,
                           double now) except -1:
        """ips/engine/offload.py's offload_kind for a packet of this path (an established
        TCP flow without SYN, FIN or RST, or UDP; no NAT; no application-layer work left),
        and the engine's counting of a newly offloaded flow."""
        if proto == PROTO_TCP and not has_payload:
            return 0
        fwd_cache = _get(flow, F_CACHE_FWD)
        rev_cache = _get(flow, F_CACHE_REV)
        if fwd_cache is None or rev_cache is None:
            return 0
        if fwd_cache[0] is not self.policy or rev_cache[0] is not self.policy:
            return 0
        fwd_state = fwd_cache[4]
        rev_state = rev_cache[4]
        if not (fwd_state and rev_state):
            return 0
        if fwd_state == _OFFLOAD_WHEN_APP_DONE or rev_state == _OFFLOAD_WHEN_APP_DONE:
            app = _get(flow, F_APP)
            if _get(flow, F_APP_PROTO) is None or not (app is None or app.client_done):
                return 0
        # A direction whose candidates wait on a plan (OFFLOAD_LATER: payload depths, the
        # application protocol) lets go once every rule of its plan has.
        if fwd_state == _OFFLOAD_LATER and not self._plan_met(fwd_cache[3], flow, True):
            return 0
        if rev_state == _OFFLOAD_LATER and not self._plan_met(rev_cache[3], flow, False):
            return 0
        if now - <double>_get(flow, F_BACK_SINCE) < self.reoffload_after:
            return 0
        if not _get(flow, F_OFFLOADED):
            _set(flow, F_OFFLOADED, True)
            counts = self.stats_dict
            counts["offloaded"] = counts["offloaded"] + 1
        return OFFLOAD_FLOW


    cdef int _plan_met(self, object candidates, object flow, bint fwd) except -1:
        """ips/engine/offload.py's needs_met of the plan CompiledPolicy.plan_of gives for
        these candidates (the same calls, on the same objects, in the same order: plan_of
        may make the plan again and keep it, as it does for the Python path)."""
        self._flush()
        plan = self.policy.plan_of(candidates)
        proto = _get(flow, F_APP_PROTO)
        seen = _get(flow, F_PAYLOAD_FWD) if fwd else _get(flow, F_PAYLOAD_REV)
        for protos, encrypted_out, depth, wants_app in plan:
            if proto is not None:  # named ("" for a flow without an application layer)
                if protos is not None and proto not in protos:
                    continue
                if encrypted_out and proto in ENCRYPTED_APPS:
                    continue
            if depth is None:
                if not wants_app:
                    return 0
            elif depth == UNLIMITED_DEPTH or seen < depth:
                return 0
            if wants_app:
                app = _get(flow, F_APP)
                if proto is None or not (app is None or app.client_done):
                    return 0
        return 1


    # ---- an accepted SYN of no flow: its flow filed here -------------------------------------

    cdef _refresh_syn_first(self, engine):
        """What _syn_first reads, checked to be what it mirrors; syn_first_on False (every
        accepted SYN of no flow goes to Python) when anything is not."""
        self.syn_first_on = False
        self.syn_sent_timeout = None
        self.default_accepts = False
        self.syn_quiet_state = None
        if not self.flowless_on or self.table is None:
            return  # what _flowless reads is not what it mirrors (_refresh_flowless)
        table = self.table
        timeouts = table["_tcp_timeouts"]
        if len(timeouts) <= TCP_SYN_SENT or type(timeouts[TCP_SYN_SENT]) is not float:
            return
        if type(table.get("_flows")) is not dict or table["_flows"] is not self.flows:
            return
        mult = table.get("_id_mult")
        seed = table.get("_id_seed")
        if not _flow_ids_known(table) or not (0 <= mult < 2 ** 63) or not (
            0 <= seed < 2 ** 63
        ) or _FLOW_ID_MASK != 2 ** 53 - 1:
            return
        # (the same values _refresh_probes keeps, for _refused_flow's flow id)
        self.id_mult = mult
        self.id_seed = seed
        if type(self.app) is not APP_INSPECTOR:
            return  # (another inspector may start a flow otherwise)
        self.default_accepts = self.default_fast and engine._default.verdict == ACCEPT
        # With parsing on, a SYN's flow holds the inspector's quiet state (_start, _quiet):
        # made here with its four slots set as its __init__ and _quiet set them.
        quiet = getattr(engine.app, "tcp_quiet_state", None)
        if type(quiet) is type and getattr(quiet, "__slots__", None) == (
            "client_base", "client_fin", "server_base", "server_fin"
        ) and quiet.__dictoffset__ == 0 and quiet.__base__ is object:
            self.quiet_client_base_at = _offset(quiet, "client_base")
            self.quiet_server_base_at = _offset(quiet, "server_base")
            self.quiet_client_fin_at = _offset(quiet, "client_fin")
            self.quiet_server_fin_at = _offset(quiet, "server_fin")
            self.syn_quiet_state = quiet
        self.syn_sent_timeout = timeouts[TCP_SYN_SENT]
        self.syn_first_on = True

    cdef object _syn_first(self, const uint8_t *p, int proto, Py_ssize_t total,
                           Py_ssize_t payload_offset, int sport, int flags, object src,
                           object dst, object py_sport, object py_dport, object key,
                           Py_hash_t key_hash, object meta, bint meta_slots, object now_obj,
                           double now, RuleProg matched, object probe_kind, bint answers,
                           tuple floods, int app_look):
        """The Decision of a SYN (no ACK, FIN or RST) of no flow that the rules _flowless
        walked accept (`matched`, or the default when None), with its flow filed as the
        engine's path files it; None: nothing changed (Python decides). _flowless checked
        the blocks, the detectors' declaration for a first SYN (`answers`: it answers a
        pending probe; `probe_kind`: a probe the scans may file; `floods`: synflood's
        buckets, which have a token or room for a new key), the flow table (no unsettled
        flow, not full) and found the candidates (flowless_entry). Done here, in the order
        Python does it:

          * FlowTable.open: the next id, `created` and `active` counted, the Flow made
            (_refused_flow's, kept: no end_reason, filed) in state SYN_SENT;
          * with parsing on (a SYN without payload), AppInspector.inspect's first look:
            passive DNS's name of the responder (`_start`), the quiet state with the
            client's start after the SYN's sequence number (`_quiet`);
          * Detectors.observe (`_tcp`): the answer noted, the probe filed holding this flow
            (_probe_plan, _probe_file: the due probes weighed first when that reports
            nothing), synflood's buckets taken;
          * the engine: the forward candidate cache and interfaces (_refused_flow), the
            rule's hits and `limit` bucket, its Decision (not replied: no offload);
          * FlowTable.settle: both keys in the table, the flow on the timer wheel under the
            deadline of SYN_SENT (its slot made when missing), at the end of the unreplied
            queue, which must not need compacting (Python compacts it);
          * EngineStats.packets and verdicts (owed, as for every packet decided here).

        Not here: a SYN with payload while parsing is on (the inspector reads it), a rule
        or default that rejects, a Decision not prebuilt, a timer slot that cannot be made
        here, a probe plan that needs Python (_probe_plan)."""
        if not self.syn_first_on or proto != PROTO_TCP or flags & SYN_ACK_FIN_RST != TCP_SYN:
            return None
        if matched is None:
            if not self.default_accepts:
                return None  # a default that rejects (a reply is made): Python
            decision = self.default_decision
        else:
            if not matched.accepts or matched.decision is None:
                return None
            decision = matched.decision
        entry = self.flowless_entry
        if type(entry) is not tuple or len(<tuple>entry) != 3:
            return None
        cdef bint app_on = self.app.enabled
        if app_on and (
            self.syn_quiet_state is None or app_look != APP_LOOK_NONE or payload_offset < total
        ):
            return None  # a SYN with payload: the inspector reads it (Python)
        # ---- FlowTable.open and settle: nothing made room for, nothing compacted
        cdef dict table = self.table
        if table["_opened"] is not None:
            return None
        active = table["_active"]
        if active >= table["max_flows"]:
            return None  # open makes room first: expiry, eviction (Python)
        slot = self._slot_of(now + <double>self.syn_sent_timeout)  # (settle's deadline)
        if slot is None:
            return None
        wheel = table["_wheel"]
        cdef PyObject *found = PyDict_GetItem(wheel, slot)
        # (held by a reference of its own: Python code may run before the flow is filed)
        bucket = None if found is NULL else <object>found
        if bucket is None:
            if not self.slots_in_c:
                return None
        elif type(bucket) is not set:
            return None
        unreplied = table["_unreplied"]
        if len(unreplied) + self.owed_discarded + 1 > 2 * (active + 1) + 1024:
            return None  # settle compacts the queue (Python)
        # ---- the detectors: the probe this SYN is (the due probes weighed first)
        cdef int probe_plan = PLAN_NOTHING
        if probe_kind is not None:
            probe_plan = self._probe_plan(probe_kind, proto, src, py_sport, dst, py_dport,
                                          now_obj, now)
            if probe_plan == PLAN_PYTHON:
                return None
        # The floods' buckets last: nothing that may still send the packet to Python (and
        # no Python code) runs between their reading and their update.
        cdef BucketUpdate updates[MAX_FLOODS]
        cdef int n_updates = 0
        if floods is not None and len(floods) > 0:
            n_updates = _floods_take(floods, src, dst, now, updates, True)
            if n_updates < 0:
                return None
        # ---- decided. What is owed is written first: the flow's id follows those of the
        # flows discarded before it, and its place in the unreplied queue their stand-ins.
        self._flush()
        flow = self._refused_flow(p, proto, total, payload_offset, flags, src, py_sport, dst,
                                  py_dport, meta, meta_slots, now_obj, None)
        _set(flow, F_END_REASON, None)
        table["_next_id"] = table["_next_id"] + 1
        table["_active"] = active + 1
        table["_created"] = table["_created"] + 1
        cdef Py_ssize_t l4
        cdef uint32_t seq
        if app_on:
            # AppInspector._start (the responder's name) and _quiet (the client's start)
            names = self.app.names
            if names is not None and _name_of_does_something(names, dst):
                _set(flow, F_DST_NAME, names.name_of(dst, now_obj))
            state = PyType_GenericAlloc(self.syn_quiet_state, 0)
            l4 = 20 if (p[0] >> 4) == 4 else 40
            seq = ((<uint32_t>p[l4 + 4] << 24) | (<uint32_t>p[l4 + 5] << 16)
                   | (<uint32_t>p[l4 + 6] << 8) | <uint32_t>p[l4 + 7])
            _set(state, self.quiet_client_base_at, (<object>seq + 1) & 0xFFFFFFFF)
            _set(state, self.quiet_server_base_at, -1)
            _set(state, self.quiet_client_fin_at, False)
            _set(state, self.quiet_server_fin_at, False)
            _set(flow, F_APP_STATE, state)
        if answers:
            self._note_answer(key, key_hash, now_obj)
        if probe_plan == PLAN_FILE:
            self._probe_file(p, proto, total, payload_offset, flags, src, py_sport, dst,
                             py_dport, meta, meta_slots, now_obj, _get(flow, F_DST_NAME), flow)
        _floods_apply(updates, n_updates, now_obj)
        # FlowTable.settle: its two keys, its timer slot, its place among the unreplied
        self._settle_filed(flow, key, slot, bucket, unreplied, matched, decision, now_obj)
        self.syn_flows += 1
        return decision


cdef object _limit_bucket(RuleProg prog, object src, object dst, object flow):
    """The bucket TokenBuckets.take would update for this packet (its key as
    ips/engine/engine.py `_limit_key` makes it), or None when there is none yet or it is not
    a pair of floats."""
    cdef int per = prog.limit_per
    if per == LIMIT_SRC:
        key = src
    elif per == LIMIT_DST:
        key = dst
    elif per == LIMIT_FLOW:
        if flow is None:
            return None  # a packet of no flow: its flow's id is Python's to make
        key = _get(flow, F_FLOW_ID)
    else:
        key = None
    cdef PyObject *found = PyDict_GetItem(prog.limit_buckets, key)
    if found is NULL:
        return None
    bucket = <object>found
    if type(bucket) is not list or PyList_GET_SIZE(bucket) < 2:
        return None
    if not PyFloat_CheckExact(<object>PyList_GET_ITEM(bucket, 0)):
        return None
    if not PyFloat_CheckExact(<object>PyList_GET_ITEM(bucket, 1)):
        return None
    return bucket


cdef double _limit_take(RuleProg prog, list bucket, double now):
    """TokenBuckets.take without its writes: the bucket's tokens after taking one, or -1
    when it has none (over the rate)."""
    cdef double tokens = ips_refill(
        PyFloat_AS_DOUBLE(<object>PyList_GET_ITEM(bucket, 0)),
        now - PyFloat_AS_DOUBLE(<object>PyList_GET_ITEM(bucket, 1)),
        prog.limit_rate,
    )
    if tokens > prog.limit_burst:
        tokens = prog.limit_burst
    if tokens >= 1.0:
        return tokens - 1.0
    return -1.0




cdef inline bint _length_ok(int op, Py_ssize_t n, int lo, int hi):
    if op == LEN_EQ:
        return n == lo
    if op == LEN_NE:
        return n != lo
    if op == LEN_LT:
        return n < lo
    if op == LEN_LE:
        return n <= lo
    if op == LEN_GT:
        return n > lo
    if op == LEN_GE:
        return n >= lo
    return lo <= n <= hi


cdef bint _contains(const uint8_t *p, Py_ssize_t start, Py_ssize_t end, bytes pattern,
                    bint nocase):
    """Whether the payload p[start:end] holds `pattern` (ASCII case folded with nocase, as
    bytes.lower() folds it)."""
    cdef Py_ssize_t plen = PyBytes_GET_SIZE(pattern)
    if nocase:
        payload = PyBytes_FromStringAndSize(<const char *>p + start, end - start)
        return pattern in payload.lower()
    if plen == 0:
        return True
    return memmem(p + start, end - start, PyBytes_AS_STRING(pattern), plen) is not NULL


# run_pcap's reasons to hand back to its caller
STOP_END = 0        # no complete record header left (the caller looks at what remains)
STOP_RECORD = 1     # a record the caller reads itself: empty, implausibly long, or cut short
STOP_TICK = 2       # the record at hand was judged and its time reached the next tick
STOP_EFFECTS = 3    # the record at hand was judged and its Decision carries effects
STOP_BUDGET = 4     # `budget` records judged (the caller updates its progress)
STOP_TICKED = 5     # the record at hand was judged, and `tick` called gave events


def run_pcap(FastPath fast, object slow, object slow_packet, const uint8_t[::1] buf,
             Py_ssize_t pos,
             int linktype, long long divisor, long long max_record, object meta,
             double next_tick, double last_ts, Py_ssize_t budget, object tick=None):
    """Judge the classic little-endian pcap records of `buf` from byte `pos`, each at its own
    time, as ips/replay.py's loop would through Engine.handle: the fast path first, then
    `slow_packet` (Engine.handle_packet) for a packet it decoded but did not decide, `slow`
    (Engine.handle_python) for one it did not decode. `next_tick` is the time of the
    next tick (NaN: not set yet, the first record sets it to its time + 1 s).

    Returns (reason, pos after the last record judged, records judged, the latest time seen,
    next_tick, the time of the last record, its Decision when reason is STOP_EFFECTS or
    STOP_TICK else None).

    With `tick` (Engine.tick), a record that reaches the next tick is followed by the tick
    here, as the caller would make it (`tick(time)`, the next one a second later): a tick
    without events goes on to the next record; one with events hands them back
    (STOP_TICKED, the events in the Decision's place). Without, the caller ticks
    (STOP_TICK)."""
    if buf.shape[0] == 0:
        return (STOP_END, pos, 0, last_ts, next_tick, 0.0, None)
    try:
        return _run_pcap(fast, slow, slow_packet, buf, pos, linktype, divisor, max_record,
                         meta, next_tick, last_ts, budget, tick)
    finally:
        fast._flush()  # what the fast path owes, written before its caller reads anything


cdef tuple _run_pcap(FastPath fast, object slow, object slow_packet, const uint8_t[::1] buf,
                     Py_ssize_t pos, int linktype, long long divisor, long long max_record,
                     object meta, double next_tick, double last_ts, Py_ssize_t budget,
                     object tick):
    cdef Py_ssize_t n = buf.shape[0]
    cdef Py_ssize_t count = 0
    cdef const uint8_t *p
    cdef uint32_t sec, frac, caplen
    cdef double ts = 0.0
    cdef object decision = None
    cdef object ts_obj
    cdef PyObject *effects
    while True:
        if count >= budget:
            return (STOP_BUDGET, pos, count, last_ts, next_tick, ts, None)
        if pos + 16 > n:
            return (STOP_END, pos, count, last_ts, next_tick, ts, None)
        p = &buf[pos]
        sec = p[0] | (p[1] << 8) | (p[2] << 16) | (<uint32_t>p[3] << 24)
        frac = p[4] | (p[5] << 8) | (p[6] << 16) | (<uint32_t>p[7] << 24)
        caplen = p[8] | (p[9] << 8) | (p[10] << 16) | (<uint32_t>p[11] << 24)
        if caplen == 0 or caplen > max_record or pos + 16 + <Py_ssize_t>caplen > n:
            return (STOP_RECORD, pos, count, last_ts, next_tick, ts, None)
        ts = <double>sec + <double>frac / <double>divisor
        ts_obj = ts
        p += 16
        try:
            decision = fast._handle(p, caplen, linktype, meta, ts_obj)
        except Exception:
            # A bug of the fast path: counted and the packet left to Python, as
            # Engine.handle does inline, rather than ending the replay (`slow` is the
            # engine's handle_python, whose engine counts it).
            engine = getattr(slow, "__self__", None)
            if engine is not None:
                engine.fast_failures += 1
            decision = None
        if decision is None:
            fast._flush()
            decision = slow(PyBytes_FromStringAndSize(<const char *>p, caplen), meta, ts_obj)
        elif type(decision) is PACKET:
            fast._flush()
            decision = slow_packet(decision, meta, ts_obj)
        pos += 16 + caplen
        count += 1
        if ts > last_ts:
            last_ts = ts
        # decision.effects: read in its slot when it is a Decision (an empty tuple is false)
        if type(decision) is DECISION:
            effects = (<PyObject **>((<char *><PyObject *>decision) + D_EFFECTS))[0]
            if effects is NULL:
                decision.effects  # (not set: the AttributeError Python would raise)
            if <object>effects is not EMPTY and <object>effects:
                return (STOP_EFFECTS, pos, count, last_ts, next_tick, ts, decision)
        elif decision.effects:
            return (STOP_EFFECTS, pos, count, last_ts, next_tick, ts, decision)
        if next_tick != next_tick:  # NaN: the first record
            next_tick = ts + 1.0
        elif ts >= next_tick:
            if tick is None:
                return (STOP_TICK, pos, count, last_ts, next_tick, ts, None)
            fast._flush()  # (what the fast path owes, written before the tick reads anything)
            ended = tick(ts_obj)
            next_tick = ts + 1.0
            if ended:
                return (STOP_TICKED, pos, count, last_ts, next_tick, ts, ended)


# ---- the inspector's first look at a refused TCP segment with payload -------------------------
# With application parsing on, a TCP flow's first payload starts the inspector's work
# (ips/app/inspect.py: `_start`, `_wake`, the reassembler's `add_packet`, `_detect_stream`).
# For a first packet the policy refuses, the flow is discarded at once (Engine._discard,
# which calls `release`), so of that work only counters stay, and which ones depends on the
# stream detection's answer for the segment's payload (the whole stream so far):
#
#   * not enough bytes to tell (ips/app/detect.py answers None) and no FIN or RST: the
#     bytes are held until `release`, which counts the flow and its bytes in
#     AppCounters.released_flows and released_bytes and gives the memory back;
#   * None with a FIN or RST, or "unknown": AppCounters.protocols["unknown"] + 1 and the
#     streams closed at once (nothing held at the release);
#   * a protocol: its parser reads the client's side (and may count a malformed or an
#     incomplete message, learn a DNS answer, make DNS events), and the release may count
#     the flow's owed events: Python's.
#
# That holds when the reassembler takes the payload whole and in order: a payload shorter
# than its bound (`limit`; a direction that reaches it is complete, which changes the
# answer) that fits under its memory cap (else "memcap" is counted and nothing kept). The
# stream detection is ips/app/detect.py's `detect_stream` ported to C (ips_detect_stream,
# the same tests in the same order); tests/pure/test_fastpath_differential.py holds the two
# together on generated bytes, and the refused traffic's counters to the Python engine's.

from collections import Counter as _Counter

from ips.app.detect import APP_UNKNOWN as _APP_UNKNOWN
from ips.app.inspect import AppCounters as _AppCounters, AppInspector as _AppInspector
from ips.app import http as _http
from ips.app import tls as _tls
from ips.app.detect import APP_HTTP as _APP_HTTP, APP_TLS as _APP_TLS
from ips.app.passive_dns import PassiveDns as _PassiveDns
from ips.app.reassembly import Reassembler as _Reassembler
from ips.core.flow import _ID_MASK

cdef type APP_INSPECTOR = _AppInspector
cdef type APP_COUNTERS = _AppCounters
cdef type REASSEMBLER = _Reassembler
cdef type COUNTER = _Counter
cdef type PASSIVE_DNS = _PassiveDns
cdef object FLOW_ID_MASK = _ID_MASK
# The inspector's state of a TCP flow whose streams it reads (None: not named; such flows'
# bare ACKs go to Python)
cdef object TCP_READING = getattr(_AppInspector, "tcp_reading_state", None)
cdef object APP_UNKNOWN = _APP_UNKNOWN
cdef object APP_TLS = _APP_TLS
cdef object APP_HTTP = _APP_HTTP
# What the TLS and HTTP parsers answer for the two first segments read here without them
# (see _app_first_look): a ServerHello read as a client's stream, an HTTP response read as
# requests; checked against the bounds those answers rely on (else: the inspector reads).
cdef object TLS_UNEXPECTED = _tls.M_UNEXPECTED_MESSAGE.reason
cdef bint TLS_SERVER_FIRST_OK = _tls.MAX_RECORD >= 16384 + 2048
cdef object HTTP_BAD_REQUEST_LINE = _http.M_BAD_REQUEST_LINE.reason
cdef object HTTP_TOO_MANY_HEADERS = _http.M_TOO_MANY_HEADERS.reason
cdef Py_ssize_t HTTP_MAX_HEADER_BYTES = _http.MAX_HEADER_BYTES
cdef Py_ssize_t HTTP_MAX_HEADERS = _http.MAX_HEADERS

cdef extern from *:
    """
    /* ips/app/detect.py detect_stream, on the bytes d[0:n]: the same tests in the same
       order. */
    enum {
        IPS_DET_NEED_MORE = 0,  /* None: too few bytes yet */
        IPS_DET_UNKNOWN = 1,
        IPS_DET_TLS = 2,
        IPS_DET_HTTP = 3,
        IPS_DET_SSH = 4,
        IPS_DET_DNS = 5,
        IPS_DET_QUIC = 6
    };

    /* HTTP_METHODS, each followed by a space (_METHOD_PREFIXES) */
    static const char *const ips_http_methods[] = {
        "GET ", "POST ", "HEAD ", "PUT ", "DELETE ", "OPTIONS ", "CONNECT ", "TRACE ",
        "PATCH ", "PROPFIND ", "PROPPATCH ", "MKCOL ", "COPY ", "MOVE ", "LOCK ", "UNLOCK ",
        "SEARCH ",
    };
    #define IPS_N_METHODS ((int)(sizeof(ips_http_methods) / sizeof(ips_http_methods[0])))
    #define IPS_LONGEST_METHOD 10  /* len(b"PROPPATCH ") */

    /* word.startswith(d[0:n]) */
    static int ips_prefix_of(const uint8_t *d, Py_ssize_t n, const char *word) {
        size_t len = strlen(word);
        return (size_t)n <= len && memcmp(word, d, (size_t)n) == 0;
    }

    /* d[0:n].startswith(word) */
    static int ips_starts_with(const uint8_t *d, Py_ssize_t n, const char *word) {
        size_t len = strlen(word);
        return (size_t)n >= len && memcmp(d, word, len) == 0;
    }

    static unsigned ips_u16(const uint8_t *d) { return ((unsigned)d[0] << 8) | d[1]; }

    /* _HTTP_FIRST: the first letters of the methods, and "H" */
    static int ips_http_first(uint8_t b) {
        int i;
        if (b == 'H') return 1;
        for (i = 0; i < IPS_N_METHODS; i++)
            if ((uint8_t)ips_http_methods[i][0] == b) return 1;
        return 0;
    }

    static int ips_http_or_unknown(const uint8_t *d, Py_ssize_t n) {
        int i;
        if (n < IPS_LONGEST_METHOD) {
            for (i = 0; i < IPS_N_METHODS; i++)
                if (ips_prefix_of(d, n, ips_http_methods[i])) return IPS_DET_NEED_MORE;
            if (ips_prefix_of(d, n, "HTTP/1.")) return IPS_DET_NEED_MORE;
        }
        return IPS_DET_UNKNOWN;
    }

    static int ips_http(const uint8_t *d, Py_ssize_t n) {
        int i;
        if (ips_starts_with(d, n, "HTTP/1.")) return IPS_DET_HTTP;
        for (i = 0; i < IPS_N_METHODS; i++)
            if (ips_starts_with(d, n, ips_http_methods[i])) return IPS_DET_HTTP;
        return ips_http_or_unknown(d, n);
    }

    /* _dns_header_ok: the 12-byte header at h */
    static int ips_dns_header_ok(const uint8_t *h) {
        unsigned flags, opcode;
        if (h[4] || h[5] != 1) return 0;
        flags = ips_u16(h + 2);
        opcode = (flags >> 11) & 0xF;
        if (!(opcode == 0 || opcode == 1 || opcode == 2 || opcode == 4 || opcode == 5
              || opcode == 6)) return 0;
        if (flags & 0x0040) return 0;
        if (ips_u16(h + 4) != 1) return 0;
        return ips_u16(h + 6) <= 256 && ips_u16(h + 8) <= 256 && ips_u16(h + 10) <= 256;
    }

    /* _dns_question: one question that parses within [pos, end) */
    static int ips_dns_question(const uint8_t *d, Py_ssize_t pos, Py_ssize_t end) {
        unsigned total = 0, ln, qclass;
        for (;;) {
            if (pos >= end) return 0;
            ln = d[pos];
            if (ln == 0) { pos += 1; break; }
            if (ln & 0xC0) return 0;
            total += ln + 1;
            if (total > 255) return 0;
            pos += ln + 1;
        }
        if (pos + 4 > end) return 0;
        qclass = ips_u16(d + pos + 2) & 0x7FFF;
        return qclass == 1 || qclass == 3 || qclass == 4 || qclass == 254 || qclass == 255;
    }

    /* _dns_header_could_start: the first n (< 12) bytes at h can begin a header
       ips_dns_header_ok accepts */
    static int ips_dns_header_could_start(const uint8_t *h, Py_ssize_t n) {
        unsigned opcode;
        int high;
        if (n > 2) {
            opcode = (h[2] >> 3) & 0xF;
            if (!(opcode == 0 || opcode == 1 || opcode == 2 || opcode == 4 || opcode == 5
                  || opcode == 6)) return 0;
        }
        if (n > 3 && (h[3] & 0x40)) return 0;
        if (n > 4 && h[4]) return 0;
        if (n > 5 && h[5] != 1) return 0;
        for (high = 6; high <= 10; high += 2)
            if (n > high && (h[high] > 1 || (h[high] == 1 && n > high + 1 && h[high + 1])))
                return 0;
        return 1;
    }

    static int ips_dns_tcp(const uint8_t *d, Py_ssize_t n) {
        Py_ssize_t length, end;
        if (n < 2 + 12) {
            if (n < 2) return IPS_DET_NEED_MORE;
            if (ips_u16(d) < 17) return IPS_DET_UNKNOWN;
            return ips_dns_header_could_start(d + 2, n - 2) ? IPS_DET_NEED_MORE
                                                            : IPS_DET_UNKNOWN;
        }
        length = ips_u16(d);
        if (length < 17) return IPS_DET_UNKNOWN;
        if (!ips_dns_header_ok(d + 2)) return IPS_DET_UNKNOWN;
        end = n < 2 + length ? n : 2 + length;
        if (end - 2 >= 17 && ips_dns_question(d, 14, end)) return IPS_DET_DNS;
        if (n < 2 + length) return IPS_DET_NEED_MORE;
        return IPS_DET_UNKNOWN;
    }

    static int ips_tls(const uint8_t *d, Py_ssize_t n) {
        unsigned length;
        if (n < 6) {
            if (n >= 2 && d[1] != 3) return ips_dns_tcp(d, n);
            return IPS_DET_NEED_MORE;
        }
        if (d[1] != 3 || d[2] > 4) return ips_dns_tcp(d, n);
        length = ips_u16(d + 3);
        if (length == 0 || length > 16384 + 2048) return ips_dns_tcp(d, n);
        if (d[5] == 1 || d[5] == 2) return IPS_DET_TLS;
        return ips_dns_tcp(d, n);
    }

    static int ips_detect_stream(const uint8_t *d, Py_ssize_t n) {
        int verdict;
        if (n <= 0) return IPS_DET_NEED_MORE;
        if (d[0] == 0x16) return ips_tls(d, n);
        if (d[0] == 0x53) {  /* "S" */
            if (n < 4)
                return ips_prefix_of(d, n, "SSH-") ? IPS_DET_NEED_MORE
                                                   : ips_http_or_unknown(d, n);
            if (memcmp(d, "SSH-", 4) == 0) return IPS_DET_SSH;
        }
        if (ips_http_first(d[0])) {
            verdict = ips_http(d, n);
            if (verdict != IPS_DET_UNKNOWN) return verdict;
        }
        return ips_dns_tcp(d, n);
    }

    /* _quic_initial: a version 1 long-header Initial with sane connection id lengths */
    static int ips_quic_initial(const uint8_t *d, Py_ssize_t n) {
        Py_ssize_t dcid_len, scid_len;
        if (d[0] & 0x30) return 0;
        if (d[1] != 0 || d[2] != 0 || d[3] != 0 || d[4] != 1) return 0;
        dcid_len = d[5];
        if (dcid_len > 20 || n < 7 + dcid_len) return 0;
        scid_len = d[6 + dcid_len];
        return scid_len <= 20 && n >= 7 + dcid_len + scid_len;
    }

    /* ips/app/detect.py detect_datagram, on the bytes d[0:n] */
    static int ips_detect_datagram(const uint8_t *d, Py_ssize_t n) {
        if (n >= 7 && (d[0] & 0xC0) == 0xC0 && ips_quic_initial(d, n)) return IPS_DET_QUIC;
        if (n >= 17 && ips_dns_header_ok(d) && ips_dns_question(d, 12, n)) return IPS_DET_DNS;
        return IPS_DET_UNKNOWN;
    }
    """
    int IPS_DET_NEED_MORE
    int IPS_DET_UNKNOWN
    int IPS_DET_TLS
    int IPS_DET_HTTP
    int IPS_DET_SSH
    int IPS_DET_DNS
    int ips_detect_stream(const uint8_t *d, Py_ssize_t n)
    int ips_detect_datagram(const uint8_t *d, Py_ssize_t n)
    int IPS_DET_QUIC

# The names ips/app/detect.py gives ips_detect_stream's answers (None: need more bytes).
_DETECTED = {IPS_DET_NEED_MORE: None, IPS_DET_UNKNOWN: "unknown", IPS_DET_TLS: "tls",
             IPS_DET_HTTP: "http", IPS_DET_SSH: "ssh", IPS_DET_DNS: "dns",
             IPS_DET_QUIC: "quic"}


def detect_stream_compiled(bytes data):
    """ips/app/detect.py's `detect_stream(data)` as this module computes it (for the test
    that holds the two together)."""
    return _DETECTED[ips_detect_stream(<const uint8_t *>PyBytes_AS_STRING(data),
                                       PyBytes_GET_SIZE(data))]


def detect_datagram_compiled(bytes data):
    """ips/app/detect.py's `detect_datagram(data)` as this module computes it."""
    return _DETECTED[ips_detect_datagram(<const uint8_t *>PyBytes_AS_STRING(data),
                                         PyBytes_GET_SIZE(data))]


cdef enum:
    # What the inspector's first look at a refused flow's first packet leaves (see above)
    APP_LOOK_PYTHON = -1   # the inspector's to do (Python)
    APP_LOOK_NONE = 0      # nothing: no payload (the quiet or UDP state goes with the flow)
    APP_LOOK_HELD = 1      # held until the release: released_flows and released_bytes
    APP_LOOK_UNKNOWN = 2   # protocols["unknown"]
    APP_LOOK_INSPECT = 3   # a protocol's parser reads it, which leaves no event (see below)
    # TLS or HTTP whose parser's answer is known from a few bytes (see _app_first_look):
    # protocols[tls|http], the parser's malformed reason (or none: the request's header
    # block still arriving), and the release of the bytes held
    APP_LOOK_TLS_UNEXPECTED = 4
    APP_LOOK_HTTP_BAD_LINE = 5
    APP_LOOK_HTTP_TOO_MANY = 6
    APP_LOOK_HTTP_HELD = 7
    # a UDP datagram that is a DNS message: the inspector reads it (its events ride on the
    # packet's Decision, as Engine._decide puts them there)
    APP_LOOK_DNS = 8
    # a TCP segment (no SYN, FIN or RST) that starts a TLS stream with a ClientHello record:
    # the inspector's parser reads it (see _read_refused_hello)
    APP_LOOK_TLS_HELLO = 9
    # a TCP segment (no SYN, FIN or RST) that starts an HTTP stream read as requests by the
    # inspector's parser (see _read_refused_requests)
    APP_LOOK_HTTP_REQUESTS = 10


cdef int _app_first_look(object app, int proto, const uint8_t *payload, Py_ssize_t n,
                         int flags) except -2:
    """What the inspector's first look at a refused flow's first packet (TCP or UDP, n
    bytes of payload, not a fragment) leaves once the flow is discarded: one of APP_LOOK_*.
    Changes nothing (`_count_app_first_look` or `_inspect_refused_segment` does it once the
    packet is decided)."""
    cdef int found
    if n <= 0:
        return APP_LOOK_NONE
    if type(app) is not APP_INSPECTOR:
        return APP_LOOK_PYTHON  # (a subclass may look otherwise)
    counters = app.counters
    if type(counters) is not APP_COUNTERS or type(counters.protocols) is not COUNTER or (
        type(counters.malformed) is not COUNTER
    ):
        return APP_LOOK_PYTHON
    if proto == PROTO_UDP:
        # `_udp`: detect_datagram names the datagram's protocol; unknown closes the flow's
        # inspection at once; QUIC's and DNS's readers read it (events, passive DNS).
        found = ips_detect_datagram(payload, n)
        if found == IPS_DET_UNKNOWN:
            return APP_LOOK_UNKNOWN
        if found == IPS_DET_DNS:
            return APP_LOOK_DNS
        return APP_LOOK_PYTHON  # QUIC: its reader
    reassembler = app.reassembler
    if type(reassembler) is not REASSEMBLER:
        return APP_LOOK_PYTHON
    # Reassembler.add: the payload taken whole, in order, below the bound (a direction that
    # reaches it is complete, and "beyond-limit" counted past it) and under the memory cap
    # ("memcap" counted, nothing kept).
    limit = reassembler.limit
    if type(limit) is not int or n >= <Py_ssize_t>limit:
        return APP_LOOK_PYTHON
    used = reassembler.used
    cap = reassembler.memory_cap
    if type(used) is not int or type(cap) is not int or used + n > cap:
        return APP_LOOK_PYTHON
    found = ips_detect_stream(payload, n)
    if found == IPS_DET_NEED_MORE:
        # _detect_stream: a side that ended (FIN or RST) says no more: unknown
        return APP_LOOK_UNKNOWN if flags & (TCP_FIN | TCP_RST) else APP_LOOK_HELD
    if found == IPS_DET_UNKNOWN:
        return APP_LOOK_UNKNOWN
    if found == IPS_DET_TLS:
        found = _tls_first_look(payload, n)
        if found == APP_LOOK_INSPECT and payload[5] == 1 and not flags & (
            TCP_SYN | TCP_FIN | TCP_RST
        ) and type(counters.events) is COUNTER:
            return APP_LOOK_TLS_HELLO
        return found
    if found == IPS_DET_HTTP:
        found = _http_first_look(payload, n)
        if found == APP_LOOK_INSPECT and not flags & (TCP_SYN | TCP_FIN | TCP_RST) and (
            type(counters.events) is COUNTER
        ):
            return APP_LOOK_HTTP_REQUESTS
        return found
    if found == IPS_DET_SSH:
        return APP_LOOK_INSPECT
    return APP_LOOK_PYTHON  # DNS: each message read is an event (on the packet's Decision)


cdef int _tls_first_look(const uint8_t *d, Py_ssize_t n):
    """A first segment detected as TLS (a handshake record, 3.x, a sane length, a hello's
    type): when its one record holds a ServerHello (a flow picked up at the server's
    answer), `parse_client_hello` answers "tls.unexpected-message" whatever follows
    (_handshake_bytes takes the single record, _first_message reads its first byte), and
    the release owes no event (no hello, no server flight). Anything else: the inspector."""
    cdef Py_ssize_t length = (d[3] << 8) | d[4]
    if TLS_SERVER_FIRST_OK and d[5] == 2 and 5 + length >= n:
        return APP_LOOK_TLS_UNEXPECTED
    return APP_LOOK_INSPECT


cdef int _http_first_look(const uint8_t *d, Py_ssize_t n):
    """A first segment detected as HTTP that starts with "HTTP/1." (a response: a flow
    picked up at the server's answer), read by `requests_from` as the client's requests:
    its header block (_header_block: up to the first blank line, CRLF or LF) not complete
    yet: INCOMPLETE, nothing counted (the bytes held until the release); complete, with
    more than MAX_HEADERS header lines: "http.too-many-headers"; else its start line is
    no request line whatever it holds (the method token "HTTP/1..." keeps its "/" once
    stripped of token characters, and a version or the part count fails otherwise):
    "http.bad-request-line". No request, so the release owes no event. A request (its
    fields, events at the release): the inspector."""
    cdef const uint8_t *crlf
    cdef const uint8_t *lf
    cdef const uint8_t *at
    cdef Py_ssize_t lines, i
    if n < 7 or memcmp(d, b"HTTP/1.", 7) != 0 or n >= HTTP_MAX_HEADER_BYTES:
        return APP_LOOK_INSPECT
    crlf = <const uint8_t *>memmem(d, n, b"\r\n\r\n", 4)
    lf = <const uint8_t *>memmem(d, n, b"\n\n", 2)
    if crlf is NULL and lf is NULL:
        return APP_LOOK_HTTP_HELD
    at = lf if crlf is NULL or (lf is not NULL and lf < crlf) else crlf
    lines = 1
    for i in range(at - d):
        if d[i] == 0x0A:
            lines += 1
    if lines > HTTP_MAX_HEADERS + 1:
        return APP_LOOK_HTTP_TOO_MANY
    return APP_LOOK_HTTP_BAD_LINE


cdef inline int _count_in(object counter, object key) except -1:
    """Counter's `counter[key] += 1` (a missing key is 0)."""
    cdef PyObject *found = PyDict_GetItem(counter, key)
    PyDict_SetItem(counter, key, 1 if found is NULL else <object>found + 1)
    return 0


cdef int _count_app_first_look(object app, int look, const uint8_t *payload,
                               Py_ssize_t n) except -1:
    """Count what `_app_first_look` said the inspector's first look leaves (the packet is
    decided): as `_detect_stream` counts a protocol, as the parser counts a malformed
    message, and as `release` counts a flow whose streams still held bytes."""
    counters = app.counters
    if look == APP_LOOK_TLS_HELLO:
        return _read_refused_hello(app, counters, payload, n)
    if look == APP_LOOK_HTTP_REQUESTS:
        return _read_refused_requests(app, counters, payload, n)
    if look == APP_LOOK_UNKNOWN:
        _count_in(counters.protocols, APP_UNKNOWN)
        return 0
    if look == APP_LOOK_TLS_UNEXPECTED:
        _count_in(counters.protocols, APP_TLS)
        _count_in(counters.malformed, TLS_UNEXPECTED)
    elif look == APP_LOOK_HTTP_BAD_LINE or look == APP_LOOK_HTTP_TOO_MANY or (
        look == APP_LOOK_HTTP_HELD
    ):
        _count_in(counters.protocols, APP_HTTP)
        if look == APP_LOOK_HTTP_BAD_LINE:
            _count_in(counters.malformed, HTTP_BAD_REQUEST_LINE)
        elif look == APP_LOOK_HTTP_TOO_MANY:
            _count_in(counters.malformed, HTTP_TOO_MANY_HEADERS)
    elif look != APP_LOOK_HELD:
        return 0
    counters.released_flows += 1
    counters.released_bytes += n
    return 0


cdef int _read_refused_hello(object app, object counters, const uint8_t *payload,
                             Py_ssize_t n) except -1:
    """What the inspector leaves of a refused flow's first segment that starts a TLS
    stream with a ClientHello record (APP_LOOK_TLS_HELLO: placed whole in order, no SYN,
    FIN or RST; the server's side empty): `_detect_stream` counts the protocol, `_tls_side`
    reads the client's bytes with the inspector's parser (a malformed hello counted; a hello
    still arriving counts nothing while its side has not ended), `release` counts the bytes
    the streams held, and `_finish_tcp` makes (and counts) the tls event a parsed hello is
    owed, which `_discard` drops. The hello's fields and fingerprints are the flow's, and
    computed only when read: nothing else stays."""
    _count_in(counters.protocols, APP_TLS)
    hello = app._parse_client_hello(PyBytes_FromStringAndSize(<const char *>payload, n))
    cdef bint owed = type(hello) is CLIENT_HELLO
    if type(hello) is MALFORMED:
        _count_in(counters.malformed, hello.reason)
    counters.released_flows += 1
    counters.released_bytes += n
    if owed:
        _count_in(counters.events, APP_TLS)
    return 0


cdef int _read_refused_requests(object app, object counters, const uint8_t *payload,
                                Py_ssize_t n) except -1:
    """What the inspector leaves of a refused flow's first segment that starts an HTTP
    stream (APP_LOOK_HTTP_REQUESTS: placed whole in order, no SYN, FIN or RST; the server's
    side empty): `_detect_stream` counts the protocol, `_http_side` reads the client's
    bytes as requests with the inspector's parser from the start (a malformed stream
    counted), `_http_pairs` makes no event while the server's side is open, `release`
    counts the bytes the streams held and `_finish_tcp`'s final `_http_pairs` makes (and
    counts) one http event per request read, which `_discard` drops. The requests' fields
    are the flow's: nothing else stays."""
    _count_in(counters.protocols, APP_HTTP)
    cdef list requests = []
    got = app._requests_from(PyBytes_FromStringAndSize(<const char *>payload, n), 0,
                             requests)
    why = got.why
    if type(why) is MALFORMED:
        _count_in(counters.malformed, why.reason)
    counters.released_flows += 1
    counters.released_bytes += n
    cdef Py_ssize_t i
    event_counts = counters.events
    for i in range(len(requests)):
        _count_in(event_counts, APP_HTTP)
    return 0


cdef object _inspect_refused_first(object app, dict table, const uint8_t *p, Py_ssize_t total,
                                  Py_ssize_t payload_offset, int proto, int sport, int dport,
                                  int flags, object src, object dst, object now_obj):
    """The inspector's first look at a refused flow's first packet, done by the inspector
    itself (nothing owed: the caller flushed), as Engine._decide and _discard do it: the
    flow and the packet made as FlowTable.open (its next id) and the decoder make them,
    `inspect`, then `release` (whose events `_discard` drops); nothing of either stays.
    Returns the events `inspect` made (a list), or None.

    A TCP segment that starts a TLS, HTTP or SSH stream makes none: its parser reads the
    client's side (and may count a malformed or incomplete message); TLS and SSH events
    are made when both sides are done, HTTP's when a response pairs a request, and the
    server's side of a flow whose first packet this is has neither bytes nor an end; the
    release may count the events the flow owed and the bytes it held. A DNS datagram makes
    one per question of a query, or one for an answer (which teaches passive DNS)."""
    cdef int family = p[0] >> 4
    if family == 4:
        hl = (p[0] & 0x0F) * 4
        ttl = p[8]
        tos = p[1]
    else:
        hl = 40
        ttl = p[7]
        tos = ((p[0] & 0x0F) << 4) | (p[1] >> 4)
    pkt = PACKET(PyBytes_FromStringAndSize(<const char *>p, total), family, src, dst,
                 proto, sport, dport, flags, -1, -1, ttl, tos, hl, payload_offset, 0, ())
    flow_id = ((table["_next_id"] + 1) * table["_id_mult"] + table["_id_seed"]) & FLOW_ID_MASK
    flow = FLOW(pkt, flow_id, now_obj)
    events = app.inspect(pkt, flow, True, now_obj)
    if _get(flow, F_APP_STATE) is not None:
        app.release(flow, now_obj)  # (the flow's last_seen)
    return events


from ips.app.detect import APP_DNS as _APP_DNS
from ips.core.packet import Malformed as _Malformed
from ips.app.tls import ClientHello as _ClientHello

cdef object APP_DNS = _APP_DNS
cdef type MALFORMED = _Malformed
cdef type CLIENT_HELLO = _ClientHello


cdef class _RefusedDatagram:
    """What the inspector's DNS reader (`read_dns_message`: AppInspector._dns_message or
    ips/fast/_dnsparse.pyx read_message) reads and writes of a refused flow's first
    datagram, in place of the three objects `inspect` hands it (the Flow, its AppFields,
    its _Udp state), all of which the refused flow's discard drops: the flow's fields the
    events copy, as FlowTable.open and `_start`/`_udp` leave them (app_proto "dns", the
    responder's name), the fresh state's tx ids, and the fields a query writes."""
    cdef public object family, proto, src, sport, dst, dport, flow_id, app_proto, dst_name
    cdef public dict dns_ids
    cdef public object dns_tx, dns_queries, client_done


cdef object _inspect_refused_dns(object app, dict table, const uint8_t *p, Py_ssize_t total,
                                 Py_ssize_t payload_offset, int proto, int sport, int dport,
                                 object src, object dst, object now_obj,
                                 _RefusedDatagram flow):
    """`_inspect_refused_first` for a UDP datagram detected as DNS (APP_LOOK_DNS, an
    AppInspector itself with Counter counters: `_app_first_look` checked), without the
    Flow, the Packet and the inspector's state: `_start` asks passive DNS the responder's
    name, `_udp` counts the protocol, parses the message with the inspector's parser (a
    malformed one counted, no events) and reads it with its reader (events counted, an
    answer taught to passive DNS); `release` of a _Udp state counts nothing. Returns the
    events (a list) or None, as `inspect` does; `flow` (new) is left holding what a scan's
    probe keeps of the flow (its responder's name, a query's names)."""
    flow.family = p[0] >> 4
    flow.proto = proto
    flow.src = src
    flow.sport = sport
    flow.dst = dst
    flow.dport = dport
    flow.flow_id = ((table["_next_id"] + 1) * table["_id_mult"] + table["_id_seed"]) & (
        FLOW_ID_MASK
    )
    flow.dst_name = None
    names = app.names
    if names is not None:
        flow.dst_name = names.name_of(dst, now_obj)
    flow.app_proto = APP_DNS
    counters = app.counters
    _count_in(counters.protocols, APP_DNS)
    flow.dns_queries = ()
    msg = app.parse_dns_message(PyBytes_FromStringAndSize(<const char *>p, total),
                                payload_offset)
    if isinstance(msg, MALFORMED):
        _count_in(counters.malformed, msg.reason)
        return None
    flow.dns_ids = {}
    flow.dns_tx = 0
    flow.client_done = False
    events = []
    app.read_dns_message(app, flow, flow, msg, True, flow, now_obj, events)
    return events or None


from ips.core.app_fields import AppFields as _AppFields

cdef type APP_FIELDS = _AppFields


cdef bint _probe_flow_known(int proto, int app_look, bint refused_dns_on):
    """Whether the flow a new scan probe keeps, as the inspector leaves it once the packet
    is refused (released), is made here (_refused_flow): a TCP segment without payload (its
    quiet state gone with it), or a UDP datagram without payload, not DNS nor QUIC
    ("unknown"), or DNS read here (_inspect_refused_dns): their fields are
    _released_udp_fields'. Else the flow the inspector read is Python's."""
    if proto == PROTO_TCP:
        return app_look == APP_LOOK_NONE
    if proto != PROTO_UDP:
        return False
    return app_look == APP_LOOK_NONE or app_look == APP_LOOK_UNKNOWN or (
        app_look == APP_LOOK_DNS and refused_dns_on
    )


cdef object _released_udp_fields(int app_look, object datagram):
    """The AppFields a refused UDP flow keeps (in a scan's probe): made by `_start`, the
    names of a DNS query read (`_dns_message`; none for an answer or a malformed message),
    and both sides done (`_close`, by `_udp` for an unknown protocol, by `release`)."""
    fields = APP_FIELDS()
    if app_look == APP_LOOK_DNS:
        fields.dns_queries = (<_RefusedDatagram>datagram).dns_queries
    fields.client_done = True
    fields.server_done = True
    return fields


cdef bint _flow_ids_known(dict table):
    """Whether the flow table's next flow id can be made here as FlowTable._open makes it."""
    return type(table.get("_next_id")) is int and type(table.get("_id_mult")) is int and (
        type(table.get("_id_seed")) is int
    )


cdef bint _name_of_does_something(object names, object addr) except -1:
    """Whether passive DNS's `name_of(addr, now)` may change anything: PassiveDns.name_of
    of an address it has no entry for returns None and touches nothing (an entry is moved
    to the end, or dropped when expired), so the call is left out then -- for most refused
    packets, and with it the flush of what is owed before a call out of this module."""
    if type(names) is not PASSIVE_DNS:
        return True  # (another NameSource: asked)
    entries = names._entries
    if not isinstance(entries, dict):
        return True
    return PyDict_GetItem(entries, addr) is not NULL


cdef bint _bare_segment_reads_nothing(object app, object app_state, object flow,
                                      object sport, object src) except -1:
    """Whether `inspect` does nothing with a TCP segment without payload, SYN, FIN or RST
    of a flow whose streams the inspector reads (its `_Tcp` state): Reassembler.add places
    nothing (no payload, no SYN, no FIN) and changes nothing (a closed flow counts only a
    payload), so `_tcp` returns at once -- unless the packet's direction had ended (a FIN
    or RST seen) while its side is still being read: then the side is read once more
    (its message will not be completed). Read as `_tcp` reads them: the state's streams,
    the direction's end, the side's openness."""
    if TCP_READING is None or type(app_state) is not TCP_READING:
        return False
    if type(app) is not APP_INSPECTOR:
        return False
    cdef bint fwd = _get(flow, F_SPORT) == sport and _get(flow, F_SRC) == src
    streams = app_state.streams
    side = streams.to_server if fwd else streams.to_client
    if side.fin and (app_state.client_open if fwd else app_state.server_open):
        return False
    return True


# ---- the engine's tick in compiled code (Ticker) ------------------------------------------------
# Engine.tick (ips/engine/engine.py) runs once a second of traffic: in a replay, thousands of
# ticks, each many small Python calls (every part asked whether it has anything due; the
# floods' bucket passes, the windows' drops, the scans' weighing of their due probes, the flow
# table's expiry). Ticker makes the same calls in the same order, and does in compiled code
# what it knows of them: each part's `due`, and its work when the part is one of the classes
# read here with their own methods (a flood's BucketDetector.due and tick, stealth's windows,
# portscan's and sweep's due probes when ScanDetector.resolve_quietly would weigh them,
# FlowTable.due and expire) on values of the types read here. Anything else — another
# detector, a value of another type, probes that complete a scan, blocks, held requests —
# is the Python method's, called where Engine.tick calls it, before anything here changed
# that part. The Python engine stays the reference: tests/pure/test_tick_compiled.py holds an
# engine ticking here to one ticking in Python, state and effects, tick after tick.

from heapq import heappop as _heappop
from weakref import ref as _weakref
from ips.core.flow import END_TIMEOUT as _END_TIMEOUT
from ips.detect.common import BucketDetector as _BucketDetector, Detector as _Detector
from ips.detect.detectors import Detectors as _Detectors
from ips.detect.scan import ScanDetector as _ScanDetector
from ips.detect.stealth import Stealth as _Stealth, StealthEntry as _StealthEntry

from cpython.dict cimport PyDict_Next

cdef extern from "Python.h":
    PyObject *PySet_Pop(object s) except NULL


cdef enum:
    PART_PYTHON = 0     # its own `due` and `tick`, in Python
    PART_FLOOD = 1      # BucketDetector.due and tick
    PART_WINDOWS = 2    # Stealth: Detector.window_over and drop_finished_windows of `entries`
    PART_SCAN = 3       # ScanDetector.due and tick (resolve_quietly's weighing, then the windows)

# The methods the parts mirror, as their classes have them at import: a detector whose class
# has others (a subclass's, or a test's) is ticked by its own.
cdef object _BUCKET_DUE = _BucketDetector.due
cdef object _BUCKET_TICK = _BucketDetector.tick
cdef object _WINDOW_OVER = _Detector.window_over
cdef object _DROP_WINDOWS = _Detector.drop_finished_windows
cdef object _STEALTH_DUE = _Stealth.due
cdef object _STEALTH_TICK = _Stealth.tick
cdef object _SCAN_DUE = _ScanDetector.due
cdef object _SCAN_TICK = _ScanDetector.tick
cdef object _SCAN_RESOLVE = _ScanDetector.resolve
cdef object _DETECTORS_TICK = _Detectors.tick
cdef object _TABLE_DUE = FlowTable.due
cdef object _TABLE_EXPIRE = FlowTable.expire
cdef object _TABLE_EXPIRE_INTO = FlowTable._expire_into
cdef object _TABLE_TIMEOUT = FlowTable._timeout
cdef object _TABLE_FILE = FlowTable._file
cdef object _TABLE_POP_EVICTED = FlowTable.pop_evicted
cdef dict _COMMON_GLOBALS = vars(_detect_common)   # TICK_BUDGET and ALERT_EVERY, read per tick
cdef object INF_FLOAT = float("inf")
cdef type STEALTH_ENTRY = _StealthEntry
cdef Py_ssize_t STEALTH_START = _offset(_StealthEntry, "start")
cdef double INFINITY_C = INF_FLOAT
cdef Py_ssize_t EXPIRE_BUDGET = FlowTable.expire.__defaults__[0]  # expire's `budget`
cdef object _BLOCK_MANAGER = None   # ips/engine/blocks.py BlockManager (imported on first use:
cdef object _BLOCKS_DUE = None      # ips.engine imports this module)


cdef extern from "Python.h":
    PyObject **_PyObject_GetDictPtr(object obj)
    ctypedef struct _TypeTag "PyTypeObject":
        unsigned int tp_version_tag
        unsigned long tp_flags
    unsigned long Py_TPFLAGS_VALID_VERSION_TAG


cdef bint _own(object obj, str name, object original):
    """Whether obj's `name` is `original` (its class's, as at import; not an instance's)."""
    cdef dict attrs = getattr(obj, "__dict__", None)
    if attrs is not None and PyDict_Contains(attrs, name):
        return False
    return getattr(type(obj), name, None) is original


cdef inline Py_ssize_t _attrs_len(object obj):
    cdef PyObject **attrs = _PyObject_GetDictPtr(obj)
    if attrs is NULL or attrs[0] is NULL:
        return -1
    return len(<object>attrs[0])


cdef class Known:
    """Whether an object's methods `names` are `originals` (_own: its class's, as at import;
    not an instance's), asked at every tick: the answer is kept while the object's class is
    unchanged (CPython's version tag of a type, renewed whenever it or a base is changed)
    and its instance attributes are as many (an instance's own method is one more)."""
    cdef tuple names, originals
    cdef type cls
    cdef unsigned int tag
    cdef Py_ssize_t attrs_len
    cdef bint answer

    def __init__(self, tuple names, tuple originals):
        self.names = names
        self.originals = originals
        self.cls = None

    cdef bint check(self, object obj) except -1:
        cdef type cls = type(obj)
        cdef _TypeTag *t = <_TypeTag *><PyObject *>cls
        cdef Py_ssize_t n = _attrs_len(obj)
        if (
            cls is self.cls and t.tp_flags & Py_TPFLAGS_VALID_VERSION_TAG
            and t.tp_version_tag == self.tag and n == self.attrs_len
        ):
            return self.answer
        cdef bint answer = True
        cdef Py_ssize_t i
        for i in range(len(self.names)):
            if not _own(obj, self.names[i], self.originals[i]):
                answer = False
                break
        self.cls = cls
        # (read after the look-ups above, which give the type a tag when it has none)
        self.tag = t.tp_version_tag if t.tp_flags & Py_TPFLAGS_VALID_VERSION_TAG else 0
        self.attrs_len = n
        self.answer = answer
        return answer


cdef class TickPart:
    """One detector of Detectors.by_name as Ticker ticks it."""
    cdef object det
    cdef int kind
    cdef Known known              # its methods are those of its kind (else its own tick)
    cdef dict attrs               # its __dict__
    cdef ScanProg scan            # PART_SCAN: the ScanProg of its tables


cdef tuple _FLOOD_METHODS = (("due", "tick"), (_BUCKET_DUE, _BUCKET_TICK))
cdef tuple _WINDOWS_METHODS = (
    ("due", "tick", "window_over", "drop_finished_windows"),
    (_STEALTH_DUE, _STEALTH_TICK, _WINDOW_OVER, _DROP_WINDOWS),
)
cdef tuple _SCAN_METHODS = (
    ("due", "tick", "resolve", "window_over", "drop_finished_windows"),
    (_SCAN_DUE, _SCAN_TICK, _SCAN_RESOLVE, _WINDOW_OVER, _DROP_WINDOWS),
)


cdef TickPart _tick_part(object det):
    cdef TickPart part = TickPart()
    part.det = det
    part.kind = PART_PYTHON
    attrs = getattr(det, "__dict__", None)
    if type(attrs) is not dict:
        return part
    part.attrs = attrs
    for kind, methods in ((PART_FLOOD, _FLOOD_METHODS), (PART_WINDOWS, _WINDOWS_METHODS),
                          (PART_SCAN, _SCAN_METHODS)):
        known = Known(*methods)
        if not known.check(det):
            continue
        if kind == PART_WINDOWS and type(attrs.get("entries")) is not OrderedDict:
            continue
        if kind == PART_SCAN:
            if type(det) not in (PortScan, Sweep) or type(attrs.get("unreported")) is not list:
                continue
            part.scan = _scan_prog(det)
            if part.scan is None:
                continue
            part.scan.by_host = type(det) is PortScan
        part.kind = kind
        part.known = known
        break
    return part


cdef class Ticker:
    """Engine.tick of one engine (see the section's notes): `ticker(now)` is what
    `engine.tick(now)` returns, with the same changes made."""
    cdef FastPath fast
    cdef object engine_ref        # a weak reference: the engine holds this object
    cdef object engine            # the engine, and its __dict__, during a tick (else None)
    cdef dict engine_attrs
    cdef object detect            # the Detectors the parts were read from
    cdef object by_name           # and its table of detectors
    cdef list parts
    cdef bint detect_known        # Detectors.tick is its class's own
    cdef Known flows_known, blocks_known, detectors_known
    # What was done here rather than in Python (tests: that the compiled parts ran)
    cdef public long long floods_in_c, windows_in_c, scans_in_c, flows_in_c, flows_ended_in_c
    cdef public long long in_python

    def __init__(self, FastPath fast, engine):
        global _BLOCK_MANAGER, _BLOCKS_DUE
        if _BLOCK_MANAGER is None:
            from ips.engine.blocks import BlockManager
            _BLOCK_MANAGER = BlockManager
            _BLOCKS_DUE = BlockManager.due
        self.fast = fast
        # The engine itself is not kept between ticks: it holds this object, and a cycle
        # would leave both to the cyclic collector (tests/pure/test_heap.py).
        self.engine_ref = _weakref(engine)
        self.engine = None
        self.engine_attrs = None
        self.flows_known = Known(
            ("due", "expire", "_expire_into", "_timeout", "_file", "pop_evicted"),
            (_TABLE_DUE, _TABLE_EXPIRE, _TABLE_EXPIRE_INTO, _TABLE_TIMEOUT, _TABLE_FILE,
             _TABLE_POP_EVICTED),
        )
        self.blocks_known = Known(("due",), (_BLOCKS_DUE,))
        self.detectors_known = Known(("tick",), (_DETECTORS_TICK,))
        self.detect = None
        self.by_name = None
        self.parts = []

    def __call__(self, now):
        engine = self.engine_ref()
        if engine is None:
            raise ReferenceError("the engine of this tick is gone")
        self.fast._flush()  # (what the fast path owes, written before Python reads anything)
        if not PyFloat_CheckExact(now) or not isfinite(PyFloat_AS_DOUBLE(now)):
            self.in_python += 1
            return engine._tick_in_python(now)
        self.engine = engine
        self.engine_attrs = engine.__dict__
        try:
            return self._tick(now, PyFloat_AS_DOUBLE(now))
        finally:
            self.engine = None
            self.engine_attrs = None

    cdef list _tick(self, object now_obj, double now):
        """Engine._tick_in_python, in its order."""
        engine = self.engine
        attrs = self.engine_attrs
        cdef list events = []
        late = attrs["_late_events"]
        if late:
            events += late
            late.clear()
        self._flows(attrs["flows"], now_obj, now, events)
        blocks = attrs["blocks"]
        banned = blocks.table
        for table in (<dict>attrs["tables"]).values():
            if table is not banned and table.members:
                table.expire(now_obj)
        if self._blocks_due(blocks, now_obj):
            unblocks = blocks.expire(now_obj)
            blocks.expire_macs(now_obj)
            stats = attrs["stats"]
            stats.unblocks += len(unblocks)
            events += unblocks
        detect = attrs["detect"]
        if detect is not None:
            if attrs["evidence"].held:  # requests held for evidence, judged again
                settled = engine._counted(engine._rejudge(detect, now_obj))
                if settled is not None:
                    events += settled
            found = self._detect(detect, now_obj, now)
            if found:
                settled = engine._settle(detect, found)
                if settled is not None:
                    events += settled
        return events

    cdef bint _blocks_due(self, object blocks, object now_obj) except -1:
        """BlockManager.due, read here when it is the class's own."""
        if type(blocks) is not _BLOCK_MANAGER or not self.blocks_known.check(blocks):
            return bool(blocks.due(now_obj))
        if blocks.macs:
            return True
        table = blocks.table
        return table is not None and bool(table.members)

    # ---- the flow table ----------------------------------------------------------------------

    cdef int _flows(self, object flows, object now_obj, double now, list events) except -1:
        """`if flows.due(now): pop_evicted, expire`, each flow ended (Engine._flow_end)."""
        engine = self.engine
        cdef double floordiv
        cdef long long first_slot
        if type(flows) is not FLOW_TABLE or not self.flows_known.check(flows):
            return self._flows_in_python(flows, now_obj, events)
        fattrs = <dict>flows.__dict__
        ended = fattrs.get("_ended")
        slots = fattrs.get("_slots")
        if type(slots) is not list:
            return self._flows_in_python(flows, now_obj, events)
        # FlowTable.due: flows ended by track(), or a slot due (`slots[0] <= int(now // _SLOT)`)
        if not ended:
            if not slots:
                return 0
            first = (<list>slots)[0]
            _timer_slot(now, &floordiv)  # (floordiv: `now // _SLOT`, integral)
            if _narrow(first, &first_slot) and -9.0e15 < floordiv < 9.0e15:
                if not <double>first_slot <= floordiv:
                    return 0
            elif not first <= _timer_slot(now, &floordiv) - 1:
                return 0
        due_slot = _timer_slot(now, &floordiv) - 1
        if ended:  # (pop_evicted of none: an empty list for another)
            for flow in flows.pop_evicted():
                engine._flow_end(flow, now_obj, events)
        expired = self._expire(flows, fattrs, now_obj, now, due_slot)
        if expired is None:
            self.in_python += 1
            expired = flows.expire(now_obj)
        else:
            self.flows_in_c += 1
        for flow in expired:
            engine._flow_end(flow, now_obj, events)
        return 0

    cdef int _flows_in_python(self, object flows, object now_obj, list events) except -1:
        self.in_python += 1
        engine = self.engine
        if flows.due(now_obj):
            for flow in flows.pop_evicted():
                engine._flow_end(flow, now_obj, events)
            for flow in flows.expire(now_obj):
                engine._flow_end(flow, now_obj, events)
        return 0

    cdef list _expire(self, object flows, dict fattrs, object now_obj, double now,
                      object due_slot):
        """FlowTable.expire(now) (`_expire_into` with expire's budget), or None, nothing
        changed, when the table's values are not of the types read here."""
        slots = fattrs.get("_slots")
        wheel = fattrs.get("_wheel")
        tcp_timeouts = fattrs.get("_tcp_timeouts")
        timeouts = fattrs.get("timeouts")
        if type(slots) is not list or type(wheel) is not dict or type(tcp_timeouts) is not tuple:
            return None
        if type(fattrs.get("_expired")) is not int:
            return None
        udp_replied = getattr(timeouts, "udp_replied", None)
        udp_new = getattr(timeouts, "udp_new", None)
        icmp = getattr(timeouts, "icmp", None)
        other = getattr(timeouts, "other", None)
        for value in (udp_replied, udp_new, icmp, other) + <tuple>tcp_timeouts:
            if not PyFloat_CheckExact(value):
                return None
        cdef list out = []
        cdef Py_ssize_t budget = EXPIRE_BUDGET
        cdef double deadline, floordiv
        cdef int proto
        cdef long long expired = 0
        while slots and budget > 0:
            slot = (<list>slots)[0]
            if not slot <= due_slot:
                break
            found = PyDict_GetItem(<dict>wheel, slot)
            if found is not NULL:
                bucket = <object>found
                while bucket and budget > 0:
                    flow = <object>PySet_Pop(bucket)
                    Py_DECREF(flow)  # (PySet_Pop's new reference, now held by `flow`)
                    budget -= 1
                    if type(flow) is not FLOW:
                        deadline_obj = flow.last_seen + flows._timeout(flow)
                        deadline = deadline_obj
                    else:
                        proto = _get(flow, F_PROTO)
                        if proto == PROTO_TCP:
                            timeout = (<tuple>tcp_timeouts)[_get(flow, F_TCP_STATE)]
                        elif proto == PROTO_UDP or proto == PROTO_UDPLITE_C:
                            timeout = udp_replied if _get(flow, F_REPLIED) else udp_new
                        elif proto == PROTO_ICMP or proto == PROTO_ICMPV6:
                            timeout = icmp
                        else:
                            timeout = other
                        last_seen = _get(flow, F_LAST_SEEN)
                        if PyFloat_CheckExact(last_seen):
                            deadline = PyFloat_AS_DOUBLE(last_seen) + PyFloat_AS_DOUBLE(timeout)
                            deadline_obj = deadline
                        else:
                            deadline_obj = last_seen + timeout
                            deadline = deadline_obj
                    if deadline <= now:
                        flow._slot = FLOW_GONE
                        flows._remove(flow)
                        flow.end_reason = _END_TIMEOUT
                        expired += 1
                        out.append(flow)
                    else:
                        # Saw traffic since filing (FlowTable._file in its new slot)
                        new_slot = _timer_slot(deadline, &floordiv)
                        if new_slot is None:
                            new_slot = int(deadline_obj // FLOW_SLOT) + 1  # (its error)
                        found = PyDict_GetItem(<dict>wheel, new_slot)
                        if found is NULL:
                            target = set()
                            (<dict>wheel)[new_slot] = target
                            _heappush(slots, new_slot)
                        else:
                            target = <object>found
                        target.add(flow)
                        flow._slot = new_slot
                if bucket:
                    break
                del (<dict>wheel)[slot]
            _heappop(slots)
        if expired:
            fattrs["_expired"] = fattrs["_expired"] + expired
            self.flows_ended_in_c += expired
        return out

    # ---- the detectors -----------------------------------------------------------------------

    cdef object _detect(self, object detect, object now_obj, double now):
        """Detectors.tick: each detector in turn, its tick when it has something due."""
        by_name = getattr(detect, "by_name", None)
        if detect is not self.detect or by_name is not self.by_name:
            self.detect = detect
            self.by_name = by_name
            self.detect_known = type(by_name) is dict
            self.parts = [_tick_part(det) for det in by_name.values()] if self.detect_known else []
        if (
            not self.detect_known or not self.detectors_known.check(detect)
            or len(<dict>by_name) != len(self.parts)
        ):
            self.in_python += 1
            return detect.tick(now_obj)
        cdef list out = []
        cdef TickPart part
        for part in self.parts:
            if part.kind != PART_PYTHON and not part.known.check(part.det):
                self._python_part(part, now_obj, out)  # (its class changed: a test's)
            elif part.kind == PART_FLOOD:
                self._flood(part, now_obj, now, out)
            elif part.kind == PART_WINDOWS:
                if self._windows(part, part.attrs.get("entries"), now) < 0:
                    self._python_part(part, now_obj, out)
            elif part.kind == PART_SCAN:
                self._scan(part, now_obj, now, out)
            else:
                self._python_part(part, now_obj, out)
        return out

    cdef int _python_part(self, TickPart part, object now_obj, list out) except -1:
        det = part.det
        if det.due(now_obj):  # asked in turn: an earlier one's tick may give it work
            self.in_python += 1
            det.tick(now_obj, out)
        return 0

    cdef int _flood(self, TickPart part, object now_obj, double now, list out) except -1:
        """BucketDetector.due, then its tick: a pass over every bucket (the idle ones
        dropped where they are, the oldest use of the others kept); past TICK_BUDGET
        buckets, or with values of other types, its own."""
        attrs = part.attrs
        buckets = attrs.get("buckets")
        if type(buckets) is not dict:
            return self._python_part(part, now_obj, out)
        if not buckets:
            return 0
        idle_obj = attrs.get("idle")
        oldest_obj = attrs.get("oldest_use")
        if not PyFloat_CheckExact(idle_obj) or not PyFloat_CheckExact(oldest_obj):
            return self._python_part(part, now_obj, out)
        cdef double idle = PyFloat_AS_DOUBLE(idle_obj)
        if len(<dict>buckets) > _COMMON_GLOBALS["TICK_BUDGET"]:
            self.in_python += 1
            part.det.tick(now_obj, out)
            return 0
        if now - PyFloat_AS_DOUBLE(oldest_obj) < idle:
            return 0  # no bucket idle yet
        alert_every_obj = _COMMON_GLOBALS.get("ALERT_EVERY")
        if not PyFloat_CheckExact(alert_every_obj):
            return self._python_part(part, now_obj, out)
        cdef double alert_every = PyFloat_AS_DOUBLE(alert_every_obj)
        cdef double oldest = INFINITY_C
        oldest_obj = INF_FLOAT
        cdef list gone = []
        cdef Py_ssize_t pos = 0
        cdef PyObject *key
        cdef PyObject *value
        cdef double last_use
        while PyDict_Next(<dict>buckets, &pos, &key, &value):
            bucket = <object>value
            if type(bucket) is not list or PyList_GET_SIZE(bucket) < 3:
                return self._python_part(part, now_obj, out)
            used = <object>PyList_GET_ITEM(bucket, 1)
            alerted = <object>PyList_GET_ITEM(bucket, 2)
            if not PyFloat_CheckExact(used) or not PyFloat_CheckExact(alerted):
                return self._python_part(part, now_obj, out)
            last_use = PyFloat_AS_DOUBLE(used)
            if now - last_use < idle or now - PyFloat_AS_DOUBLE(alerted) < alert_every:
                if last_use < oldest:
                    oldest = last_use
                    oldest_obj = used
            else:
                gone.append(<object>key)
        for gone_key in gone:
            del (<dict>buckets)[gone_key]
        attrs["oldest_use"] = oldest_obj
        self.floods_in_c += 1
        return 0

    cdef int _windows(self, TickPart part, object entries, double now) except -2:
        """Detector.window_over(entries, now), then drop_finished_windows: 1 when windows
        went, 0 when none was over, -1 (nothing changed) for values of other types."""
        within_obj = part.attrs.get("within")
        if type(entries) is not OrderedDict or not PyFloat_CheckExact(within_obj):
            return -1
        if not entries:
            return 0
        cdef double horizon = now - PyFloat_AS_DOUBLE(within_obj)
        cdef list finished = []
        for key in entries:
            entry = entries[key]
            if type(entry) is SCAN_ENTRY:
                start = _get(entry, E_START)
            elif type(entry) is STEALTH_ENTRY:
                start = _get(entry, STEALTH_START)
            else:
                start = getattr(entry, "start")
            if not PyFloat_CheckExact(start):
                return -1
            if PyFloat_AS_DOUBLE(start) >= horizon:
                break
            finished.append(key)
        if not finished:
            return 0
        for key in finished:
            del entries[key]
        self.windows_in_c += 1
        return 1

    cdef int _scan(self, TickPart part, object now_obj, double now, list out) except -1:
        """ScanDetector.due, then its tick: the due probes weighed by resolve_quietly when
        that reports nothing (FastPath._resolve_quietly), then the windows over dropped."""
        cdef ScanProg scan = part.scan
        attrs = part.attrs
        if attrs.get("unreported"):
            return self._python_part(part, now_obj, out)
        pending = scan.pending
        if pending and (<object>pending[0]).due <= now_obj:
            if self.fast._resolve_quietly(scan, now_obj, 64) != 1:
                self.in_python += 1
                part.det.tick(now_obj, out)  # its whole tick: nothing was changed here
                return 0
            self.scans_in_c += 1
        if self._windows(part, scan.entries, now) < 0:
            self.in_python += 1
            part.det.drop_finished_windows(scan.entries, now_obj)
        return 0


def new_ticker(FastPath fast, engine):
    """The Ticker of `engine` (whose fast path is `fast`)."""
    return Ticker(fast, engine)
