"""The daemon posts alerts to a webhook receiver in a namespace lab and retries a failing one."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

from labkit import ATTACKER, SERVER, InlineLab, inline_lab, wait_until

POLICY = """\
set default accept
drop proto tcp to port 23 alert "telnet attempt" sid 2000010 severity high
"""


# A receiver that answers 503 to the first FAIL requests of a path, then 200 (or always
# 400 under /bad); it logs every request (path, status, JSON body) as a line.
RECEIVER = textwrap.dedent("""
    import json, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    port, fail, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    seen = {}
    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            n = seen[self.path] = seen.get(self.path, 0) + 1
            status = 400 if self.path.startswith("/bad") else (503 if n <= fail else 200)
            with open(log, "a") as f:
                f.write(json.dumps({"path": self.path, "status": status, "n": n,
                                    "type": self.headers["Content-Type"],
                                    "body": json.loads(body)}) + "\\n")
            self.send_response(status)
            self.end_headers()
        def log_message(self, *a):
            pass
    HTTPServer(("0.0.0.0", port), H).serve_forever()
""")


def _start_receiver(box: InlineLab, tmp_path: Path, port: int, fail: int) -> tuple[object, Path]:
    script = tmp_path / "receiver.py"
    script.write_text(RECEIVER)
    log = tmp_path / "received.jsonl"
    proc = box.lab.popen("server", [sys.executable, str(script), str(port), str(fail), str(log)])
    ok = wait_until(lambda: f":{port}" in box.run("server", ["ss", "-Hltn"]).stdout, timeout=10)
    assert ok, "receiver did not listen"
    return proc, log


def _received(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def test_daemon_posts_alerts_and_retries_a_failing_receiver(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "wh") as box:
        proc, log = _start_receiver(box, tmp_path, 8099, fail=2)
        try:
            box.start_daemon(POLICY, "--webhook", f"http://{SERVER}:8099/hook/secret-token")
            # a telnet attempt from the attacker: dropped, with an alert
            box.run("attacker", ["curl", "-s", "-m", "1", f"telnet://{SERVER}:23"], timeout=10)
            # two 503s, then 200: backoff 0.5 s then 1 s
            assert wait_until(
                lambda: any(r["status"] == 200 for r in _received(log)), timeout=15
            ), _received(log)
            got = [r for r in _received(log) if r["path"] == "/hook/secret-token"]
            assert [r["status"] for r in got[:3]] == [503, 503, 200]
            assert all(r["type"] == "application/json" for r in got)
            body = got[2]["body"]
            assert body["event"]["alert"]["signature"] == "telnet attempt"
            assert body["event"]["src_ip"] == ATTACKER and body["event"]["dest_port"] == 23
            assert "telnet attempt" in body["text"] and body["content"] == body["text"]
            hook = box.status()["worker"]["webhook"]
            assert hook["sent"] >= 1 and hook["retries"] >= 2 and hook["dropped"] == 0
            assert "secret-token" not in json.dumps(hook)  # the URL's token stays private
            text = box.ipsctl("status").stdout
            assert "webhook  http://10.10.2.10:8099/…: sent" in text

            # a 4xx is not retried (the request itself is wrong); posted from the client's
            # namespace, to the same lab receiver
            code = textwrap.dedent(f"""
                import json, time
                from ips.sinks.webhook import Webhook
                hook = Webhook("http://{SERVER}:8099/bad", backoff=0.1).start()
                hook.submit({{"alert": {{"signature": "x"}}}})
                deadline = time.monotonic() + 10
                while hook.failed + hook.sent == 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                print(json.dumps(hook.stats()))
            """)
            out = box.run("client", [sys.executable, "-c", code], timeout=20)
            stats = json.loads(out.stdout)
            assert (stats["failed"], stats["retries"], stats["sent"]) == (1, 0, 0), stats
            assert stats["last_error"] == "HTTP 400"
            assert [r["status"] for r in _received(log) if r["path"] == "/bad"] == [400]

            # nothing listens on port 8098: connection refused, retried with backoff, then
            # counted as failed
            code = textwrap.dedent(f"""
                import json, time
                from ips.sinks.webhook import Webhook
                hook = Webhook("http://{SERVER}:8098/hook", attempts=3, backoff=0.1).start()
                hook.submit({{"alert": {{"signature": "x"}}}})
                start = time.monotonic()
                while hook.failed == 0 and time.monotonic() < start + 10:
                    time.sleep(0.02)
                print(json.dumps({{**hook.stats(), "took": time.monotonic() - start}}))
            """)
            out = box.run("client", [sys.executable, "-c", code], timeout=20)
            stats = json.loads(out.stdout)
            assert (stats["failed"], stats["retries"], stats["sent"]) == (1, 2, 0), stats
            assert "refused" in stats["last_error"], stats
            assert stats["took"] >= 0.3  # it waited 0.1 s, then 0.2 s: the backoff doubles
        finally:
            proc.kill()  # type: ignore[attr-defined]
            proc.wait(5)  # type: ignore[attr-defined]
