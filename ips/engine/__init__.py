"""The engine: a compiled policy, the flow table and the detectors over packets; pure.

    from ips.engine import Engine, Meta
    decision = Engine(policy).handle(packet_bytes, Meta(iif="eth0"), now)

engine.py runs a packet from bytes to its Decision; actions.py is what a matching rule does
to the packet (alert, log, reject reply, rewrite); nat.py translates destinations; offload.py
chooses when a flow may go on in the kernel; blocks.py decides who may be banned.
"""

from ips.engine.engine import NO_META, Engine, EngineStats, Meta

__all__ = ["NO_META", "Engine", "EngineStats", "Meta"]
