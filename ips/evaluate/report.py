"""The evaluation as a table for people (`ipsctl eval` without --json), with the base rate
stated and what it means for the alerts, in words."""

from __future__ import annotations

from typing import Any

from ips.evaluate.score import WARNING_BASE_RATE, Evaluation


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def base_rate_warning(ev: Evaluation) -> list[str]:
    """What the base rate does to the share of true alerts, in sentences."""
    b, t = ev.base_rate, ev.totals
    at = pct(WARNING_BASE_RATE)
    lines = [
        f"base rate: {b['attack_flows']} of {b['all_flows']} flows are attacks "
        f"({pct(b['flows'])}); {b['attack_packets']} of {b['all_packets']} packets "
        f"({pct(b['packets'])})."
    ]
    if ev.benign["flows"] == 0:
        lines.append("No benign flows in the labels: the false-positive rate is not known.")
        return lines
    if not t["recall"]:
        lines.append("Nothing was detected: precision at any base rate is not defined.")
        return lines
    if t["fp"]:
        lines.append(
            f"Base-rate warning: at {at} attacks (1 flow in 100), a false-positive rate of "
            f"{pct(t['fpr'])} with this recall ({pct(t['recall'])}) means only "
            f"{pct(b['precision_at_warning'])} of the flagged flows would be attacks "
            f"(here, at {pct(b['flows'])}, {pct(b['precision_here'])}): "
            "a small false-positive rate swamps the alerts when attacks are rare."
        )
    else:
        lines.append(
            f"Base-rate warning: no benign flow was flagged, but {ev.benign['flows']} benign "
            f"flows only show the false-positive rate is below {pct(b['fpr_upper_95'])} "
            f"(95 %, rule of three); at {at} attacks that rate would leave "
            f"{pct(b.get('precision_at_warning_bound'))} of the flagged flows true. "
            "Measure over more benign traffic before trusting it at a low base rate."
        )
    return lines


def table(ev: Evaluation, heading: list[str] | None = None) -> str:
    lines = list(heading or [])
    lines.append(
        f"{'class':<16} {'flows':>7} {'packets':>8} {'detected':>8} {'recall':>7} "
        f"{'alerts':>6} {'precision':>9} {'FPR':>6} {'bursts':>6} {'found':>5}  "
        "time to detect first/median/max"
    )
    for row in ev.classes:
        ttd = row["time_to_detect"]
        lines.append(
            f"{_cut(row['class'], 16):<16} {row['flows']:>7} {row['packets']:>8} "
            f"{row['detected']:>8} {pct(row['recall']):>7} {row['alerts']:>6} "
            f"{pct(row['precision']):>9} {pct(row['fpr']):>6} {row['episodes']:>6} "
            f"{row['episodes_detected']:>5}  "
            f"{secs(ttd['first'])} / {secs(ttd['median'])} / {secs(ttd['max'])}"
        )
    bn = ev.benign
    lines.append(
        f"{'benign':<16} {bn['flows']:>7} {bn['packets']:>8} {'':>8} {'':>7} {'':>6} "
        f"{'':>9} {pct(bn['fpr']):>6}  ({bn['flagged']} flagged)"
    )
    lines.append("")
    width = max([len(str(r["key"])) for r in ev.keys] + [16])
    width = min(width, 40)
    lines.append(
        f"{'detector / rule':<{width}} {'alerts':>6} {'true':>6} {'precision':>9} "
        f"{'blocks':>6} {'drops':>6} {'recall':>7} {'FPR':>6} {'TTD median':>10}  detected flows"
    )
    for r in ev.keys:
        detected = ", ".join(f"{c} {n}" for c, n in r["detected"].items())
        if r["benign_flagged"]:
            detected += (", " if detected else "") + f"benign {r['benign_flagged']}"
        lines.append(
            f"{_cut(str(r['key']), width):<{width}} {r['alerts']:>6} {r['true_alerts']:>6} "
            f"{pct(r['precision']):>9} {r['blocks']:>6} {r['drops']:>6} {pct(r['recall_all']):>7} "
            f"{pct(r['fpr']):>6} {secs(r['time_to_detect_median']):>10}  {detected or '-'}"
        )
    if not ev.keys:
        lines.append("(no alerts)")
    lines.append("")
    t = ev.totals
    lines.append(
        f"alerts  {t['alerts']}: {t['true_alerts']} true, {t['false_alerts']} false "
        f"({t['unmatched_alerts']} naming no labelled flow); precision "
        f"{pct(t['alert_precision'])}"
    )
    lines.append(
        f"flows   TP {t['tp']}  FP {t['fp']}  FN {t['fn']}  TN {t['tn']}: precision "
        f"{pct(t['precision'])}, recall {pct(t['recall'])}, FPR {pct(t['fpr'])}; "
        f"bursts {t['episodes_detected']} of {t['episodes']} detected"
    )
    lines.append("")
    lines.extend(base_rate_warning(ev))
    return "\n".join(lines)


def summary(ev: Evaluation) -> dict[str, Any]:
    """The numbers a comparison needs (the lab test compares a tap's with an offline run's)."""
    t = ev.totals
    return {
        "tp": t["tp"],
        "fp": t["fp"],
        "fn": t["fn"],
        "tn": t["tn"],
        "alerts": t["alerts"],
        "true_alerts": t["true_alerts"],
    }
