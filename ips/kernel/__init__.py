"""The kernel side on Linux: nftables (our table `inet ipsctl`: fast path, dynamic sets for
blocks), the iptables fallback diversion to NFQUEUE, and feature probes.

The libnftables JSON is written by ips/translate/nft/ (pure); nft.py, iptables.py and probe.py
here do the I/O.
"""
