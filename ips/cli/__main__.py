"""`python -m ips.cli`: the systemd unit, the labs and the tests run ipsctl so."""

from ips.cli import main

main()
