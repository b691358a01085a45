"""The names and numbers of `inet ipsctl` that several parts of the translation share: table,
chains, marks, comments, priorities, set sizes; and the type of one nft JSON expression."""

from __future__ import annotations

import re
from typing import Any

FAMILY = "inet"
TABLE = "ipsctl"
HOOKS = ("forward", "input", "output")
PRIORITY = -10  # before iptables' filter chains (0): our drops and marks come first
ACCEPT_MARK = 0x00100000  # the packet-mark bit "the fast path accepted this packet"
# Several queues (`--queues N`): the queue of a packet is chosen by a hash of its
# connection's *initiator* address (`ct original saddr`), so every connection a host opens —
# both directions of each — lands in one worker, and the per-source detectors (portscan,
# sweep, stealth, floods per src) see all of it. The index goes in these packet-mark bits;
# the NFQUEUE rules pick the queue by them.
QUEUE_SHIFT = 22
QUEUE_MASK = 0x7 << QUEUE_SHIFT  # up to 8 queues
MAX_QUEUES = 8
STEER_COMMENT = "ipsctl:steer"
STEER_SEED = 0x49505343  # one jhash seed for every steering rule (and across restarts)
OFFLOAD_MARK = 0x00200000  # packet-mark bit set by the worker's verdict: "offload this flow"
OFFLOAD_CT_SHIFT = 24
OFFLOAD_CT_MASK = 0xFF << OFFLOAD_CT_SHIFT  # ct-mark bits: the generation that offloaded it
OFFLOAD_PAUSED = 0xFF  # a generation never stamped: keeps the rule (and conntrack) in place
OFFLOAD_PRIORITY = 10  # after the queue (nft queue at -10, iptables' filter chain at 0)
OFFLOADED_COMMENT = "ipsctl:offloaded"  # later packets of offloaded connections (counter)
# The handshake's bare ACK: the worker's verdict on a SYN+ACK sets HANDSHAKE_ACK_MARK when the
# engine needs no more of the handshake (Decision.offload == OFFLOAD_HANDSHAKE_ACK); the
# offload chain stamps the generation with HANDSHAKE_ACK_CT set, and the main chain then passes
# one kind of packet of that connection without a word to the engine: a TCP ACK without
# payload (flags exactly ACK, the IP length that of the headers).
HANDSHAKE_ACK_MARK = 0x00080000  # packet-mark bit set by the worker's verdict
HANDSHAKE_ACK_CT = 0x00800000  # ct-mark bit next to the generation: "bare ACKs, then a copy"
# The first other packet of such a connection (its first data, or a FIN or reset; not a SYN)
# is not held: the kernel sends a copy of it to the worker (NFLOG group copy_group(queue)),
# stamps the full generation (clearing the bit) and passes it. A short connection's queue
# round trips go from three to two (SYN, SYN+ACK), and the engine still sees what the
# detectors need (that the connection carried data, or was closed or reset without) — a
# moment later.
COPIED_COMMENT = "ipsctl:copied"
# The same for a connection the engine must still see the next packet of (the inspector reads
# its first bytes, or an L7 clause waits for them): the worker's verdict on the SYN+ACK sets
# BARE_ACK_MARK (Decision.offload == OFFLOAD_BARE_ACKS), the offload chain stamps the
# generation with BARE_ACK_CT, the main chain passes the bare ACKs as above, and the first
# other packet clears the stamp (BARE_ACK_CLEARED_COMMENT) and goes on to the queue: a short
# connection's queue round trips go from four to three (SYN, SYN+ACK, its first data).
BARE_ACK_MARK = 0x00040000  # packet-mark bit set by the worker's verdict
BARE_ACK_CT = 0x00400000  # ct-mark bit next to the generation: "bare ACKs, then the queue"
BARE_ACK_CLEARED_COMMENT = "ipsctl:bare-acks-done"
COPY_GROUP_BASE = 32768  # NFLOG group of queue q's copies: COPY_GROUP_BASE + q (mod 65536)
_GEN_MASK = (
    OFFLOAD_CT_MASK | HANDSHAKE_ACK_CT | BARE_ACK_CT
)  # what a stamp writes and the rules compare
# (IP header length, TCP data offset) of a bare ACK: no options, or timestamps (Linux, BSD)
_BARE_ACK_SIZES = ((40, 5), (52, 8))
OFFLOAD_COMMENT = "ipsctl:offload"  # verdict mark -> ct mark
# Offloaded pings: the kernel accepts, per address, up to this share of the icmpflood rate and
# no more; what is over it goes to the queue, where the detector counts it (so it sees a flood
# less this small budget). Keyed like the detector (per src or per dst), in a meter set.
ICMP_OFFLOAD_SHARE = 0.1
ICMP_METER = "icmp_offload"  # sets icmp_offload_v4 / _v6: address -> token bucket
ICMP_METER_SIZE = 65536  # full: the update fails, the rule does not match, the queue decides
ICMP_METER_TIMEOUT = 60  # seconds an idle address keeps its bucket
# Floods absorbed before the queue (issue 19, item 2): a policy rule `… limit R per src else
# drop` that the kernel may enforce gets a meter — a dynamic set of sources, each with its
# token bucket — and the kernel drops a source's packets over the rate before they reach the
# queue (the engine still counts the ones under it, as before). See kernel_meters.
METER_PREFIX = "meter"  # sets meterN_v4 / meterN_v6 (N: the rule's index)
METER_SIZE = 65536  # full: the update fails, the rule does not match, the queue decides
METER_TIMEOUT = 60  # seconds an idle source keeps its bucket
METER_SUFFIX = ":excess"  # the meter rule's comment: the rule's own, then this
# `set synproxy on`: TCP handshakes through the gateway are completed by the kernel's SYN
# proxy (syncookies, no state per SYN), so a SYN flood — spoofed sources included — never
# reaches the queue; a connection meets the queue once its client answered the cookie. The
# SYN skips conntrack in a raw-priority prerouting chain, and the proxy answers it.
SYNPROXY_CHAIN = "synproxy_raw"
SYNPROXY_PRIORITY = -300  # raw: before conntrack (-200)
SYNPROXY_COMMENT = "ipsctl:synproxy"
SYNPROXY_INVALID_COMMENT = "ipsctl:synproxy-invalid"  # TCP conntrack calls invalid: dropped
SYNPROXY_HOOKS = ("forward", "input")  # SYNs from outside; the host's own need no proxy
SYNPROXY_OPTIONS = {4: {"mss": 1460, "wscale": 7, "flags": ["timestamp", "sack-perm"]},
                    6: {"mss": 1440, "wscale": 7, "flags": ["timestamp", "sack-perm"]}}  # fmt: skip
COMMENT_PREFIX = "ipsctl:"
USERSPACE_COMMENT = "ipsctl:to-userspace"  # counts the packets left to the engine
CLEAR_MARK_COMMENT = "ipsctl:clear-mark"
BLOCKS_COMMENT = "ipsctl:blocks"  # the leading drops of blocked sources (and their counter)
ETHER_BLOCKS_COMMENT = "ipsctl:blocks-ether"  # the drop of banned MACs (and its counter)
ETHER_HOOKS = ("forward", "input")  # where a packet has a sender's MAC (`ether saddr`)
BLOCK_TABLE = "banned"  # the dynamic table detectors and `ipsctl blocks` add to
DEFAULT_BLOCK_TIMEOUT = 3600  # seconds, when the policy does not declare BLOCK_TABLE
DEFAULT_BLOCK_SIZE = 65536
MAX_COMMENT = 128  # nft's limit for a comment
SET_TYPES = {4: "ipv4_addr", 6: "ipv6_addr"}
PROTO_UDPLITE = 136

# A static table with at least this many networks in a family goes to the kernel as named
# sets (see the package docstring); a smaller one stays in its rules, merged, as it always did.
NAMED_SET_MIN = 1024
ELEMENT_CHUNK = 100_000  # elements per transaction when loading a named set
# the names static_set_name makes: a prefix length, or "iv" for a geo table's interval set
STATIC_SET_RE = re.compile(r"_v[46]_(?:\d{1,3}|iv)_[0-9a-f]{8}$")

_T = {"family": FAMILY, "table": TABLE}
# One nft JSON expression: nested dicts, lists, strings and numbers whose shape follows their
# keys, as json.loads gives them; their values are read as Any.
Expr = dict[str, Any]
Alt = list[Expr]  # conditions that must all hold (one nft rule's matches)
