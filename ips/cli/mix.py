"""`ipsctl mix`: benign and attack captures mixed into one labelled capture (docs/evaluation.md).

The command only reads options (or a YAML spec file), shows progress and prints the summary;
the mixing is ips/mix/mixer.py. Exit 2 for a request that cannot be carried out or a bad input.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
import yaml

from ips.cli.common import EXIT_USAGE
from ips.io.pcap import CaptureError
from ips.mix.mixer import MixReport, MixRequest, Progress, run_mix
from ips.mix.spec import BENIGN, ROLES, US, SpecError, check_class_name, parse_duration


def _fail(message: str) -> None:
    click.echo(f"ipsctl mix: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _parse_input(text: str) -> tuple[str, str]:
    cls, sep, path = text.partition("=")
    if not sep or not path:
        raise SpecError(f"--input {text!r}: write CLASS=FILE, e.g. benign=office.pcap")
    return check_class_name(cls.strip()), path


def _parse_start(text: str) -> int:
    try:
        return round(float(text) * US)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SpecError(f"--start {text!r}: seconds since the epoch or an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise SpecError(f"--start {text!r}: give the time zone (e.g. 2026-01-05T09:00:00Z)")
    return round(moment.timestamp() * US)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _from_spec(path: str) -> dict[str, Any]:
    """The YAML spec file as option values (file names relative to the spec's folder)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a mapping is expected (inputs:, ratio: or timeline:, ...)")
    known = {
        "inputs", "output", "seed", "ratio", "timeline", "packets", "duration", "rate", "start",
        "networks", "timing", "idle_timeout", "keep_addresses",
    }  # fmt: skip
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    base = os.path.dirname(os.path.abspath(path))

    def here(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(base, p)

    out: dict[str, Any] = {}
    inputs = data.get("inputs")
    pairs: list[tuple[str, str]] = []
    if isinstance(inputs, dict):  # {benign: [a.pcap, b.pcap], ddos: c.pcap}
        for cls, files in inputs.items():
            pairs += [(check_class_name(str(cls)), here(f)) for f in _as_list(files)]
    elif isinstance(inputs, list):  # [{class: benign, file: a.pcap}, ...]
        for item in inputs:
            if not isinstance(item, dict) or "class" not in item or "file" not in item:
                raise SpecError(f"{path}: each input is a mapping with class: and file:")
            pairs.append((check_class_name(str(item["class"])), here(str(item["file"]))))
    elif inputs is not None:
        raise SpecError(f"{path}: inputs: is a mapping (class: files) or a list")
    out["inputs"] = pairs
    ratio = data.get("ratio")
    if isinstance(ratio, dict):
        ratio = ",".join(f"{c}={w}" for c, w in ratio.items())
    out["ratio"] = None if ratio is None else str(ratio)
    timeline = data.get("timeline")
    if isinstance(timeline, list):
        timeline = "; ".join(str(t) for t in timeline)
    out["timeline"] = None if timeline is None else str(timeline)
    networks = data.get("networks") or {}
    if not isinstance(networks, dict):
        raise SpecError(f"{path}: networks: maps a role ({', '.join(ROLES)}) to networks")
    out["networks"] = {str(role): _as_list(v) for role, v in networks.items()}
    timing = data.get("timing") or {}
    if not isinstance(timing, dict):
        raise SpecError(f"{path}: timing: maps a class to spread or keep")
    out["timing"] = {str(c): str(v) for c, v in timing.items()}
    kinds: dict[str, tuple[type, ...]] = {
        "output": (str,),
        "seed": (int,),
        "packets": (int,),
        "rate": (int, float),
        "duration": (str, int, float),
        "start": (str, int, float),
        "idle_timeout": (str, int, float),
        "keep_addresses": (bool,),
    }
    for key, kind in kinds.items():
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in kind):
            raise SpecError(f"{path}: {key}: {value!r} is not a {kind[0].__name__}")
        out[key] = value
    return out


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, TaskID, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    bar = RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def update(stage: str, done: int, total: int) -> None:
        task = tasks.get(stage)
        if task is None:
            task = tasks[stage] = bar.add_task(stage, total=max(total, 1))
        bar.update(task, completed=done, total=max(total, 1))

    with bar:
        yield update


@click.command()
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    metavar="CLASS=FILE",
    help="a capture and its class: benign, or an attack class (repeat; a class may have several)",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="the mixed pcapng to write")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False), help="a YAML mix spec")
@click.option("--ratio", help="proportional mix by packets: 80/20 or benign=95,ddos=3,scan=2")
@click.option(
    "--timeline", help="windows: '0-10m benign; 10-15m 30% ddos; 15-20m 60% ddos, 10% scan'"
)
@click.option("--packets", type=int, help="proportional: packets in all (default: all there are)")
@click.option("--duration", help="proportional: the output's length (default: the benign input's)")
@click.option("--rate", type=float, help="timeline: packets a second (default: the benign input's)")
@click.option("--start", help="the output's first instant: epoch seconds or ISO 8601")
@click.option("--seed", type=int, help="the same seed, inputs and options give the same bytes [0]")
@click.option("--clients", multiple=True, metavar="NET", help="benign initiators' network(s)")
@click.option("--servers", multiple=True, metavar="NET", help="benign responders' network(s)")
@click.option("--attackers", multiple=True, metavar="NET", help="attack initiators' network(s)")
@click.option("--victims", multiple=True, metavar="NET", help="attack targets' network(s)")
@click.option(
    "--timing",
    multiple=True,
    metavar="CLASS=spread|keep",
    help="spread flows at random, or keep their spacing (default: benign spread, attacks keep)",
)
@click.option(
    "--keep-addresses",
    is_flag=True,
    default=None,
    help="keep the inputs' own addresses (copies of a flow still get new ones)",
)
@click.option("--idle-timeout", default=None, help="a flow ends after this idle time [300s]")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option(
    "--progress/--no-progress", default=None, help="progress bar (default: on a terminal)"
)
def mix(
    inputs: tuple[str, ...],
    output: str | None,
    spec_path: str | None,
    ratio: str | None,
    timeline: str | None,
    packets: int | None,
    duration: str | None,
    rate: float | None,
    start: str | None,
    seed: int | None,
    clients: tuple[str, ...],
    servers: tuple[str, ...],
    attackers: tuple[str, ...],
    victims: tuple[str, ...],
    timing: tuple[str, ...],
    keep_addresses: bool | None,
    idle_timeout: str | None,
    as_json: bool,
    progress: bool | None,
) -> None:
    """Mix benign and attack captures into one labelled pcapng.

    \b
    ipsctl mix -i benign=office.pcap -i ddos=syn.pcap --ratio 95/5 --seed 1 -o mixed.pcapng
    ipsctl mix -i benign=office.pcap -i ddos=syn.pcap -i scan=nmap.pcap \\
        --timeline '0-10m benign; 10-15m 30% ddos; 15-20m 20% ddos, 5% scan' -o mixed.pcapng
    ipsctl mix --spec mix.yaml

    Flows are kept whole and their addresses remapped into the role networks; the output is
    OUT.pcapng (each packet's comment `ipsctl-label: CLASS flow N`), OUT.labels.jsonl and
    OUT.labels.packets (docs/evaluation.md).
    """
    try:
        spec = _from_spec(spec_path) if spec_path else {}
        pairs = [_parse_input(t) for t in inputs] or spec.get("inputs", [])
        networks = dict(spec.get("networks", {}))
        for role, given in zip(ROLES, (clients, servers, attackers, victims), strict=True):
            if given:
                networks[role] = list(given)
        timings = dict(spec.get("timing", {}))
        for item in timing:
            cls, sep, how = item.partition("=")
            if not sep:
                raise SpecError(f"--timing {item!r}: write CLASS=spread or CLASS=keep")
            timings[cls] = how
        out = output or spec.get("output")
        if not out:
            raise SpecError("no output: give -o OUT.pcapng")
        if spec_path and not output and not os.path.isabs(out):
            out = os.path.join(os.path.dirname(os.path.abspath(spec_path)), out)
        duration_text = duration if duration is not None else spec.get("duration")
        start_text = start if start is not None else spec.get("start")
        idle_text = idle_timeout if idle_timeout is not None else spec.get("idle_timeout", "300s")
        request = MixRequest(
            inputs=pairs,
            output=out,
            seed=int(seed if seed is not None else spec.get("seed", 0)),
            ratio=ratio if ratio is not None else spec.get("ratio"),
            timeline=timeline if timeline is not None else spec.get("timeline"),
            packets=packets if packets is not None else spec.get("packets"),
            duration_us=None if duration_text is None else parse_duration(str(duration_text)),
            rate=rate if rate is not None else spec.get("rate"),
            start_us=None if start_text is None else _parse_start(str(start_text)),
            networks=networks,
            timing=timings,
            idle_timeout_us=parse_duration(str(idle_text)),
            keep_addresses=bool(
                keep_addresses if keep_addresses is not None else spec.get("keep_addresses")
            ),
        )
        if ratio is not None and timeline is None and spec.get("timeline") is not None:
            request.timeline = None  # an option given on the command line wins over the spec
        if timeline is not None and ratio is None and spec.get("ratio") is not None:
            request.ratio = None
        for _, path in request.inputs:
            if not os.path.isfile(path):
                raise SpecError(f"input {path!r}: no such file")
        show = progress if progress is not None else sys.stderr.isatty()
        with _progress_bar(show) as update:
            report = run_mix(request, update)
    except (SpecError, CaptureError) as exc:
        _fail(str(exc))
        return
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}")
        return
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(_summary(report))


def _summary(report: MixReport) -> str:
    lines = [
        f"{report.output}: {report.packets} packets, {report.flows} flows ({report.strategy})",
        f"labels: {report.labels[0]}, {report.labels[1]}",
    ]
    for cls, count in report.classes.items():
        share = count.packets / report.packets if report.packets else 0.0
        lines.append(
            f"  {cls:<12} {count.packets:>10} packets {share:7.2%}  {count.flows:>8} flows"
        )
    for i, w in enumerate(report.windows):
        parts = []
        for cls, r in w["classes"].items():  # type: ignore[attr-defined]
            parts.append(f"{cls} {r['packets']}/{r['target']}")
        lines.append(f"  window {i}: " + ", ".join(parts) + "  (packets placed/target)")
    notes = []
    for i, w in enumerate(report.windows):
        for cls, r in w["classes"].items():  # type: ignore[attr-defined]
            if r["packets"] < 0.9 * r["target"]:
                notes.append(
                    f"window {i}: {cls} got {r['packets']} of {r['target']} packets (its flows "
                    "are too few, too big or too long for the window; see docs/evaluation.md)"
                )
    attack_packets = sum(c.packets for cls, c in report.classes.items() if cls != BENIGN)
    if report.packets and attack_packets < 0.2 * report.packets and BENIGN in report.classes:
        share = attack_packets / report.packets
        # Precision of a detector that finds every attack packet and wrongly flags 1 % of the
        # benign ones: the base-rate fallacy in one number.
        precision = share / (share + (1 - share) * 0.01)
        notes.append(
            f"attacks are {share:.2%} of packets: a detector with a 1 % false-positive rate "
            f"would be right in only {precision:.0%} of its alerts (the base rate)"
        )
    if report.too_long:
        notes.append(f"{report.too_long} flows longer than their window left out")
    if report.reused:
        notes.append(f"{report.reused} flows used again with new addresses (inputs too short)")
    if report.address_collisions:
        notes.append(f"{report.address_collisions} hosts share an address (a network too small)")
    if report.left_out:
        notes.append(
            "packets left out: " + ", ".join(f"{k} {v}" for k, v in sorted(report.left_out.items()))
        )
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)
