"""Types of the compiled module ips/fast/_streamparse.pyx (for mypy; the code is the .pyx)."""

from collections.abc import Sequence

from ips.app.http import HttpRequest, HttpResponse, Progress
from ips.app.tls import ClientHello, NeedMore
from ips.core.packet import Malformed

def parse_client_hello(buf: bytes) -> ClientHello | NeedMore | Malformed: ...
def requests_from(data: bytes, start: int, out: list[HttpRequest]) -> Progress: ...
def responses_from(
    data: bytes, request_methods: Sequence[str], start: int, out: list[HttpResponse]
) -> Progress: ...
