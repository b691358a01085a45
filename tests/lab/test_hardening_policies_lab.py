"""Hostile policies sent to a running daemon in a namespace lab never replace the running one."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from labkit import ATTACKER, GATEWAY_RULES, SERVER, inline_lab

GATEWAY_BYTES = GATEWAY_RULES.read_bytes()


def raw_request(sock_path: str, payload: bytes) -> dict:
    """A request written by hand (bypassing ipsctl's own validation)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(sock_path)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except BrokenPipeError:  # the daemon stopped reading (too large): its answer is there
            pass
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data)


def test_hostile_policies_never_replace_the_running_one(tmp_path: Path) -> None:
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "loop.rules").write_text('include "loop2.rules"\n')
    (hostile / "loop2.rules").write_text('include "loop.rules"\n')
    (hostile / "escape.rules").write_text('include "../../../etc/passwd"\n')
    (hostile / "latin1.rules").write_bytes(b'drop alert "caf\xe9"\n')
    (hostile / "cut.rules").write_bytes(GATEWAY_BYTES[: len(GATEWAY_BYTES) // 3])
    (hostile / "deep.rules").write_text("accept to port " + "{" * 50_000 + "80" + "}" * 50_000)
    os.mkfifo(hostile / "fifo.rules")
    (hostile / "fifo-inc.rules").write_text('include "fifo.rules"\n')
    with inline_lab(tmp_path, "hpo") as box:
        box.start_daemon(GATEWAY_RULES)
        first = box.status()
        digest, worker = first["policy"]["digest"], first["worker"]["pid"]
        for path in sorted(hostile.glob("*.rules")):
            if path.name == "fifo.rules":
                continue
            out = box.ipsctl("apply", str(path))
            assert out.returncode == 1, (path.name, out.stdout, out.stderr)
            assert "Traceback" not in out.stderr and "NOT applied" in out.stderr, out.stderr
        # the daemon validates again: files handed over by hand, escaping, looping, broken
        main = str(hostile / "main.rules")
        refused = [
            {
                "op": "apply",
                "main": main,
                "sources": {main: 'include "../x.rules"\n', str(tmp_path / "x.rules"): "accept\n"},
            },
            {"op": "apply", "main": main, "sources": {main: 'include "main.rules"\n'}},
            {"op": "apply", "main": main, "sources": {main: "acept\n"}},
            {"op": "apply", "main": main, "sources": {}},
            {"op": "apply", "main": main, "sources": {main: "accept to port " + "{" * 50_000}},
        ]
        for req in refused:
            reply = raw_request(box.socket, json.dumps(req).encode() + b"\n")
            assert reply["ok"] is False and reply["diagnostics"], reply
        for junk in (
            b"[]\n",
            b"not json\n",
            b'{"op": "apply"}\n',
            b"\xff\xfe\n",
            b'{"op": "apply", "main": 5, "sources": []}\n',
        ):
            reply = raw_request(box.socket, junk)
            assert reply["ok"] is False and reply["error"], reply
        # over 64 MiB (root's bound): refused with an answer, or a reset the client may see
        try:
            big = raw_request(box.socket, b'{"op": "apply", "x": "' + b"a" * (65 << 20) + b'"}')
            limit = 64 << 20
            assert big == {
                "ok": False,
                "error": f"request too large: more than {limit} bytes in one line",
            }
        except ConnectionResetError:
            pass
        status = box.status()
        assert status["policy"]["digest"] == digest and status["worker"]["pid"] == worker
        assert status["counters"]["applies"] == 0
        assert status["counters"]["applies_refused"] == 5
        # still enforcing: the client is served, telnet from the attacker is dropped
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        assert box.curl("attacker", f"telnet://{SERVER}:23", max_time=2).returncode == 28
        assert ATTACKER
