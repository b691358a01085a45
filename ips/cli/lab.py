"""`ipsctl lab`: the network-namespace lab (its commands live in ips/lab/cli.py)."""

from ips.lab.cli import lab

__all__ = ["lab"]
