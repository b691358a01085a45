"""The compiled path's loader (ips/fast/__init__.py): IPSCTL_PURE=1 runs the Python engine
alone, silently; a missing extension makes the engine run in Python too, and says so once
(a RuntimeWarning). Each case in a fresh interpreter, since the loader decides at import."""

from __future__ import annotations

from fresh_python import hiding, run_fresh

_ENGINES = """
import warnings
warnings.simplefilter("always")
from ips.core.build import build_packet
from ips.core.packet import PROTO_UDP
from ips.engine import Engine, Meta
from ips.policy.resolve import load_policy_text
import ips.fast
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    engines = [Engine(load_policy_text("set default accept\\n", "t.rules")) for _ in range(3)]
data = build_packet(PROTO_UDP, "10.0.0.1", "10.0.0.2", 1000, 53)
verdicts = {e.handle(data, Meta(), 1.0).verdict for e in engines}
print(ips.fast.available(), all(e._fast_path is None for e in engines), sorted(verdicts),
      len([w for w in caught if "compiled packet path" in str(w.message)]))
"""


def test_ipsctl_pure_runs_the_python_engine_alone_without_a_warning() -> None:
    assert run_fresh(_ENGINES, IPSCTL_PURE="1") == "False True ['accept'] 0"


def test_a_missing_extension_runs_the_python_engine_and_says_so_once() -> None:
    assert (
        run_fresh(hiding("ips.fast._fastpath") + _ENGINES, IPSCTL_PURE="")
        == "False True ['accept'] 1"
    )
