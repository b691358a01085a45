"""The policy author's commands: check, explain, replay (no daemon needed)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

import click

from ips.cli.common import EXIT_POLICY, EXIT_USAGE, echo_errors, error_report, load_or_exit
from ips.policy.diagnostics import PolicyError, render
from ips.policy.explain import size_text
from ips.policy.model import Policy
from ips.policy.resolve import load_policy

# ---- check ------------------------------------------------------------------------------------


def policy_summary(policy: Policy) -> dict[str, Any]:
    actions = Counter(r.action for r in policy.rules)
    return {
        "ok": True,
        "files": policy.files,
        "digest": policy.digest,
        "rules": len(policy.rules),
        "actions": dict(actions),
        "alerts": sum(1 for r in policy.rules if r.alert),
        "app_clauses": dict(Counter(c.clause for r in policy.rules for c in r.app)),
        # How far `payload contains` reads (docs/offload.md): each depth of the rules that
        # have one, in bytes (0: unlimited), and how many rules read to it.
        "payload_depths": [
            {"depth": depth, "rules": n}
            for depth, n in sorted(
                Counter(policy.depth_of(r) for r in policy.rules if r.contains).items()
            )
        ],
        "tables": {
            name: {
                "kind": t.kind,
                "entries": t.entries,
                **({"holds": "names"} if t.names is not None else {}),
                **({"timeout": t.timeout} if t.timeout else {}),
            }
            for name, t in policy.tables.items()
        },
        "detectors": {
            name: {k: v for k, v in d.params.items() if k != "ignore"}
            for name, d in policy.detectors.items()
        },
        "options": {
            "default": policy.default_verdict,
            "on-error": policy.on_error,
            "malformed": policy.malformed_verdict,
        },
        "warnings": [d.as_dict() for d in policy.warnings],
    }


@click.command()
@click.argument("policies", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    help="json: machine-readable diagnostics and summary",
)
def check(policies: tuple[str, ...], fmt: str) -> None:
    """Validate POLICY files: every error with file:line:col and a hint; exit 1 on errors."""
    failed = False
    results = []
    for path in policies:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            failed = True
            if fmt == "json":
                results.append(error_report(path, exc))
            else:
                echo_errors(path, exc)
            continue
        summary = policy_summary(policy)
        if fmt == "json":
            results.append({"file": path, **summary})
            continue
        if policy.warnings:
            click.echo(render(policy.warnings, policy.sources), err=True)
        acts = ", ".join(f"{n} {a}" for a, n in sorted(summary["actions"].items()))
        tables = ", ".join(
            f"@{n} ({t['kind']}, {t['entries']}{' names' if t.get('holds') else ''})"
            if t["kind"] != "dynamic"
            else f"@{n} (dynamic)"
            for n, t in summary["tables"].items()
        )
        click.echo(f"{path}: ok")
        click.echo(f"  rules      {summary['rules']}" + (f" ({acts})" if acts else ""))
        click.echo(f"  tables     {tables or 'none'}")
        if summary["app_clauses"]:
            clauses = ", ".join(f"{c} {n}" for c, n in sorted(summary["app_clauses"].items()))
            click.echo(f"  app layer  {clauses}")
        if summary["payload_depths"]:
            depths = ", ".join(
                f"{n} rule{'s' if n > 1 else ''} read "
                + (f"the first {size_text(d)}" if d else "everything (unlimited)")
                for d, n in ((p["depth"], p["rules"]) for p in summary["payload_depths"])
            )
            encrypted = "not read" if policy.encrypted_payload_skipped else "read too"
            click.echo(
                f"  payload    {depths} of each direction of a flow; TLS/SSH/QUIC {encrypted}"
            )
        click.echo(f"  detectors  {', '.join(policy.detectors) or 'none'}")
        opts = summary["options"]
        click.echo(
            f"  default {opts['default']}, on-error {opts['on-error']}, "
            f"malformed {opts['malformed']}"
        )
        click.echo(f"  digest     {policy.digest[:16]}")
    if fmt == "json":
        click.echo(json.dumps(results if len(results) > 1 else results[0], indent=2))
    sys.exit(EXIT_POLICY if failed else 0)


# ---- explain ----------------------------------------------------------------------------------


@click.command()
@click.argument("policy_path", metavar="POLICY", type=click.Path(dir_okay=False))
@click.option(
    "--packet",
    "-p",
    required=True,
    help='e.g. "tcp 10.0.0.1:1234 > 10.0.0.2:80 flags S", '
    '"icmp 10.0.0.1 > 10.0.0.2 type echo-request", '
    '"udp [2001:db8::1]:5353 > [2001:db8::2]:53 payload \\"x\\""',
)
@click.option("--in", "iif", help="input interface name")
@click.option("--out", "oif", help="output interface name")
@click.option(
    "--established",
    is_flag=True,
    help="the packet belongs to a connection that has seen a reply (state established)",
)
@click.option(
    "--member",
    "members",
    multiple=True,
    metavar="TABLE=ADDR",
    help="treat ADDR as a member of dynamic TABLE (repeatable)",
)
@click.option("--app", "app_proto", help="the flow's application protocol (tls, http, dns, ...)")
@click.option("--sni", help="the TLS ClientHello's server name")
@click.option("--ja3", help="the TLS client's JA3 hash")
@click.option("--ja4", help="the TLS client's JA4 fingerprint")
@click.option("--quic-sni", help="the server name of the QUIC Initial's ClientHello")
@click.option("--dns", "dns_queries", multiple=True, help="a name the DNS query asks (repeatable)")
@click.option("--http-host", help="the HTTP request's Host")
@click.option("--http-uri", help="the HTTP request's URI")
@click.option("--http-method", help="the HTTP request's method")
@click.option("--http-user-agent", help="the HTTP request's User-Agent")
def explain(
    policy_path: str,
    packet: str,
    iif: str | None,
    oif: str | None,
    established: bool,
    members: tuple[str, ...],
    **l7: Any,
) -> None:
    """Show which rule of POLICY decides a packet, and why each earlier rule does not.

    Application-layer clauses read the L7 options (--sni, --dns, --http-host, ...): with
    any of them, the flow's client message is taken as read (what is not given is absent);
    without, it is not read yet, and a rule that needs it is pending."""
    from ips.core.addr import parse_addr
    from ips.policy.explain import explain as explain_rules
    from ips.policy.packetspec import PacketSpecError, packet_from_text

    policy = load_or_exit(policy_path)
    try:
        pkt = packet_from_text(packet)
    except PacketSpecError as exc:
        raise click.BadParameter(str(exc), param_hint="--packet") from None
    dynamic: dict[str, set[bytes]] = {}
    for m in members:
        name, _, addr = m.partition("=")
        name = name.lstrip("@")
        if name not in policy.tables or policy.tables[name].kind != "dynamic":
            raise click.BadParameter(
                f"no dynamic table '{name}' in the policy", param_hint="--member"
            )
        try:
            dynamic.setdefault(name, set()).add(parse_addr(addr))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--member") from None
    app = explain_app_context(pkt.proto, l7)
    steps, decider = explain_rules(policy, pkt, iif, oif, established, dynamic, app)
    click.echo(f"packet: {packet}")
    for step in steps:
        r = step.rule
        mark = "MATCH" if step.matched else ("wait " if step.pending else "no   ")
        click.echo(f"  {mark} {r.span.file}:{r.span.line}  {r.text}")
        click.echo(f"        {step.reason}")
    waiting = next((s for s in steps if s.rule is decider and s.pending), None)
    if decider is None:
        click.echo(f"=> no rule matched: default verdict {policy.default_verdict}")
    elif waiting is not None:
        click.echo(
            f"=> accept (app-pending): {decider.span.file}:{decider.span.line} decides once "
            f"the application layer is read ({waiting.reason}); not offloaded meanwhile"
        )
    else:
        click.echo(f"=> {decider.action} by {decider.span.file}:{decider.span.line}")


# Which application protocol an L7 option implies, when --app is not given.
_L7_OPTION_PROTOS = {
    "sni": "tls",
    "ja3": "tls",
    "ja4": "tls",
    "quic_sni": "quic",
    "dns_queries": "dns",
    "http_host": "http",
    "http_uri": "http",
    "http_method": "http",
    "http_user_agent": "http",
}


def explain_app_context(proto: int, options: dict[str, Any]) -> Any:
    """The AppContext of an explained packet, from explain's L7 options."""
    from ips.core.app_fields import AppFields
    from ips.core.packet import PROTO_TCP, PROTO_UDP
    from ips.policy.domains import normalize
    from ips.policy.explain import NOTHING_KNOWN, AppContext

    given = {k: v for k, v in options.items() if v not in (None, ())}
    if proto not in (PROTO_TCP, PROTO_UDP):
        return AppContext(None, "")  # no application layer to parse (ICMP, GRE, ...)
    if not given:
        return NOTHING_KNOWN
    fields = AppFields()
    fields.client_done = True
    for option, attr in (("sni", "tls_sni"), ("quic_sni", "quic_sni"), ("http_host", "http_host")):
        if option in given:
            setattr(fields, attr, normalize(given[option]))
    fields.tls_ja3 = given.get("ja3")
    fields.tls_ja4 = given.get("ja4")
    fields.dns_queries = tuple(normalize(q) for q in given.get("dns_queries", ()))
    fields.http_uri = given.get("http_uri")
    fields.http_method = given.get("http_method")
    fields.http_user_agent = given.get("http_user_agent")
    app_proto = given.get("app_proto")
    if app_proto is None:
        implied = {_L7_OPTION_PROTOS[k] for k in given if k in _L7_OPTION_PROTOS}
        app_proto = implied.pop() if len(implied) == 1 else None
    return AppContext(fields, app_proto)


# ---- replay -----------------------------------------------------------------------------------


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="POLICY CAPTURE... | --to IFACE CAPTURE")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.option(
    "--eve",
    "eve_path",
    type=click.Path(dir_okay=False),
    help="write EVE JSON lines (alerts, drops, flows) to this file",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="progress bar (default: on for large files on a terminal)",
)
@click.option(
    "--store",
    "store_target",
    metavar="DIR|URL",
    help="also fill this store (a directory or a postgresql:// URL) for `report` and `history`",
)
@click.option(
    "--to",
    "to_iface",
    metavar="IFACE",
    help="send CAPTURE onto this lab interface instead (a veth of an ipsctl lab namespace)",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="with --to: X times the recorded pace",
)
@click.option(
    "--pps",
    type=click.FloatRange(min=0, min_open=True),
    help="with --to: this many packets per second, whatever the recorded times",
)
@click.option(
    "--limit", type=click.IntRange(min=1), help="with --to: send at most this many packets"
)
@click.option(
    "--dst-mac",
    default="02:00:00:00:00:01",
    show_default=True,
    help="with --to: destination MAC of raw-IP packets (they get an Ethernet header)",
)
def replay(
    paths: tuple[str, ...],
    as_json: bool,
    eve_path: str | None,
    progress: bool | None,
    store_target: str | None,
    to_iface: str | None,
    speed: float,
    pps: float | None,
    limit: int | None,
    dst_mac: str,
) -> None:
    """Run POLICY over CAPTURES (pcap or pcapng, by magic number): verdict totals, per-rule
    hits, malformed packets, alerts. With --to IFACE: send one CAPTURE onto a lab interface
    at its recorded pace (--speed, --pps) instead (docs/evaluation.md)."""
    if to_iface is not None:
        _replay_to(paths, to_iface, speed, pps, limit, dst_mac, as_json, (eve_path, store_target))
        return
    if speed != 1.0 or pps is not None or limit is not None:
        raise click.UsageError("--speed, --pps and --limit go with --to")
    if len(paths) < 2:
        raise click.UsageError("give POLICY and at least one CAPTURE (or --to IFACE CAPTURE)")
    policy_path, captures = paths[0], paths[1:]
    from ips.heap import tune_collector
    from ips.replay import ReplayResult, replay_captures

    policy = load_or_exit(policy_path)
    tune_collector()  # as the worker: 200,000 flows replayed in 2.4-2.9 s instead of 4.4-4.8
    eve_stream = None
    if eve_path:
        from ips.sinks.eve import open_eve_file

        try:  # as the daemon's: never through a link, never in a directory others can change
            eve_stream = open_eve_file(eve_path)
        except OSError as exc:
            click.echo(f"ipsctl replay: --eve: {exc}", err=True)
            sys.exit(EXIT_USAGE)
    store = None
    enrich = None
    if store_target:
        from ips.geo.enrich import open_enricher
        from ips.store.backend import StoreError, open_store
        from ips.store.sink import StoreSink

        # One Enricher for the EVE lines and the store's rows, so both name the same
        # countries and AS numbers.
        enrich = open_enricher(policy.geo_dir or None, policy.geo_sites)
        try:
            store = StoreSink(open_store(store_target), synchronous=True, enrich=enrich)
        except StoreError as exc:
            click.echo(f"ipsctl replay: --store: {exc}", err=True)
            sys.exit(EXIT_USAGE)
    try:
        result: ReplayResult = replay_captures(
            policy,
            captures,
            eve_stream=eve_stream,
            progress=progress,
            enrich=enrich,
            sinks=[store] if store is not None else [],
        )
    except (OSError, ValueError) as exc:
        click.echo(f"ipsctl replay: {exc}", err=True)
        sys.exit(EXIT_POLICY)
    finally:
        if eve_stream is not None:
            eve_stream.close()
        if enrich is not None:
            enrich.close()
        if store is not None:
            store.close()
            if store.write_errors:
                click.echo(
                    f"ipsctl replay: --store: {store.write_errors} batches not written "
                    f"({store.last_error})",
                    err=True,
                )
    if result.geo_problem:  # the EVE lines have no countries or AS numbers
        click.echo(f"ipsctl replay: {result.geo_problem}", err=True)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo(result.table())


def _replay_to(
    paths: tuple[str, ...],
    iface: str,
    speed: float,
    pps: float | None,
    limit: int | None,
    dst_mac: str,
    as_json: bool,
    engine_options: tuple[str | None, str | None],
) -> None:
    """`replay --to IFACE CAPTURE`: the capture onto a lab wire (ips/lab/wire.py)."""
    from ips.io.pcap import CaptureError
    from ips.lab.wire import WireError, replay_to

    if any(engine_options):
        click.echo(
            "ipsctl replay: --to sends a capture, no engine runs: no --eve, --store", err=True
        )
        sys.exit(EXIT_USAGE)
    if len(paths) != 1:
        click.echo("ipsctl replay: --to IFACE takes one CAPTURE (and no POLICY)", err=True)
        sys.exit(EXIT_USAGE)
    try:
        result = replay_to(paths[0], iface, speed=speed, pps=pps, limit=limit, dst_mac=dst_mac)
    except WireError as exc:
        click.echo(f"ipsctl replay: --to {iface}: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except (OSError, CaptureError) as exc:
        click.echo(f"ipsctl replay: {exc}", err=True)
        sys.exit(EXIT_POLICY)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo(result.text())
