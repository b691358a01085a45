"""The compiled per-packet path (docs/architecture.md, "The compiled path").

`ips/fast/_fastpath.pyx`, built by Cython at `pip install -e .` (setup.py), decides the
packets of decided flows that need no Python, exactly as the engine would; the engine's
Python path stays the reference and decides everything else. When the extension is missing
(not built, or a platform without a compiler), or IPSCTL_PURE=1 is set, the engine runs in
pure Python alone: the same decisions, slower; a missing extension is said once, as a
RuntimeWarning.

`ips/fast/_dnsparse.pyx`, built alongside, is ips/app/dns.py's DNS message parser compiled
(the same values and Malformed reasons; dns.py stays the reference): `new_fast_path` gives
it to the engine's inspector, with `read_message`, the inspector's reading of a parsed
message (its events, passive DNS) compiled, so an engine with the compiled path reads DNS in
C and the reference engine (fast=False) in Python.

The pure rule holds for what runs per packet (the extension reads bytes and the engine's
state; no clock, no I/O); this loader alone reads the environment, once, at import.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ips.fast._fastpath import FastPath

__all__ = [
    "FORCED_PURE",
    "STOP_BUDGET",
    "STOP_EFFECTS",
    "STOP_END",
    "STOP_RECORD",
    "STOP_TICK",
    "STOP_TICKED",
    "available",
    "compiled_dns",
    "compiled_run_pcap",
    "new_fast_path",
    "new_ticker",
    "run_pcap",
]

# Why run_pcap hands back to its caller (the same values as in _fastpath.pyx).
STOP_END = 0  # no complete record header left
STOP_RECORD = 1  # a record the caller reads itself: empty, implausibly long, or cut short
STOP_TICK = 2  # the record at hand was judged and its time reached the next tick
STOP_EFFECTS = 3  # the record at hand was judged and its Decision carries effects
STOP_BUDGET = 4  # the budget of records was judged (the caller updates its progress)
STOP_TICKED = 5  # the record at hand was judged, and the tick run_pcap made gave events

# IPSCTL_PURE=1 (any value but "" and "0"): the pure-Python engine only, the extension unused.
FORCED_PURE = os.environ.get("IPSCTL_PURE", "") not in ("", "0")

_module: Any = None
_warned = False
_import_error = ""

_dns_module: Any = None
_dns_warned = False
_dns_import_error = ""

if not FORCED_PURE:
    try:
        _module = importlib.import_module("ips.fast._fastpath")
    except ImportError as exc:  # not built: the pure-Python engine alone
        _import_error = str(exc)
    try:
        _dns_module = importlib.import_module("ips.fast._dnsparse")
    except ImportError as exc:  # not built: ips/app/dns.py parses DNS
        _dns_import_error = str(exc)


def available() -> bool:
    """Whether the compiled path is in use (built, and not switched off by IPSCTL_PURE)."""
    return _module is not None


def _warn_missing() -> None:
    global _warned
    if _warned or FORCED_PURE:
        return
    _warned = True
    warnings.warn(
        "ipsctl: the compiled packet path (ips/fast/_fastpath) is not built; the pure-Python "
        f"engine runs alone, slower ({_import_error}). Build it with `pip install -e .` "
        "(needs gcc and the Python headers), or set IPSCTL_PURE=1 to say this is meant.",
        RuntimeWarning,
        stacklevel=3,
    )


def new_fast_path(engine: Any, reoffload_after: float) -> FastPath | None:
    """The fast path of `engine`, or None (pure Python: IPSCTL_PURE, or not built). With it,
    the engine's inspector parses and reads DNS messages in compiled code when that is built."""
    if _module is None:
        _warn_missing()
        return None
    fast: FastPath = _module.FastPath(engine, reoffload_after)
    dns = compiled_dns()
    if dns is not None:
        app = engine.app
        app.parse_dns_message = dns.parse_message
        app.parse_dns_stream = dns.parse_tcp_stream
        app.read_dns_message = dns.read_message
    return fast


def new_ticker(engine: Any, fast: FastPath) -> Any:
    """The compiled Engine.tick of `engine` (ips/fast/_fastpath.pyx Ticker), whose fast path
    is `fast` (only when available())."""
    assert _module is not None
    return _module.new_ticker(fast, engine)


def compiled_dns() -> Any:
    """The module ips/fast/_dnsparse.pyx: `parse_message` and `parse_tcp_stream` (what
    ips/app/dns.py's functions of those names answer) and `read_message` (what
    AppInspector._dns_message does); or None: IPSCTL_PURE, or not built (said once, as a
    RuntimeWarning, when the rest of the compiled path is built)."""
    global _dns_warned
    if _dns_module is None:
        if not (_dns_warned or FORCED_PURE or _module is None):
            _dns_warned = True
            warnings.warn(
                "ipsctl: the compiled DNS parser (ips/fast/_dnsparse) is not built; DNS "
                f"messages are parsed in Python, slower ({_dns_import_error}). Build it "
                "with `pip install -e .`.",
                RuntimeWarning,
                stacklevel=3,
            )
        return None
    return _dns_module


def run_pcap(*args: Any) -> Any:
    """ips/fast/_fastpath.pyx `run_pcap` (only when available())."""
    assert _module is not None
    return _module.run_pcap(*args)


def compiled_run_pcap() -> Callable[..., Any]:
    """ips/fast/_fastpath.pyx `run_pcap` itself (only when available()), for a caller that
    calls it in a loop: no Python call in between."""
    assert _module is not None
    function: Callable[..., Any] = _module.run_pcap
    return function
