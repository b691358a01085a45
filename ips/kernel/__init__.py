"""The kernel side on Linux: nftables (our table `inet ipsctl`: fast path, dynamic sets for
blocks), the iptables fallback diversion to NFQUEUE, and feature probes.

ruleset.py is pure (policy -> libnftables JSON); nft.py, iptables.py and probe.py do the I/O.
"""
