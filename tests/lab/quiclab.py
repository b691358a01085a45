"""A QUIC server and client for the lab tests, on aioquic (a test-only dependency).

    python tests/lab/quiclab.py server --listen 10.10.2.10 --port 443 --cert C --key K
    python tests/lab/quiclab.py client --connect 10.10.2.10 --port 443 --sni ok.lab --timeout 3

The server prints `ready` once bound and answers each stream with `ok quic ` + what it read.
The client completes a QUIC v1 handshake with the given SNI (no certificate check: the lab's
is self-signed), sends `hello` on a stream, prints `ok quic hello` and exits 0; if the handshake
or the answer does not come within --timeout it prints `timeout` and exits 1. Both run in lab
namespaces and only talk to lab addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys

from aioquic.asyncio import connect, serve
from aioquic.quic.configuration import QuicConfiguration

ALPN = ["lab"]


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read(1024)
    writer.write(b"ok quic " + data)
    writer.write_eof()


async def run_server(listen: str, port: int, cert: str, key: str) -> int:
    config = QuicConfiguration(is_client=False, alpn_protocols=ALPN, idle_timeout=10)
    config.load_cert_chain(cert, key)
    server = await serve(
        listen,
        port,
        configuration=config,
        stream_handler=lambda r, w: asyncio.ensure_future(_answer(r, w)),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    return 0


async def _exchange(host: str, port: int, sni: str) -> bytes:
    config = QuicConfiguration(
        is_client=True, alpn_protocols=ALPN, server_name=sni, verify_mode=ssl.CERT_NONE
    )
    async with connect(host, port, configuration=config) as client:
        reader, writer = await client.create_stream()
        writer.write(b"hello")
        writer.write_eof()
        return await reader.read(1024)


async def run_client(host: str, port: int, sni: str, timeout: float) -> int:
    try:
        answer = await asyncio.wait_for(_exchange(host, port, sni), timeout)
    except (TimeoutError, ConnectionError) as exc:
        print("timeout" if isinstance(exc, TimeoutError) else f"error {exc!r}", flush=True)
        return 1
    print(answer.decode(errors="replace"), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="role", required=True)
    srv = sub.add_parser("server")
    srv.add_argument("--listen", required=True)
    srv.add_argument("--port", type=int, default=443)
    srv.add_argument("--cert", required=True)
    srv.add_argument("--key", required=True)
    cli = sub.add_parser("client")
    cli.add_argument("--connect", required=True)
    cli.add_argument("--port", type=int, default=443)
    cli.add_argument("--sni", required=True)
    cli.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args(argv)
    if args.role == "server":
        return asyncio.run(run_server(args.listen, args.port, args.cert, args.key))
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_client(args.connect, args.port, args.sni, args.timeout))
    return 1


if __name__ == "__main__":
    sys.exit(main())
