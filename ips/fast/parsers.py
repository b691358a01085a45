"""The compiled stream parsers (ips/fast/_streamparse.pyx): a TLS ClientHello and HTTP/1.x
requests and responses read in C, with the results of ips/app/tls.py `parse_client_hello`
and ips/app/http.py `requests_from` / `responses_from`, which stay the reference.

The engine hands them to its application inspector when its compiled path is on
(`Engine(fast=True)`); when the module is not built, or IPSCTL_PURE=1 is set (read once, by
ips/fast/__init__.py), the inspector keeps the Python parsers: the same results, slower. A
missing build is said once, as a RuntimeWarning, as the compiled packet path's is.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from ips.fast import FORCED_PURE

__all__ = ["stream_parsers"]

_module: Any = None
_import_error = ""
_warned = False

if not FORCED_PURE:
    try:
        _module = importlib.import_module("ips.fast._streamparse")
    except ImportError as exc:  # not built: the Python parsers alone
        _import_error = str(exc)


def stream_parsers() -> Any:
    """The compiled parsers (a module with parse_client_hello, requests_from and
    responses_from), or None: IPSCTL_PURE, or not built."""
    global _warned
    if _module is None and not FORCED_PURE and not _warned:
        _warned = True
        warnings.warn(
            "ipsctl: the compiled stream parsers (ips/fast/_streamparse) are not built; the "
            f"Python TLS and HTTP parsers run alone, slower ({_import_error}). Build them with "
            "`pip install -e .`, or set IPSCTL_PURE=1 to say this is meant.",
            RuntimeWarning,
            stacklevel=2,
        )
    return _module
