"""The report of the recovery bench: recorded runs -> statistics per fault, the issue's targets,
results/bench.json, results/bench.png and the README's measured table.

Pure reporting: the fault-injecting driver (bench/recovery.py) records one JSON object a line,

    {"kind": "sample", "fault": "worker_hang", "run": 1, "recovery_s": 9.1,
     "phases": {"detect_s": 3.2, "decide_s": 1.1, "act_s": 3.9, "verify_s": 0.9}}
    {"kind": "sample", "fault": "worker_hang", "run": 2, "recovery_s": null, "error": "..."}
    {"kind": "floor", "fault": "worker_hang", "run": 1, "floor_s": 7.3}
    {"kind": "meta", "runs": 5, "ts": "...", "host_load": [1.2, 1.0, 0.9],
     "beacon_cpu_s_per_min": 0.4}

where the floor is the bare restart of the same daemon measured in the same run: what no healing
layer can beat. This module only reads such a file.

    python3 -m bench.report results/bench-samples.jsonl   # -> results/bench.json, bench.png, table
    python3 -m bench.report --readme                      # results/bench.json -> README.md

The PNG needs matplotlib (`make bench-deps`, then `.venv-bench/bin/python -m bench.report ...`);
without it the JSON and the table are still written.
"""
import argparse
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"

# Every fault the bench injects, in display order (table rows, plot bars, JSON keys).
FAULTS = {
    "worker_kill9": "worker kill -9",
    "worker_hang": "worker hang (SIGSTOP)",
    "scheduler_kill9": "scheduler kill -9",
    "scheduler_hang": "scheduler hang (SIGSTOP)",
    "api_server_stop": "api-server stop",
    "api_server_hang": "api-server hang (SIGSTOP)",
    "master_node_loss": "master node loss",
    "metastore_restart": "metastore restart",
    "broker_restart": "broker restart",
    "hang_during_storm": "worker hang during a 500-event storm",
}

# The targets: every bound of a fault must hold. `metric` is a key of the fault's summary,
# a dotted path into a nested dict ("recovery_s.p95"); a ratio is against the median floor.
TARGETS = {
    "worker_hang": ({"metric": "ratio_median", "max": 1.3}, {"metric": "ratio_p95", "max": 1.5}),
    "api_server_hang": ({"metric": "recovery_s.p95", "max": 3.0, "note": "out of haproxy"},),
    "scheduler_hang": ({"metric": "ratio_median", "max": 2.0},),
    "master_node_loss": ({"metric": "recovery_s.p95", "max": 15.0},),
}

# What the official Airflow Helm chart gives for the same faults (chart/values.yaml of
# apache/airflow): `scheduler.livenessProbe.periodSeconds: 60`, `failureThreshold: 5`, the same for
# `workers.livenessProbe` (and the triggerer's, the dag processor's): a hung daemon is restarted
# after 5 failed probes, about 5 minutes. A crashed container is restarted by the kubelet at
# once, then with a back-off of 10 s doubling (capped at 5 minutes) if it keeps crashing.
HELM_REFERENCE = {
    "label": "Helm chart (reference): hung daemon restarted by its liveness probe",
    "liveness_period_s": 60,
    "liveness_failure_threshold": 5,
    "crash_restart_s": 0,
    "crash_backoff_s": 10,
}

# Phase columns first in the order a repair goes through them; other phase names follow sorted.
PHASE_ORDER = ("detect_s", "decide_s", "act_s", "verify_s")
DIGITS = 3   # seconds to the millisecond: finer is timer noise


def helm_hang_restart_s(reference=HELM_REFERENCE):
    """The chart's worst case for a hung daemon: every probe of the failure threshold fails."""
    return reference["liveness_period_s"] * reference["liveness_failure_threshold"]


# ------------------------------------------------------------------ statistics
def p95(values):
    """Nearest rank on the sorted values (index ceil(0.95 n) - 1): defined for any n >= 1, and
    always a value that was measured (no interpolation between two runs of five)."""
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def stats(values):
    """min, median, p95, max of a list of seconds; None when nothing was measured."""
    if not values:
        return None
    return {"min": round(min(values), DIGITS), "median": round(statistics.median(values), DIGITS),
            "p95": round(p95(values), DIGITS), "max": round(max(values), DIGITS)}


def _ratio(numerator, floor_stats):
    if numerator is None or not floor_stats or not floor_stats["median"]:
        return None
    return round(numerator / floor_stats["median"], DIGITS)


def _metric(fault_summary, path):
    value = fault_summary
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def bound_text(bound):
    """'ratio median <= 1.3', 'p95 <= 3 s (out of haproxy)': the table's words for a bound."""
    metric = bound["metric"]
    seconds = metric.startswith("recovery_s.")
    words = metric.split(".", 1)[1] if seconds else metric.replace("_", " ")
    text = f"{words} <= {bound['max']:g}{' s' if seconds else ''}"
    return f"{text} ({bound['note']})" if bound.get("note") else text


def evaluate(fault_summary, bounds):
    """True when every bound holds; a metric that could not be computed (no floor, no successful
    run) does not hold: a target is met by a measurement, never by its absence."""
    for bound in bounds:
        value = _metric(fault_summary, bound["metric"])
        if value is None or value > bound["max"]:
            return False
    return True


def _ordered_faults(names):
    known = [name for name in FAULTS if name in names]
    return known + sorted(set(names) - set(FAULTS))


def phase_seconds(phases):
    """The numeric phases of one run. A runner job that had started before the fault (a
    periodic reconcile pass that then saw it) gives a negative detect: it was detected at once
    (detect 0) and its decide is what remains of it after the fault."""
    out = {k: float(v) for k, v in (phases or {}).items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if out.get("detect_s", 0) < 0:
        out["decide_s"] = round(max(0.0, out.get("decide_s", 0) + out["detect_s"]), DIGITS)
        out["detect_s"] = 0.0
    return out


def _ordered_phases(names):
    return [p for p in PHASE_ORDER if p in names] + sorted(set(names) - set(PHASE_ORDER))


def summarize(samples, floors, targets=TARGETS):
    """Statistics per fault (FAULTS order, unknown faults after them).

    A run whose recovery_s is None (the driver gave up, with an `error`) counts as `failed` and
    stays out of every statistic; a fault without a successful run has stats None."""
    by_fault = {}
    for sample in samples:
        by_fault.setdefault(sample["fault"], {"ok": [], "failed": [], "floors": []})
        bucket = by_fault[sample["fault"]]
        (bucket["failed"] if sample.get("recovery_s") is None else bucket["ok"]).append(sample)
    for floor in floors:
        by_fault.setdefault(floor["fault"], {"ok": [], "failed": [], "floors": []})
        if floor.get("floor_s") is not None:
            by_fault[floor["fault"]]["floors"].append(floor["floor_s"])

    summary = {}
    for fault in _ordered_faults(by_fault):
        bucket = by_fault[fault]
        recovery = stats([s["recovery_s"] for s in bucket["ok"]])
        floor = stats(bucket["floors"])
        phase_values = {}
        for sample in bucket["ok"]:
            for phase, seconds in phase_seconds(sample.get("phases")).items():
                phase_values.setdefault(phase, []).append(seconds)
        entry = {
            "label": FAULTS.get(fault, fault),
            "runs": len(bucket["ok"]) + len(bucket["failed"]),
            "failed": len(bucket["failed"]),
            "errors": [s.get("error") or "no recovery_s" for s in bucket["failed"]],
            "recovery_s": recovery,
            "floor_s": floor,
            "ratio_median": _ratio(recovery and recovery["median"], floor),
            "ratio_p95": _ratio(recovery and recovery["p95"], floor),
            "phases_median_s": {phase: round(statistics.median(phase_values[phase]), DIGITS)
                                for phase in _ordered_phases(phase_values)},
            "target": None,
            "met": None,
        }
        if fault in targets:
            entry["target"] = [dict(bound) for bound in targets[fault]]
            entry["met"] = evaluate(entry, targets[fault])
        summary[fault] = entry
    return summary


# ------------------------------------------------------------------ files
def load_jsonl(path):
    """(samples, floors, meta) of a driver's record; meta lines merge in order."""
    samples, floors, meta = [], [], {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        kind = record.pop("kind", None)
        if kind == "sample":
            samples.append(record)
        elif kind == "floor":
            floors.append(record)
        elif kind == "meta":
            meta.update(record)
        else:
            raise ValueError(f"{path}:{number}: kind must be sample, floor or meta, not {kind!r}")
    return samples, floors, meta


def bench_meta(recorded, samples):
    """The meta block of bench.json: what the driver recorded, the usual keys always present."""
    meta = {"runs": max((s.get("run", 0) for s in samples), default=0),
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "host_load": None,
            "beacon_cpu_s_per_min": None}
    meta.update(recorded)
    return meta


def carry_over(summary, earlier):
    """``summary`` plus the faults only ``earlier`` (an older bench.json dict) has, each marked
    ``"from_bench": <that bench's ts>`` so the table says it was not measured now. FAULTS order."""
    ts = (earlier.get("meta") or {}).get("ts", "?")
    merged = dict(summary)
    for fault, entry in (earlier.get("faults") or {}).items():
        if fault not in merged:
            merged[fault] = dict(entry, from_bench=entry.get("from_bench", ts))
    return {fault: merged[fault] for fault in _ordered_faults(merged)}


def write_json(path, summary, meta):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "faults": summary}, indent=2) + "\n")


# ------------------------------------------------------------------ the table
TABLE_HEADER = ("| fault | runs | median s | p95 s | floor (median) s | ratio median / p95 "
                "| target | met |")


def _seconds(value):
    return "-" if value is None else f"{value:.1f}"


def _times(value):
    return "-" if value is None else f"{value:.2f}"


def _row(fault):
    recovery, floor = fault["recovery_s"] or {}, fault["floor_s"] or {}
    runs = str(fault["runs"]) + (f" ({fault['failed']} failed)" if fault["failed"] else "")
    if fault.get("from_bench"):
        runs += f" (earlier bench, {fault['from_bench']})"
    target = ", ".join(bound_text(b) for b in fault["target"]) if fault["target"] else "-"
    met = {True: "yes", False: "no", None: "-"}[fault["met"]]
    ratios = f"{_times(fault['ratio_median'])} / {_times(fault['ratio_p95'])}"
    return (f"| {fault['label']} | {runs} | {_seconds(recovery.get('median'))} | "
            f"{_seconds(recovery.get('p95'))} | {_seconds(floor.get('median'))} | {ratios} | "
            f"{target} | {met} |")


def helm_row(reference=HELM_REFERENCE):
    hang = helm_hang_restart_s(reference)
    label = (f"{reference['label']} ({reference['liveness_failure_threshold']} x "
             f"{reference['liveness_period_s']} s); a crashed one at once, back-off "
             f"{reference['crash_backoff_s']} s doubling")
    return f"| {label} | - | - | {hang:g} | - | - | - | - |"


def markdown_table(bench):
    """README's measured table of a bench.json dict, one row per fault, then the Helm row."""
    lines = [TABLE_HEADER, "|---|---|---|---|---|---|---|---|"]
    lines += [_row(fault) for fault in bench["faults"].values()]
    lines.append(helm_row())
    return "\n".join(lines) + "\n"


def runs_text(bench):
    """How many runs, from the faults themselves ("5 runs", "2-5 runs" when they differ): a
    bench.json concatenated from several benches has no single meta count."""
    counts = sorted({f["runs"] for f in bench.get("faults", {}).values()})
    if not counts:
        return f"{bench.get('meta', {}).get('runs', '?')} runs"
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{span} run{'' if span == '1' else 's'}"


def readme_section(bench):
    """What goes between the README's markers: one line of context, then the table."""
    meta = bench.get("meta", {})
    context = [f"{runs_text(bench)} per fault, {meta.get('ts', '?')}"]
    if meta.get("host_load") is not None:
        load = meta["host_load"]
        context.append("host load " + (" ".join(f"{x:.2f}" for x in load)
                                       if isinstance(load, (list, tuple)) else str(load)))
    by_node = {n: v for n, v in (meta.get("beacon_cpu_s_per_min_by_node") or {}).items() if v is not None}
    if by_node:
        context.append("beacon (salt-minion) CPU s per minute: "
                       + ", ".join(f"{n} {v:g}" for n, v in by_node.items()))
    elif meta.get("beacon_cpu_s_per_min") is not None:
        context.append(f"beacon {meta['beacon_cpu_s_per_min']:g} CPU s per minute")
    return "; ".join(context) + ".\n\n" + markdown_table(bench)


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def rewrite_readme(readme_path, section):
    """Replace what lies between the bench markers; everything else stays byte for byte."""
    path = Path(readme_path)
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"{path}: needs exactly one {BEGIN} ... {END} block")
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{section.rstrip()}\n{END}", text))


# ------------------------------------------------------------------ the plot
def _plot_label(fault):
    """The fault's row label in the picture: what the table's runs column says about it too."""
    label = fault["label"]
    if not fault["recovery_s"]:
        label += " (no successful run)"
    if fault.get("from_bench"):
        label += f"\n(earlier bench, {fault['from_bench']})"
    return label


def plot(bench, path):
    """One horizontal bar per fault: the median recovery (green: target met, red: missed, grey:
    no target) with a whisker to its p95, and a thin bar of the floor under it; the Helm chart's
    hung-daemon restart as a dashed line. A fault carried over from an earlier bench is hatched
    and its label says from when. Log x axis: 0.2 s and 300 s both stay readable."""
    import matplotlib
    matplotlib.use("Agg")   # no display on the lab host
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    faults = list(bench["faults"].values())
    colours = {True: "#2e7d32", False: "#c62828", None: "#757575"}
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(faults) + 3))
    for row, fault in enumerate(faults):
        recovery, floor = fault["recovery_s"], fault["floor_s"]
        if recovery:
            ax.barh(row, recovery["median"], height=0.45, color=colours[fault["met"]],
                    hatch="//" if fault.get("from_bench") else None, edgecolor="white",
                    xerr=[[0], [recovery["p95"] - recovery["median"]]], capsize=4,
                    error_kw={"elinewidth": 1.2})
            ax.text(recovery["p95"] * 1.08, row, f"{recovery['median']:.1f} s (p95 "
                    f"{recovery['p95']:.1f})", va="center", fontsize="small")
        if floor:
            ax.barh(row + 0.32, floor["median"], height=0.15, color="#1565c0")
    ax.axvline(helm_hang_restart_s(), color="black", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(faults)))
    ax.set_yticklabels([_plot_label(f) for f in faults])
    ax.invert_yaxis()   # FAULTS order from the top
    ax.set_xscale("log")
    # from 0.1 s (an api-server out of haproxy) to past the Helm line, whatever was measured
    longest = max([f["recovery_s"]["p95"] for f in faults if f["recovery_s"]] + [1.0])
    ax.set_xlim(0.1, max(helm_hang_restart_s(), longest * 3) * 1.5)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))   # 0.1, 1, 10: no 10^-1
    ax.set_xlabel("seconds until healthy again (log scale)")
    meta = bench.get("meta", {})
    ax.set_title(f"Recovery per fault: median, whisker to p95 ({runs_text(bench)}, "
                 f"{meta.get('ts', '?')})")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(handles=[
        Patch(color=colours[True], label="recovery median, target met"),
        Patch(color=colours[False], label="recovery median, target missed"),
        Patch(color=colours[None], label="recovery median, no target"),
        Patch(color="#1565c0", label="floor: bare restart of the daemon (median)"),
        Patch(facecolor=colours[None], hatch="//", edgecolor="white",
              label="carried over from an earlier bench"),
        Line2D([], [], color="black", linestyle="--",
               label=f"Helm chart: hung daemon restarted after {helm_hang_restart_s()} s"),
    ], loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize="small")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ CLI
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m bench.report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("samples", nargs="?", help="the driver's record (JSON lines)")
    parser.add_argument("--readme", action="store_true",
                        help="rewrite README.md's bench block from bench.json")
    parser.add_argument("--out-dir", default=str(RESULTS), help="where bench.json/bench.png go")
    parser.add_argument("--keep-from", metavar="BENCH_JSON",
                        help="an earlier bench.json: faults not in the samples are carried over, "
                             "marked with that bench's time")
    parser.add_argument("--readme-path", default=str(REPO / "README.md"))
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    if not args.samples and not args.readme:
        parser.error("give the samples file, or --readme")

    if args.samples:
        print(f"== reading {args.samples}", flush=True)
        samples, floors, recorded = load_jsonl(args.samples)
        print(f"   {len(samples)} runs, {len(floors)} floors", flush=True)
        bench = {"meta": bench_meta(recorded, samples), "faults": summarize(samples, floors)}
        if args.keep_from:
            earlier = json.loads(Path(args.keep_from).read_text())
            bench["faults"] = carry_over(bench["faults"], earlier)
            print(f"   carried over from {args.keep_from}: "
                  f"{', '.join(f for f, e in bench['faults'].items() if e.get('from_bench')) or 'none'}",
                  flush=True)
        write_json(out / "bench.json", bench["faults"], bench["meta"])
        print(f"== wrote {out / 'bench.json'}", flush=True)
        try:
            print(f"== drawing {out / 'bench.png'}", flush=True)
            plot(bench, out / "bench.png")
        except ImportError:
            # the JSON and the table are the result; the picture is a convenience
            print("   skipped: no matplotlib here (make bench-deps, then run this with "
                  ".venv-bench/bin/python)", flush=True)
    elif (out / "bench.json").exists():
        bench = json.loads((out / "bench.json").read_text())
    else:
        parser.error(f"no {out / 'bench.json'} yet: give the samples file first")

    section = readme_section(bench)
    if args.readme:
        rewrite_readme(args.readme_path, section)
        print(f"== rewrote the bench block of {args.readme_path}", flush=True)
    sys.stdout.write("\n" + section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
