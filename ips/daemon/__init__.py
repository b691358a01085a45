"""The inline daemon: `ipsctl run`.

    supervisor (this process)                      worker (a child process, one per queue)
    ─ installs `inet ipsctl` (+ the iptables       ─ binds NFQUEUE, runs the engine,
      fallback chain when nft has no `queue`)        gives verdicts, sends reject replies
    ─ serves the control socket (apply, confirm,   ─ answers reload / stats over a pipe
      status), rolls back an unconfirmed apply     ─ beats a heartbeat every loop
    ─ watchdog: a worker whose heartbeat stops
      is killed and replaced

    config.py      DaemonConfig and its validation (the options of `ipsctl run`)
    supervisor.py  Daemon: the diversion, the workers, the control socket, the manual blocks
    worker.py      a worker: set-up, loop, tear-down, and its commands
    commands.py    the control socket's commands and who may run them
    rollback.py    an unconfirmed `apply --confirm`: its record, the watchdog that rolls it
                   back without the daemon, and what a start does with it
    stats.py       the numbers: worker stats, EVE stats, several workers' answers merged

A worker is a process so that a hung one can be killed. If the supervisor dies, the worker
sees its pipe close and exits; the kernel then applies the queue's bypass setting (fail-open
or fail-closed) until a new daemon starts, which first removes what the old one left.

Blocks (the members of the `banned_v4`/`banned_v6` sets, dropped by the first rules of our
chains) are the kernel's: the worker writes its engine's Block effects there, the supervisor
writes `ipsctl blocks add/del/flush` there (and tells the worker's engine), and a starting
worker adopts what the kernel holds; the MACs banned for forged packets (`banned_ether`) are
kept the same way. Across a restart:
  killed (SIGKILL, crash)  the table stays: fast path and blocks keep dropping, blocks expire
                           by their kernel timeouts; the next start applies over the table
                           (sets kept) and its worker adopts them.
  stopped (SIGTERM)        the table is removed — nothing of ipsctl filters while it is
                           stopped — after the blocks were saved to the state file (next to
                           the socket by default); the next start puts back those with time
                           left (their timeouts keep running while stopped) and removes the file.
"""

from ips.daemon.config import ConfigError, DaemonConfig, Problem, RunOptions
from ips.daemon.supervisor import Daemon, WorkerFailed, run

__all__ = ["ConfigError", "Daemon", "DaemonConfig", "Problem", "RunOptions", "WorkerFailed", "run"]
