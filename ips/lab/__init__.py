"""Network-namespace labs: a topology file brought up as namespaces, bridges and veth pairs.

Kept import-free on purpose: `python -m ips.lab.services` runs inside a namespace and must not
pay for pyroute2 or the policy code.
"""
