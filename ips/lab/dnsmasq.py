"""A real DNS server for a lab zone: Debian's dnsmasq (package dnsmasq-base), with no upstream.

    python -m ips.lab.dnsmasq --listen 10.10.2.10 --zone lab \\
        --record ok.lab=10.10.2.10 --record blocked.lab=10.10.2.10,10.10.2.100 \\
        --wildcard bad.lab=10.10.2.66 --log /tmp/dnsmasq.log

execs dnsmasq in the foreground, bound only to the given address (UDP and TCP port 53), that
answers:
* `--record NAME=ADDR[,ADDR…]`: A/AAAA records of exactly NAME (several addresses: one name
  that moves between servers);
* `--wildcard DOMAIN=ADDR`: DOMAIN and every name under it (`x.bad.lab`), NOERROR;
* any other name under `--zone` (default `lab`): NXDOMAIN, authoritatively, never forwarded;
* names outside the zone: REFUSED (no upstream: `--no-resolv`, `--no-hosts`, no
  /etc/dnsmasq.conf), so nothing the lab is asked leaves the lab.

With `--log FILE`, every query is written there (`--log-queries`): a test reads it to tell
whether a query reached the server or was answered on the way. Run it in the server's
namespace, e.g. `ipsctl lab exec server -- python -m ips.lab.dnsmasq --listen 10.10.2.10 …`,
and ask it with `dig @10.10.2.10 ok.lab`.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import sys
from collections.abc import Mapping, Sequence

DNSMASQ = "dnsmasq"


def dnsmasq_argv(
    listen: str,
    records: Mapping[str, Sequence[str]] | None = None,
    wildcards: Mapping[str, str] | None = None,
    *,
    zone: str = "lab",
    port: int = 53,
    log: str | None = None,
    ttl: int = 60,
    binary: str = DNSMASQ,
) -> list[str]:
    """The dnsmasq command line serving the lab zone on LISTEN only, in the foreground."""
    ipaddress.ip_address(listen)  # a bad address fails here, not as a dnsmasq message
    argv = [
        binary,
        "--keep-in-foreground",
        "--conf-file=/dev/null",  # not the host's /etc/dnsmasq.conf
        "--no-resolv",  # no upstream servers: nothing is forwarded out of the lab
        "--no-hosts",  # not the host's /etc/hosts
        "--no-poll",
        "--pid-file",  # empty: no PID file (the caller holds the PID)
        "--bind-interfaces",
        f"--listen-address={listen}",
        f"--port={port}",
        f"--local=/{zone}/",  # the zone is answered here or NXDOMAIN, never forwarded
        f"--local-ttl={ttl}",
        "--cache-size=0",
        # The server is a lab service run by root in a namespace the lab made; staying root
        # lets it write the log into the caller's (root-only) directory.
        "--user=root",
    ]
    for name, addresses in (records or {}).items():
        for address in addresses:
            ipaddress.ip_address(address)
        # One --host-record per address: one record holds at most one IPv4 and one IPv6
        # address; repeated, dnsmasq answers them all.
        argv += [f"--host-record={name},{address}" for address in addresses]
    for domain, address in (wildcards or {}).items():
        ipaddress.ip_address(address)
        argv.append(f"--address=/{domain}/{address}")
    if log is not None:
        argv += ["--log-queries=extra", f"--log-facility={log}"]
    return argv


def _pair(text: str) -> tuple[str, list[str]]:
    name, sep, addresses = text.partition("=")
    if not sep or not name or not addresses:
        raise argparse.ArgumentTypeError(f"expected NAME=ADDR[,ADDR…], got {text!r}")
    values = [a for a in addresses.split(",") if a]
    for address in values:
        try:
            ipaddress.ip_address(address)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return name.lower().rstrip("."), values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ips.lab.dnsmasq",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--listen", required=True, help="the lab address to serve on")
    ap.add_argument("--zone", default="lab", help="the lab's domain (default: lab)")
    ap.add_argument("--record", type=_pair, action="append", default=[], metavar="NAME=ADDRS")
    ap.add_argument("--wildcard", type=_pair, action="append", default=[], metavar="DOMAIN=ADDR")
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--log", metavar="FILE", help="log every query to FILE")
    args = ap.parse_args(argv)
    binary = shutil.which(DNSMASQ) or shutil.which(DNSMASQ, path="/usr/sbin:/sbin")
    if binary is None:
        print("ips.lab.dnsmasq: dnsmasq not found (apt install dnsmasq-base)", file=sys.stderr)
        return 1
    command = dnsmasq_argv(
        args.listen,
        dict(args.record),
        {name: addresses[0] for name, addresses in args.wildcard},
        zone=args.zone,
        port=args.port,
        log=args.log,
        binary=binary,
    )
    os.execv(binary, command)
    return 1  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
