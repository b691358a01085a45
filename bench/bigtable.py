"""A blocklist of a million entries: `check` and `apply` time and peak memory (issue 19, item 4).

    bigtable.py [--hosts 900000] [--nets 100000] [--dir DIR] [--no-apply]

Writes big.txt (HOSTS separate IPv4 addresses and NETS /28 networks, none inside another)
and a policy `table big file "big.txt"` / `drop from @big`, then measures, each in a fresh
process so that peak RSS is its own:
  check  load_policy (read, parse, resolve, the size limit) — what `ipsctl check` does
  apply  Nft().apply of that policy in a network namespace made for it (root only; the
         namespace is deleted afterwards), and the number of elements in the kernel
Prints one line per phase and a JSON summary. Sends no packets.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

POLICY = 'table big file "big.txt"\ndrop from @big\n'

CHECK = """
import json, resource, sys, time
from ips.policy.resolve import load_policy
start = time.perf_counter()
policy = load_policy(sys.argv[1])
took = time.perf_counter() - start
t = policy.tables["big"]
print(json.dumps({"seconds": round(took, 2), "entries": len(t.nets4) + len(t.nets6),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
"""

APPLY = """
import json, resource, sys, time
from ips.kernel.nft import Nft
from ips.policy.resolve import load_policy
from ips.translate.nft import NftPlan, static_sets
policy = load_policy(sys.argv[1])
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
plan = NftPlan(hooks=("forward",))
start = time.perf_counter()
Nft().apply(policy, plan)
took = time.perf_counter() - start
sets = {s.name: len(s.nets) for s in static_sets(policy, plan).used.values()}
print(json.dumps({"seconds": round(took, 2), "sets": sets,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                  "peak_rss_mb_after_check": loaded}))
"""


def write_table(path: Path, hosts: int, nets: int) -> None:
    """HOSTS addresses from 10.0.0.0 on (every other one, so that none are adjacent) and
    NETS /28s from 100.0.0.0 on."""
    with path.open("w") as f:
        for i in range(hosts):
            a = (10 << 24) + 2 * i
            f.write(f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}\n")
        for i in range(nets):
            a = (100 << 24) + 16 * i
            f.write(f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/28\n")


def run_python(code: str, policy: Path, netns: str | None = None) -> dict[str, object]:
    argv = [sys.executable, "-c", code, str(policy)]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hosts", type=int, default=900_000)
    ap.add_argument("--nets", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, help="where to write the files (default: a temporary one)")
    ap.add_argument("--no-apply", action="store_true", help="measure check only")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        where = args.dir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        write_table(where / "big.txt", args.hosts, args.nets)
        policy = where / "big.rules"
        policy.write_text(POLICY)
        result: dict[str, object] = {"entries": args.hosts + args.nets}
        result["check"] = check = run_python(CHECK, policy)
        print(f"check  {check['seconds']:>6} s  peak {check['peak_rss_mb']} MB", flush=True)
        if not args.no_apply:
            if os.geteuid() != 0:
                raise SystemExit("apply needs root (a network namespace); or --no-apply")
            netns = f"bigtable{os.getpid() % 10000}{secrets.token_hex(3)}"
            subprocess.run(["ip", "netns", "add", netns], check=True)
            try:
                result["apply"] = applied = run_python(APPLY, policy, netns)
            finally:
                subprocess.run(["ip", "netns", "del", netns], check=False)
            after_check = applied["peak_rss_mb_after_check"]
            print(
                f"apply  {applied['seconds']:>6} s  peak {applied['peak_rss_mb']} MB "
                f"(after reading the policy: {after_check} MB)"
            )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - started:.1f} s in all)", file=sys.stderr)
    sys.exit(code)
