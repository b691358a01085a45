"""ipsctl: the command line. Exit codes: 0 ok, 1 policy errors (or a failed check), 2 usage.

The commands by audience, one module each:
    policy.py  check, explain, replay        the policy's author; no daemon
    daemon.py  run, apply, confirm, status,  the operator of the daemon
               doctor
    blocks.py  blocks list/add/del/flush     the blocked sources
    views.py   flows, top                    live views of a running daemon
    lab.py     lab                           the network-namespace lab
    geo.py     geo lookup/update/build       country and ASN data (offline)
    report.py  report top/volume, history,   the store's readers: what happened yesterday
               export
    mix.py     mix                           labelled mixes of captures (the researcher)
    evaluate.py eval                         a policy scored against labelled traffic
What they share (exit codes, the socket option, the control client): common.py.
"""

from __future__ import annotations

import click

from ips import __version__
from ips.cli.blocks import blocks
from ips.cli.daemon import apply, confirm, doctor, run, status
from ips.cli.evaluate import evaluate
from ips.cli.geo import geo
from ips.cli.lab import lab
from ips.cli.mix import mix
from ips.cli.policy import check, explain, replay
from ips.cli.report import export, history_command, report
from ips.cli.views import flows, top


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ipsctl")
def main() -> None:
    """ipsctl: inline firewall and intrusion prevention.

    \b
    check    validate a policy and summarise it
    explain  which rule decides a packet, and why
    replay   run a policy over a capture file (pcap/pcapng)
    """


for command in (
    check,
    explain,
    replay,
    run,
    apply,
    confirm,
    status,
    blocks,
    doctor,
    lab,
    flows,
    top,
    geo,
    report,
    history_command,
    export,
    mix,
    evaluate,
):
    main.add_command(command)
