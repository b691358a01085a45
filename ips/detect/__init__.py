"""Detectors that block: port scans, address sweeps, stealth flags, floods.

Pure (no I/O, no clock: `now` is an argument). The engine calls `Detectors.observe` for each
packet after the flow table and before the rules, and `Detectors.tick` with its own tick.
Detectors only ask for blocks (BlockRequest effects); the engine's BlockManager decides them
(trust, never_block, ban budget, escalation: ips/engine/blocks.py).

Signature ids: 9000000-9000999 are reserved for detector alerts (a rule's `sid` may not use
them); each detector has a block of 100:

  portscan   9000101          port scan of one host
  sweep      9000201          sweep of many hosts
  stealth    9000301-9000306  NULL, XMAS, FIN, SYN+FIN, SYN+RST, other invalid flags
  icmpflood  9000401 / 9000402  echo requests over the rate, per source / per destination
  synflood   9000501 / 9000502  SYNs over the rate, per source / per destination
  udpflood   9000601 / 9000602  unanswered UDP over the rate, per source / per destination
  slowscan   9000701-9000703  over hours: ports of one host, hosts, ports of one host by
                              several sources (a long window over portscan's and sweep's
                              weights; alert-only by default)
  unjudged   9000901          packets passed the queue without inspection (fail-open; written
                              by the supervisor, ips/daemon/unjudged.py)
"""

from ips.detect.detectors import Detectors

__all__ = ["Detectors"]
