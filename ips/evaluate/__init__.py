"""Labelled evaluation: `ipsctl eval` — what the IPS said, held against the labels of a mixed
capture (ips/mix/labels.py), as precision, recall, false-positive rate and time to detect.

Pure: detections and labelled flows come in as values (ips/cli/evaluate.py runs the engine
through ips/replay.py, or reads an EVE file). docs/evaluation.md has the same rules for users.

The matching rules (slack S: 0 s for an offline run, 1 s by default over an EVE file whose
clock was aligned to the capture's; a labelled flow's span is [first packet, last packet] of
the capture, as the labels say — never what the engine or the tap saw of it, so a flow the
IPS cut short by a drop keeps its whole span, and its early alert still falls inside it):

* An alert names the 5-tuple of its packet. Its *packet's flow* is the labelled flow of that
  5-tuple (either direction; ICMP and other port-less protocols by addresses alone) whose
  span, widened by S, holds the alert's time; of two (a reused port), the later one. The
  alert's time is then moved into that flow's span: offline it is there already; over an
  EVE file this takes away the replay's jitter, so both are scored on the same clock.
* A rule's alert matches its packet's flow, and only it.
* A detector's alert blames addresses: the sender (`source`, else the packet's source) —
  or, for a flood measured `per dst` and a distributed scan, the victim (`target`). It
  matches every labelled flow *initiated by* a blamed sender (or *answered by* a named
  victim) that was active at some time in [t - W - S, t + S], W the detector's own window
  (its evidence; 10 s when the alert gives none), S = 0 when its packet's flow is labelled
  (its time is then the capture's own).
* A detector's block (`ipsctl_block`) matches every flow initiated by the blocked address
  that is active while the block lasts ([t - S, t + ttl + S]): inline, those flows' packets
  are dropped before any alert could name them — detected by the block, not missed.
* With `--drops` (offline), a packet refused without an alert detects its own flow (found by
  its index in the capture), as a block does: not an alert.
* A flow is *detected* when at least one alert or block matches it; its detection time is
  the earliest one's (a block's: the later of its start and the flow's).
* An alert is *true* when it matches at least one attack flow, *false* otherwise (whether it
  matched benign flows or nothing labelled at all). Blocks are not alerts: they only detect.
* Attack flows of one class form a burst while each starts at most `gap` seconds (10 s)
  after the burst's end so far; time to detect is per burst: its first detection time minus
  its first packet's, never below 0.

Measures: per class — flows detected / flows (recall); alerts matching the class / (those +
every false alert) (precision); benign flows flagged / benign flows (FPR, the same for every
class); bursts detected and time to detect. Per detector or rule the same from its own alerts
and blocks. Totals at the flow level (TP, FP, FN, TN) and at the alert level, and the base
rate with its warning (ppv at 1 % attacks).
"""

from ips.evaluate.detections import Detection, from_alert, from_block, from_eve
from ips.evaluate.score import BENIGN, Evaluation, Scorer, evaluate

__all__ = [
    "BENIGN",
    "Detection",
    "Evaluation",
    "Scorer",
    "evaluate",
    "from_alert",
    "from_block",
    "from_eve",
]
