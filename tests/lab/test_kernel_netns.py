"""ips/kernel against the real kernel, inside network namespaces this test creates (and
removes, also on failure). Never the host's ruleset: every nft/iptables call here runs under
`ip netns exec`, and libnftables acts in the namespace of the process that made its context.

Needs root, nft, iptables and `ip`: skipped without them, except under CI=true where a
missing capability fails the run (CI must not go green by testing nothing).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CI = os.environ.get("CI") == "true"
TIMEOUT = 60  # seconds for any one command


def need(ok: object, why: str) -> None:
    if not ok:
        if CI:
            pytest.fail(f"CI=true and {why}")
        pytest.skip(why)


def sh(argv: list[str], check: bool = True, stdin: str | None = None) -> str:
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {done.returncode}: {done.stderr}")
    return done.stdout


def _capabilities() -> None:
    need(os.geteuid() == 0, "not root: network namespaces need root")
    for tool in ("ip", "nft", "iptables", "ip6tables", "iptables-restore"):
        need(shutil.which(tool), f"{tool} is missing (apt-get install iproute2 nftables iptables)")
    try:
        import nftables  # noqa: F401
    except ImportError:
        need(False, "the libnftables binding is missing (pip install pip-nftables)")


def _new_ns(made: list[str]) -> str:
    name = f"tk{os.getpid() % 10000}{secrets.token_hex(3)}"
    sh(["ip", "netns", "add", name])
    made.append(name)
    sh(["ip", "-n", name, "link", "set", "lo", "up"])
    return name


@pytest.fixture
def namespaces() -> Iterator[Any]:
    """A factory of fresh namespaces; all of them are deleted afterwards."""
    _capabilities()
    made: list[str] = []
    try:
        yield lambda: _new_ns(made)
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=TIMEOUT)


@pytest.fixture
def ns(namespaces: Any) -> str:
    return namespaces()


PRELUDE = """
import json, sys
from ips.kernel.nft import Nft
from ips.kernel.iptables import IptablesDiversion
from ips.kernel import probe
from ips.translate.nft import NftPlan
from ips.policy.resolve import load_policy_text
DATA = json.loads(sys.stdin.read() or "null")
"""


def run_in(ns: str, code: str, data: object = None) -> Any:
    """Run Python code in namespace ns (a fresh process, so libnftables opens its socket
    there); the code's last printed line is JSON and is returned."""
    out = sh(
        ["ip", "netns", "exec", ns, sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        stdin=json.dumps(data),
    )
    return json.loads(out.strip().splitlines()[-1])


def nft_list(ns: str, *what: str) -> list[dict[str, Any]]:
    out = sh(["ip", "netns", "exec", ns, "nft", "-j", "list", *what])
    return json.loads(out)["nftables"]


def comments(objs: list[dict[str, Any]], chain: str) -> list[str]:
    return [o["rule"].get("comment", "") for o in objs if o.get("rule", {}).get("chain") == chain]


POLICY = """\
table banned dynamic timeout 1h
table friends = { 192.0.2.0/24, 2001:db8::/32 }
drop    from @banned
accept  from @friends
reject  proto udp to port 53
drop    proto tcp flags S/SA to port { 23, 2323 } on eth*
accept  proto icmp type echo-request code 0 length < 200
drop    proto tcp flags FPU/FSRPAU alert "xmas"
accept  proto tcp to port 22
"""

APPLY = """
policy = load_policy_text(DATA["text"], "p.rules")
applied = Nft().apply(policy, NftPlan(hooks=tuple(DATA["hooks"])))
print(json.dumps([applied.split, applied.nft_rules]))
"""


def test_apply_puts_the_fast_path_in_our_table(ns: str) -> None:
    split, nft_rules = run_in(ns, APPLY, {"text": POLICY, "hooks": ["forward", "input"]})
    assert split == 5  # everything before the alerting rule
    objs = nft_list(ns, "table", "inet", "ipsctl")
    chains = {o["chain"]["name"]: o["chain"] for o in objs if "chain" in o}
    assert set(chains) == {"forward", "input"}
    for name, chain in chains.items():
        assert (chain["hook"], chain["prio"], chain["type"], chain["policy"]) == (
            name,
            -10,
            "filter",
            "accept",
        )
    sets = {o["set"]["name"]: o["set"] for o in objs if "set" in o}
    assert set(sets) == {"banned_v4", "banned_v6"}
    assert sets["banned_v4"]["type"] == "ipv4_addr" and sets["banned_v6"]["type"] == "ipv6_addr"
    assert all(s["flags"] == ["timeout"] and s["timeout"] == 3600 for s in sets.values())
    # the kernel holds every generated rule, in order, with its comment
    from ips.policy.resolve import load_policy_text
    from ips.translate import nft

    plan = nft.NftPlan(hooks=("forward", "input"))
    cmds = nft.build_ruleset(load_policy_text(POLICY, "p.rules"), plan)
    for chain in ("forward", "input"):
        want = [
            c["add"]["rule"]["comment"]
            for c in cmds
            if c.get("add", {}).get("rule", {}).get("chain") == chain
        ]
        assert comments(objs, chain) == want
    got = comments(objs, "forward")
    assert got[:3] == ["ipsctl:blocks", "ipsctl:blocks", "ipsctl:clear-mark"]
    assert got[-1] == "ipsctl:to-userspace"
    assert "ipsctl:p.rules:8" not in got and "ipsctl:p.rules:9" not in got  # after the split
    assert nft_rules == len(comments(objs, "forward")) + len(comments(objs, "input"))
    text = sh(["ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "ipsctl", "forward"])
    assert "ip saddr @banned_v4" in text and "ip6 saddr @banned_v6" in text
    assert 'iifname "eth*"' in text and 'oifname "eth*"' in text
    # nft prints the default `reject` (icmpx port-unreachable) as a bare "reject"
    rejects = [e["reject"] for o in objs if "rule" in o for e in o["rule"]["expr"] if "reject" in e]
    assert {"type": "icmpx", "expr": "port-unreachable"} in rejects
    assert "meta mark set meta mark | 0x00100000 accept" in text
    assert "meta length < 200" in text


def test_reapply_keeps_set_members_and_swaps_rules(ns: str) -> None:
    run_in(ns, APPLY, {"text": POLICY, "hooks": ["forward", "output"]})
    run_in(
        ns,
        """
        Nft().add_elements("banned", ["198.51.100.7", "2001:db8:9::1"], 600)
        print(json.dumps(None))
    """,
    )
    changed = (
        "table banned dynamic timeout 2h\ntable other dynamic\n"
        "drop from @banned\ndrop from @other\naccept proto udp"
    )
    run_in(ns, APPLY, {"text": changed, "hooks": ["forward"]})
    elements = run_in(
        ns,
        """
        print(json.dumps([[e.addr, e.timeout] for e in Nft().elements("banned")]))
    """,
    )
    assert sorted(elements) == [["198.51.100.7", 600], ["2001:db8:9::1", 600]]
    objs = nft_list(ns, "table", "inet", "ipsctl")
    assert {o["chain"]["name"] for o in objs if "chain" in o} == {"forward"}  # output is gone
    sets = {o["set"]["name"]: o["set"] for o in objs if "set" in o}
    assert set(sets) == {"banned_v4", "banned_v6", "other_v4", "other_v6"}
    assert sets["banned_v4"]["timeout"] == 7200  # updated in place, members kept
    assert comments(objs, "forward")[3:-1] == ["ipsctl:p.rules:3"] * 2 + [
        "ipsctl:p.rules:4"
    ] * 2 + ["ipsctl:p.rules:5"]
    # and back: a set that went away is deleted, the rest stays
    run_in(ns, APPLY, {"text": POLICY, "hooks": ["input"]})
    objs = nft_list(ns, "table", "inet", "ipsctl")
    assert {o["set"]["name"] for o in objs if "set" in o} == {"banned_v4", "banned_v6"}
    assert {o["chain"]["name"] for o in objs if "chain" in o} == {"input"}


def test_the_icmp_offload_meter_survives_applies_and_goes_with_its_detector(ns: str) -> None:
    """An icmpflood detector with offload: the meter sets (flagged dynamic by nft because
    rules update them) are kept over applies — re-adding them was refused — and removed with
    the detector."""
    apply_gen = """
policy = load_policy_text(DATA["text"], "p.rules")
Nft().apply(policy, NftPlan(hooks=("forward",), offload_generation=DATA["gen"]))
print(json.dumps(None))
"""
    flood = POLICY + "detect icmpflood rate 300/s per src limit\n"
    for gen in (3, 0, 4, 5):  # start, a swap (paused, then the new generation), another
        run_in(ns, apply_gen, {"text": flood, "gen": gen})
    sets = {o["set"]["name"] for o in nft_list(ns, "table", "inet", "ipsctl") if "set" in o}
    assert {"icmp_offload_v4", "icmp_offload_v6"} <= sets
    text = sh(["ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "ipsctl", "forward"])
    assert "update @icmp_offload_v4 { ip saddr limit rate 30/second" in text
    run_in(ns, apply_gen, {"text": POLICY, "gen": 6})
    sets = {o["set"]["name"] for o in nft_list(ns, "table", "inet", "ipsctl") if "set" in o}
    assert sets == {"banned_v4", "banned_v6"}


def test_elements_with_timeouts(ns: str) -> None:
    run_in(ns, APPLY, {"text": POLICY, "hooks": ["forward"]})
    got = run_in(
        ns,
        """
        n = Nft()
        n.add_elements("banned", ["203.0.113.5"], 100)
        n.add_elements("banned", ["203.0.113.6", "2001:db8::66"])  # the set's default
        first = {e.addr: [e.timeout, e.expires] for e in n.elements("banned")}
        n.add_elements("banned", ["203.0.113.5"], 300)  # a refresh resets the timeout
        second = {e.addr: [e.timeout, e.expires] for e in n.elements("banned")}
        removed = n.delete_elements("banned", ["203.0.113.6", "203.0.113.99"])  # one absent
        third = sorted(e.addr for e in n.elements("banned"))
        print(json.dumps([first, second, removed, third]))
    """,
    )
    first, second, removed, third = got
    assert first["203.0.113.5"][0] == 100 and 90 <= first["203.0.113.5"][1] <= 100
    assert first["203.0.113.6"][1] > 3500  # default timeout of the set (1h)
    assert second["203.0.113.5"][0] == 300 and second["203.0.113.5"][1] > 250
    assert removed == 1
    assert third == ["2001:db8::66", "203.0.113.5"]


def test_remove_touches_nothing_else(ns: str) -> None:
    decoy = (
        "table inet other {\n chain c {\n  type filter hook forward priority 0; policy accept;\n"
        "  ip saddr 192.0.2.1 counter drop\n }\n}\n"
    )
    sh(["ip", "netns", "exec", ns, "nft", "-f", "-"], stdin=decoy)
    sh(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "iptables",
            "-w",
            "-A",
            "FORWARD",
            "-s",
            "192.0.2.99",
            "-j",
            "DROP",
        ]
    )
    before_other = nft_list(ns, "table", "inet", "other")
    run_in(ns, APPLY, {"text": POLICY, "hooks": ["forward"]})
    first, second = run_in(ns, "n = Nft(); print(json.dumps([n.remove(), n.remove()]))")
    assert (first, second) == (True, False)
    tables = {
        (o["table"]["family"], o["table"]["name"]) for o in nft_list(ns, "tables") if "table" in o
    }
    assert ("inet", "ipsctl") not in tables and ("inet", "other") in tables
    assert _strip_handles(nft_list(ns, "table", "inet", "other")) == _strip_handles(before_other)
    rules = sh(["ip", "netns", "exec", ns, "iptables", "-w", "-S", "FORWARD"])
    assert "-A FORWARD -s 192.0.2.99/32 -j DROP" in rules


def _strip_handles(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for obj in objs:
        ((kind, body),) = obj.items()
        if kind != "metainfo":
            out.append({kind: {k: v for k, v in body.items() if k != "handle"}})
    return out


def test_iptables_diversion_is_idempotent_and_leaves_user_rules(ns: str) -> None:
    for binary, addr in (("iptables", "192.0.2.99"), ("ip6tables", "2001:db8::99")):
        sh(["ip", "netns", "exec", ns, binary, "-w", "-A", "FORWARD", "-s", addr, "-j", "DROP"])
    got = run_in(
        ns,
        """
        d = IptablesDiversion()
        d.install(hooks=("forward", "input"), queue=0, fail_open=True)
        d.install(hooks=("forward", "input"), queue=(2, 5), fail_open=True)  # again: refresh
        print(json.dumps(None))
    """,
    )
    assert got is None
    for binary in ("iptables", "ip6tables"):
        rules = sh(["ip", "netns", "exec", ns, binary, "-w", "-S"]).splitlines()
        jumps = [r for r in rules if r.endswith("-j IPSCTL")]
        assert jumps == [
            "-A INPUT -m comment --comment ipsctl -j IPSCTL",
            "-A FORWARD -m comment --comment ipsctl -j IPSCTL",
        ]
        ours = [r for r in rules if r.startswith("-A IPSCTL")]
        assert ours == [
            "-A IPSCTL -m mark --mark 0x100000/0x100000 -j RETURN",
            "-A IPSCTL -j NFQUEUE --queue-balance 2:5 --queue-bypass",
        ]
        forward = [r for r in rules if r.startswith("-A FORWARD")]
        assert forward[0].endswith("-j IPSCTL")  # first: before the user's rules
    # fewer hooks: the INPUT jump goes
    run_in(ns, "IptablesDiversion().install(hooks=('forward',)); print('null')")
    assert "-A INPUT" not in sh(["ip", "netns", "exec", ns, "iptables", "-w", "-S"])
    removed = run_in(
        ns,
        """
        d = IptablesDiversion()
        print(json.dumps([d.remove(), d.remove()]))
    """,
    )
    assert removed == [True, False]
    for binary, addr in (("iptables", "192.0.2.99/32"), ("ip6tables", "2001:db8::99/128")):
        rules = sh(["ip", "netns", "exec", ns, binary, "-w", "-S"])
        assert "IPSCTL" not in rules
        assert f"-A FORWARD -s {addr} -j DROP" in rules


def _nft_accepts(ns: str, rule: str) -> bool:
    """Ground truth from the nft command itself: does this kernel take `rule` (in a chain
    without a hook, removed again)?"""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=f"table inet tprobe {{\n chain c {{\n  {rule}\n }}\n}}\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    sh(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "tprobe"], check=False)
    return done.returncode == 0


def test_probe_matches_the_kernel(ns: str) -> None:
    caps = run_in(ns, "print(json.dumps(probe.probe().as_dict()))")
    assert caps["nft_queue"] == _nft_accepts(ns, "queue num 0 bypass")
    assert caps["nft_log"] == _nft_accepts(ns, "log group 0")  # offload's copies (NFLOG)
    assert caps["root"] and caps["nft_library"] and caps["timeout_sets"]
    assert caps["iptables_nfqueue"], caps["reasons"]
    if not caps["nft_queue"]:  # this machine (see DESIGN.md): the iptables fallback
        assert caps["diversion"] == "iptables"
        assert "queue" in caps["reasons"]["nft_queue"]
    tables = [o for o in nft_list(ns, "tables") if "table" in o]
    assert tables == []  # the probe table is gone, nothing was left behind


# ---- real packets -----------------------------------------------------------------------------

TRAFFIC_POLICY = """\
table banned dynamic timeout 1h
drop    from @banned
drop    proto udp to port 9001
accept  proto udp to port 9002
match   proto udp alert "seen"
"""

SEND = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port, count in DATA:
    for _ in range(count):
        s.sendto(b"x" * 20, ("10.199.0.2", port))
print("null")
"""


def _counters(ns: str) -> dict[str, int]:
    return run_in(
        ns,
        """
        print(json.dumps({k: v.packets for k, v in Nft().counters().items()}))
    """,
    )


def _ipsctl_chain_counts(ns: str) -> list[int]:
    out = sh(["ip", "netns", "exec", ns, "iptables", "-w", "-L", "IPSCTL", "-v", "-n", "-x"])
    return [int(line.split()[0]) for line in out.splitlines()[2:] if line.strip()]


def test_packets_meet_the_fast_path_then_the_queue(namespaces: Any) -> None:
    """Two namespaces joined by a veth pair; the receiver runs the fast path at `input` and
    the iptables diversion. Drops stop in nft; accepts carry the mark past the queue; the
    rest meets NFQUEUE (nobody listens: --queue-bypass lets it through)."""
    a, b = namespaces(), namespaces()
    sh(["ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b])
    sh(["ip", "-n", a, "addr", "add", "10.199.0.1/24", "dev", "va"])
    sh(["ip", "-n", b, "addr", "add", "10.199.0.2/24", "dev", "vb"])
    sh(["ip", "-n", a, "link", "set", "va", "up"])
    sh(["ip", "-n", b, "link", "set", "vb", "up"])
    # static neighbours: no ARP packets to count
    mac_b = sh(["ip", "-n", b, "-j", "link", "show", "vb"])
    sh(
        [
            "ip",
            "-n",
            a,
            "neigh",
            "replace",
            "10.199.0.2",
            "lladdr",
            json.loads(mac_b)[0]["address"],
            "dev",
            "va",
        ]
    )
    run_in(b, APPLY, {"text": TRAFFIC_POLICY, "hooks": ["input"]})
    run_in(b, "IptablesDiversion().install(hooks=('input',)); print('null')")
    run_in(a, SEND, [[9001, 3], [9002, 4], [9003, 5]])
    counts = _counters(b)
    assert counts["ipsctl:p.rules:3"] == 3  # dropped in the kernel
    assert counts["ipsctl:p.rules:4"] == 4  # accepted in the kernel, marked
    assert counts["ipsctl:to-userspace"] == 5
    mark_return, nfqueue = _ipsctl_chain_counts(b)
    assert (mark_return, nfqueue) == (4, 5)  # the marked ones skipped the queue
    # a block in the dynamic set stops everything from that address in the kernel, by the
    # chain's first rules (the policy's own `drop from @banned` sees nothing)
    assert counts["ipsctl:blocks"] == 0
    run_in(b, 'Nft().add_elements("banned", ["10.199.0.1"], 60); print("null")')
    run_in(a, SEND, [[9002, 2], [9003, 2]])
    counts = _counters(b)
    assert counts["ipsctl:blocks"] == 4
    assert counts["ipsctl:p.rules:2"] == 0
    assert counts["ipsctl:to-userspace"] == 5


def test_a_merged_blocklist_drops_its_members_in_the_kernel(namespaces: Any) -> None:
    """5,000 `drop from` lines are one nft rule with a set; a listed sender is dropped by it,
    an unlisted one goes on to the queue rule."""
    a, b = namespaces(), namespaces()
    sh(["ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b])
    sh(["ip", "-n", a, "addr", "add", "10.199.0.1/24", "dev", "va"])
    sh(["ip", "-n", a, "addr", "add", "10.199.0.3/24", "dev", "va"])
    sh(["ip", "-n", b, "addr", "add", "10.199.0.2/24", "dev", "vb"])
    sh(["ip", "-n", a, "link", "set", "va", "up"])
    sh(["ip", "-n", b, "link", "set", "vb", "up"])
    blocklist = [f"drop from 198.18.{i // 250}.{i % 250 + 1}" for i in range(5000)]
    blocklist.insert(2500, "drop from 10.199.0.3")
    text = "\n".join([*blocklist, 'match proto udp alert "seen"']) + "\n"
    split, nft_rules = run_in(b, APPLY, {"text": text, "hooks": ["input"]})
    assert split == 5001 and nft_rules <= 10  # one merged rule (+ blocks, marks, tail)
    send_from = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((DATA, 0))
for _ in range(3):
    s.sendto(b"x" * 20, ("10.199.0.2", 9000))
print("null")
"""
    run_in(a, send_from, "10.199.0.3")
    run_in(a, send_from, "10.199.0.1")
    counts = _counters(b)
    assert counts["ipsctl:p.rules:1-5001"] == 3
    assert counts["ipsctl:to-userspace"] >= 3


def test_a_worker_binds_its_copy_group_only_when_it_reads_copies(ns: str) -> None:
    """Offload's NFLOG copies (queue 7 -> group copy_group(7)): bound with the queue when
    the kernel has NFLOG; not at all when the probe found none (the rules then queue the
    first data instead); released with the queue."""
    got = run_in(
        ns,
        """
        from ips.engine import Engine
        from ips.io.nfqueue import QueueWorker
        from ips.translate.nft import copy_group
        def groups():
            with open("/proc/net/netfilter/nfnetlink_log") as f:
                return [int(line.split()[0]) for line in f]
        out = {"group": copy_group(7)}
        for copies in (True, False):
            engine = Engine(load_policy_text("set default accept\\n", "t.rules"))
            worker = QueueWorker(7, engine, read_copies=copies)
            worker.bind()
            out[str(copies)] = {"fd": worker.copy_fd is not None, "groups": groups()}
            worker.unbind()
        out["after"] = groups()
        print(json.dumps(out))
    """,
    )
    assert got["True"] == {"fd": True, "groups": [got["group"]]}, got
    assert got["False"] == {"fd": False, "groups": []}, got
    assert got["after"] == [], got
