"""`ipsctl status`: the daemon's status document (ips/daemon/supervisor.py, Daemon.status) as
text for a terminal."""

from __future__ import annotations

from typing import Any


def _counts(counts: Any) -> str:
    if not isinstance(counts, dict) or not counts:
        return "none"
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _app_lines(app: Any) -> list[str]:
    """The application layer: flows by protocol, events, malformed and incomplete
    messages, reassembly memory and what it dropped, passive DNS."""
    if not isinstance(app, dict):
        return []
    if not app.get("enabled"):
        return ["app      off (set app-layer off)"]
    r = app.get("reassembly") or {}
    dropped = {k: r[k] for k in ("beyond-limit", "memcap", "too-many-pieces") if r.get(k)}
    pdns = app.get("passive_dns") or {}
    lines = [
        f"app      flows {_counts(app.get('protocols'))}; events {_counts(app.get('events'))}",
        f"         malformed {sum((app.get('malformed') or {}).values())}"
        f" ({_counts(app.get('malformed'))}), incomplete {_counts(app.get('incomplete'))}",
        f"         reassembly {r.get('memory', 0)} of {r.get('memory_cap', 0)} bytes held, "
        f"dropped: {_counts(dropped)}; returned at flow end {r.get('released_bytes', 0)} bytes "
        f"of {r.get('released_flows', 0)} flows",
    ]
    if pdns:
        lines.append(
            f"         passive DNS {pdns.get('entries', 0)} names, learned "
            f"{pdns.get('learned', 0)}, evicted {pdns.get('evicted', 0)}, "
            f"expired {pdns.get('expired', 0)}"
        )
    return lines


def _geo_lines(geo: Any) -> list[str]:
    """Who is on the other end: the data's directory, what is missing, the lookup cache,
    reverse DNS."""
    if not isinstance(geo, dict) or not geo.get("enabled"):
        return []
    cache = geo.get("cache") or {}
    where = f"{geo.get('directory')}" + (", site file" if geo.get("site") else "")
    if geo.get("problem"):
        state = str(geo["problem"])
    else:
        state = f"{where}; cache {cache.get('entries', 0)} addresses"
        state += f" ({cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses)"
    lines = [f"geo      {state}"]
    rdns = geo.get("reverse_dns")
    if isinstance(rdns, dict):
        lines.append(
            f"         reverse DNS {rdns.get('entries', 0)} cached, {rdns.get('in_flight', 0)} "
            f"in flight; asked {rdns.get('queries', 0)} (named {rdns.get('answered', 0)}, "
            f"no name {rdns.get('no_name', 0)}), not asked: rate {rdns.get('rate_limited', 0)}, "
            f"queue full {rdns.get('queue_full', 0)}"
        )
    return lines


def format_status(s: dict[str, Any]) -> str:
    p, w, c, q, d = s["policy"], s["worker"], s["counters"], s.get("queue") or {}, s["diversion"]
    lines = [
        f"ipsctl daemon pid {s['pid']}, up {s['uptime']:.0f} s",
        f"policy   {p['file']}  {str(p['digest'])[:16]}  loaded {p['age']:.0f} s ago, "
        f"{p['rules']} rules ({p['kernel_rules']} in the kernel)",
    ]
    if p.get("confirm_deadline"):
        lines.append("         awaiting `ipsctl confirm` (rolls back otherwise)")
    if p.get("unconfirmed"):
        lines.append(f"         {p['unconfirmed']['text']}")
    tap = s.get("tap") or {}
    if s.get("mode") == "tap":
        lines.append(
            f"tap      {tap.get('iface', '?')}{' promiscuous' if tap.get('promisc') else ''}"
            f"{', bpf ' + repr(tap['bpf']) if tap.get('bpf') else ''}: passive, nothing "
            f"enforced; {tap.get('frames', '?')} frames read, kernel dropped "
            f"{tap.get('kernel_drops', '?')} of {tap.get('kernel_packets', '?')}"
        )
    else:
        lines.append(
            f"divert   {d['backend']} queue {d['queue']} on {', '.join(d['hooks'])}, "
            f"fail-{'open' if d['fail_open'] else 'closed'}"
        )
    raw_verdicts = w.get("verdicts") or {}
    if s.get("mode") == "tap":  # nothing was enforced: say so
        raw_verdicts = {(k if k == "accept" else f"would_{k}"): v for k, v in raw_verdicts.items()}
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted(raw_verdicts.items()))
    lines.append(f"packets  {w.get('packets', '?')}  ({verdicts or 'none'})")
    lines.append(
        f"flows    {w.get('flows', '?')}   alerts {w.get('alerts', '?')}   "
        f"malformed {sum((w.get('malformed') or {}).values())}   "
        f"engine errors {w.get('engine_errors', '?')}"
    )
    ft, lat = w.get("flow_table") or {}, w.get("latency") or {}
    if ft:
        lines.append(
            f"         flows created {ft.get('created', 0)}, expired {ft.get('expired', 0)}, "
            f"evicted {ft.get('evicted', 0)}; bytes judged {w.get('bytes', '?')}"
        )
    if lat.get("count"):
        lines.append(
            f"latency  engine mean {lat['sum'] / lat['count'] * 1e6:.1f} µs "
            f"({lat['count']} packets sampled, 1 in {lat.get('every', 1)})"
        )
    if q:
        lines.append(
            f"queue    waiting {q['queue_total']}, dropped by kernel "
            f"{q['queue_dropped']}, dropped in transit {q['user_dropped']}"
        )
    u = s.get("unjudged") or {}
    if u:
        gate = "  (the gate is open: packets pass now)" if u.get("gate_open") else ""
        lines.append(
            f"unjudged {u.get('packets', 0)} packets passed without inspection{gate}; "
            f"offered to the queue {u.get('offered', 0)}, judged {u.get('judged', 0)}, "
            f"waiting {u.get('waiting', 0)}, dropped {u.get('dropped', 0)}"
        )
    lines += _app_lines(w.get("app"))
    lines += _geo_lines(w.get("geo"))
    lines.append(
        f"worker   pid {w.get('pid')}, restarts {c['worker_restarts']} "
        f"(hung {c['worker_hangs']}, died {c['worker_deaths']})"
        + (f"; {w['error']}" if w.get("error") else "")  # e.g. loading policy
    )
    lines.append(
        f"applies  {c['applies']} ok, {c['applies_refused']} refused, {c['rollbacks']} rolled back"
    )
    b = s.get("blocks") or {}
    if b:
        lat = b.get("latency") or {}
        lines.append(
            f"blocks   {b.get('active', '?')} active in @{b.get('table', 'banned')} "
            f"({b.get('kernel_drops', 0)} packets dropped by the kernel); added "
            f"{b.get('added', 0)} ({b.get('added_manually', 0)} by hand), expired "
            f"{b.get('expired', 0)}, removed {b.get('removed_manually', 0)}, "
            f"kernel errors {b.get('kernel_errors', 0)}"
        )
        if lat.get("count"):
            lines.append(
                f"         effect to kernel: last {lat['last_ms']:.2f} ms, mean "
                f"{lat['mean_ms']:.2f} ms, max {lat['max_ms']:.2f} ms ({lat['count']} blocks)"
            )
    detectors = s.get("detectors") or {}
    if detectors:
        parts = []
        for name, v in sorted(detectors.items()):
            if isinstance(v, dict):
                inner = ", ".join(f"{k} {n}" for k, n in v.items() if not isinstance(n, dict))
                parts.append(f"{name} ({inner})" if inner else name)
            else:
                parts.append(f"{name} {v}")
        lines.append(f"detect   {'; '.join(parts)}")
    hook = w.get("webhook") or {}
    if hook:
        lines.append(
            f"webhook  {hook.get('url')}: sent {hook.get('sent', 0)}, failed "
            f"{hook.get('failed', 0)}, dropped {hook.get('dropped', 0)}, retries "
            f"{hook.get('retries', 0)}"
            + (f" (last error: {hook['last_error']})" if hook.get("last_error") else "")
        )
    store = (s.get("sinks") or {}).get("store")  # the store sink (issue 21, ips/store/writer.py)
    if store:
        lines.append(
            f"store    {store['target']}: written {store['written']}, dropped {store['dropped']}, "
            f"write errors {store['write_errors']}, waiting {store['waiting']}"
            # The writer process died: records it had not confirmed (ips/store/writer.py).
            + (f", lost {store['lost']}" if store.get("lost") else "")
            + (f" (last error: {store['last_error']})" if store.get("last_error") else "")
        )
    never = s.get("never_block") or []
    if never:
        shown = ", ".join(never[:8]) + (f", … ({len(never)} in all)" if len(never) > 8 else "")
        lines.append(f"never    blocked: {shown}")
    return "\n".join(lines)
