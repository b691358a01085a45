"""Types of the compiled module ips/io/_nfqdrain.pyx (for mypy; the code is the .pyx)."""

from typing import Any

from ips.io.nfqnl import NfqClient

class CompiledDrain:
    compiled_packets: int
    def __init__(
        self, client: NfqClient, worker: Any, meter: Any = None, recv_many: int = 0
    ) -> None: ...
    def wait(self, fds: list[int], timeout: float, linger: bool = ...) -> list[int]: ...
    def drain(self, limit: int = ...) -> int: ...
