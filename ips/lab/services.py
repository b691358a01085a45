"""Small lab servers, run as one background process per node inside its namespace:

    python -m ips.lab.services --http 80,8080 --udp-echo 53 --tcp-echo 7
    python -m ips.lab.services --https 443 --tls-cert lab.pem --tls-key lab.key

* http: answers GET/HEAD with `ok port N` (so a test sees which port, after a rewrite, served
  it), `ok port N host NAME` when the request's Host header is a name rather than an address
  (so a test sees which virtual host answered)
* https: the same over TLS with the given certificate (`python -m ips.lab.tlscert` makes a
  self-signed one for several names); ALPN offers http/1.1
* udp-echo: sends each datagram back to its sender
* tcp-echo: echoes what a connection sends until it closes (or idles out)

Listens on every address of the namespace, IPv4 and IPv6 (dual-stack sockets). Prints `ready`
on stdout once every socket is bound, so the caller can wait for it. Threads are bounded
(--max-clients); SIGTERM or SIGINT close everything and exit 0.

Standard library only: it starts inside a namespace and should start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import ipaddress
import os
import signal
import socket
import socketserver
import ssl
import sys
import threading

IDLE_TIMEOUT = 30.0  # seconds a TCP client may stay silent before it is dropped


class _Bounded:
    """Mixin for threaded servers: at most `limit` requests at once; beyond it a new
    connection is closed at once rather than queued (a flood must not grow threads)."""

    slots: threading.BoundedSemaphore

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self.slots.release()


def _family() -> int:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::", 0))
        return socket.AF_INET6
    except OSError:
        return socket.AF_INET


FAMILY = _family()
ANY = "::" if FAMILY == socket.AF_INET6 else "0.0.0.0"


class _DualStackMixin:
    """Bind on [::] accepting IPv4 too (IPV6_V6ONLY off); 0.0.0.0 where IPv6 is off."""

    address_family = FAMILY
    allow_reuse_address = True
    daemon_threads = True

    def server_bind(self) -> None:
        sock: socket.socket = self.socket  # type: ignore[attr-defined]
        if self.address_family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()  # type: ignore[misc]


class TCPServer(_Bounded, _DualStackMixin, socketserver.ThreadingTCPServer):
    request_queue_size = 128


class HTTPServer(_Bounded, _DualStackMixin, http.server.ThreadingHTTPServer):
    request_queue_size = 128

    def server_bind(self) -> None:
        # http.server would call socket.getfqdn() here: a DNS query from inside the lab,
        # towards a resolver that is not a lab host. The name is only used in CGI variables.
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        self.server_name = "lab"
        self.server_port = self.server_address[1]


class HTTPSServer(HTTPServer):
    """HTTPServer over TLS. The handshake runs in the connection's own thread (in the
    handler's setup), so a client that stalls its ClientHello, or whose ClientHello a policy
    drops, holds one thread until its timeout and never the accept loop."""

    tls: ssl.SSLContext
    verbose = False

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = self.socket.accept()
        wrapped = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return wrapped, addr

    def handle_error(self, request: object, client_address: object) -> None:
        # Failed handshakes and resets are what the application-layer tests provoke: a
        # traceback per blocked connection would only fill the log.
        if self.verbose:
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class UDPServer(_DualStackMixin, socketserver.UDPServer):
    """Single-threaded on purpose: an echo needs no more, and it stays bounded under floods."""


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(IDLE_TIMEOUT)
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass  # reset or idle timeout: the client is gone


class UDPEchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        with contextlib.suppress(OSError):  # e.g. the sender's address is unreachable now
            sock.sendto(data, self.client_address)


def host_name(header: str | None) -> str | None:
    """The name in a Host header (port and trailing dot removed, lower-case), or None when
    there is none or it is an address (`10.10.2.10:80`, `[fd00::1]`)."""
    if not header:
        return None
    host = header.strip()
    if host.startswith("["):
        return None
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    host = host.rstrip(".").lower()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host or None
    return None


def http_handler(port: int, verbose: bool) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "ipsctl-lab"
        sys_version = ""
        timeout = IDLE_TIMEOUT

        def setup(self) -> None:
            super().setup()
            if isinstance(self.request, ssl.SSLSocket):
                self.request.do_handshake()  # under the handler's timeout (set in setup)

        def _body(self) -> bytes:
            name = host_name(self.headers.get("Host"))
            return (f"ok port {port}" + (f" host {name}" if name else "") + "\n").encode()

        def _head(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()

        def do_GET(self) -> None:
            body = self._body()
            self._head(body)
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._head(self._body())

        def log_message(self, format: str, *args: object) -> None:
            # Quiet by default: scans and floods would fill the log under /run.
            if verbose:
                super().log_message(format, *args)

    return Handler


def _ports(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        if part.strip():
            port = int(part)
            if not 1 <= port <= 65535:
                raise argparse.ArgumentTypeError(f"port {port} out of range")
            out.append(port)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ips.lab.services",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--http", type=_ports, default=[], metavar="PORTS", help="e.g. 80,8080")
    ap.add_argument("--https", type=_ports, default=[], metavar="PORTS", help="e.g. 443")
    ap.add_argument("--tls-cert", metavar="PEM", help="certificate (chain) for --https")
    ap.add_argument("--tls-key", metavar="PEM", help="private key for --https")
    ap.add_argument("--tcp-echo", type=_ports, default=[], metavar="PORTS")
    ap.add_argument("--udp-echo", type=_ports, default=[], metavar="PORTS")
    ap.add_argument(
        "--max-clients",
        type=int,
        default=64,
        help="concurrent TCP connections per server (default 64)",
    )
    ap.add_argument("--verbose", action="store_true", help="log each HTTP request to stderr")
    args = ap.parse_args(argv)
    if args.https and not (args.tls_cert and args.tls_key):
        ap.error("--https needs --tls-cert and --tls-key")

    servers: list[socketserver.BaseServer] = []
    try:
        for port in args.http:
            srv: socketserver.BaseServer = HTTPServer((ANY, port), http_handler(port, args.verbose))
            srv.slots = threading.BoundedSemaphore(args.max_clients)  # type: ignore[attr-defined]
            servers.append(srv)
        if args.https:
            tls = tls_context(args.tls_cert, args.tls_key)
        for port in args.https:
            secure = HTTPSServer((ANY, port), http_handler(port, args.verbose))
            secure.tls, secure.verbose = tls, args.verbose
            secure.slots = threading.BoundedSemaphore(args.max_clients)
            servers.append(secure)
        for port in args.tcp_echo:
            srv = TCPServer((ANY, port), EchoHandler)
            srv.slots = threading.BoundedSemaphore(args.max_clients)
            servers.append(srv)
        for port in args.udp_echo:
            servers.append(UDPServer((ANY, port), UDPEchoHandler))
    except (OSError, ssl.SSLError) as exc:
        print(f"ips.lab.services: cannot listen: {exc}", file=sys.stderr)
        for srv in servers:
            srv.server_close()
        return 1

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        for s in servers
    ]
    for t in threads:
        t.start()

    _announce_ready()
    while not stop.wait(1.0):
        pass
    # shutdown() waits up to one poll interval per server: stop them all at once.
    stoppers = [threading.Thread(target=s.shutdown) for s in servers]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join(timeout=2.0)
    for srv in servers:
        srv.server_close()
    return 0


def _announce_ready() -> None:
    """Say `ready`, then point stdout at /dev/null: the caller reads one line and closes its
    end of the pipe; a later write there would raise BrokenPipeError."""
    with contextlib.suppress(BrokenPipeError):
        print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
