"""Summary of a bench/gpu_suite.sh run: OUT/summary.json and OUT/summary.md, printed too.

    python bench/gpu_report.py OUT_DIR

Reads each part's JSON and OUT/parts.jsonl (exit status and seconds per part),
puts the numbers side by side and checks the targets of the GPU issue:
throughput against PyTorch (>= 1.0x on 4096x4, >= 2x on 784-256-10 with the
graph), >= 70% of the measured GEMM rate on 4096x4, peak memory <= 0.8x
PyTorch's, plan vs CuPy pool within 1% and vs NVML within 2%.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(out: Path, name: str):
    p = out / f"{name}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _parts(out: Path) -> list:
    try:
        return [json.loads(line) for line in (out / "parts.jsonl").read_text().splitlines() if line.strip()]
    except OSError:
        return []


def _best(rows, model, opt, framework, graph=None):
    hits = [r for r in rows if r["model"] == model and r["optimizer"] == opt and r["framework"] == framework
            and (graph is None or r["graph"] == graph)]
    return max(hits, key=lambda r: r["samples_per_s"]) if hits else None


def targets(profile, throughput) -> list:
    """(target, value, met) for everything the suite measured."""
    out = []
    if throughput:
        rows = throughput["rows"]
        for opt in ("sgd", "adam"):
            for model, need, graph in (("4096x4", 1.0, None), ("784-256-10", 2.0, True)):
                m, t = _best(rows, model, opt, "memtrain", graph), _best(rows, model, opt, "torch")
                if m and t:
                    ratio = m["samples_per_s"] / t["samples_per_s"]
                    out.append((f"{model} {opt}: memtrain/torch >= {need}x", f"{ratio:.2f}x", ratio >= need))
                if m and t and m.get("peak_bytes") and t.get("peak_bytes"):
                    ratio = m["peak_bytes"] / t["peak_bytes"]
                    out.append((f"{model} {opt}: peak memory <= 0.8x torch", f"{ratio:.2f}x", ratio <= 0.8))
            m = _best(rows, "4096x4", opt, "memtrain")
            if m:
                out.append((f"4096x4 {opt}: >= 70% of the GEMM rate", f"{m['gemm_share']:.0%}", m["gemm_share"] >= 0.7))
    if profile and profile["rows"]:
        worst = max(abs(r["error"]) for r in profile["rows"])
        out.append(("plan vs CuPy pool peak within 1%", f"worst {worst:.3%}", worst <= 0.01))
        nv = [abs(r["nvml_error"]) for r in profile["rows"] if r.get("nvml_error") is not None]
        if nv:
            out.append(("plan vs NVML process within 2%", f"worst {max(nv):.3%}", max(nv) <= 0.02))
    return out


def _throughput_table(t) -> list:
    lines = ["", f"GEMM rate (4096^3 float32, tf32={t['tf32']}): {t['gemm_flops'] / 1e12:.1f} TFLOP/s",
             "", "| model | B | optimizer | framework | graph | samples/s | TFLOP/s | of GEMM | peak bytes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        lines.append(f"| {r['model']} | {r['batch']} | {r['optimizer']} | {r['framework']} | {r['graph']} | "
                     f"{r['samples_per_s']:,.0f} | {r['flops'] / 1e12:.2f} | {r['gemm_share']:.0%} | "
                     f"{r['peak_bytes']} |")
    return lines


def markdown(parts, profile, autobatch, throughput, checks, tf32=None, trials=None) -> str:
    lines = ["# GPU suite", ""]
    if any(p and p.get("dry_run") for p in (profile, autobatch, throughput)):
        lines += ["**Dry run**: the control flow on the CPU at toy sizes; no number here is a GPU measurement.", ""]
    versions = next((p["versions"] for p in (throughput, profile, autobatch) if p), {})
    lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    lines += ["| part | exit | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {p['part']} | {p['rc']} | {p['seconds']} | {p.get('note', '')} |" for p in parts]
    if checks:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in checks]
    for t in (throughput, tf32):
        if t:
            lines += _throughput_table(t)
    if profile:
        lines += ["", "| model | B | optimizer | dtype | planned | pool peak | error | NVML | NVML error |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in profile["rows"]:
            nv = "n/a" if r.get("nvml_error") is None else f"{r['nvml_error']:+.3%}"
            lines.append(f"| {r['model']} | {r['batch']} | {r['optimizer']} | {r['dtype']} | {r['planned']:,} | "
                         f"{r['measured']:,} | {r['error']:+.3%} | {r.get('nvml_process')} | {nv} |")
    if autobatch:
        lines += ["", "| model | cap | analytic | confirmed | probes | brute force | its probes |", "|---|---|---|---|---|---|---|"]
        for r in autobatch["rows"]:
            lines.append(f"| {r['model']} | {r['limit']:,} | {r['analytic']} | {r['confirmed']} | {r['probes']} | "
                         f"{r['brute_force']} | {r['brute_force_probes']} |")
    if trials:
        lines += ["", f"Trial arrays (784-32-20-10 Adam, B 32; largest K that fits: {trials['k_max']:,}):", "",
                  "| K | update | s per 32 steps | trial-steps/s | memtrain launches per step |", "|---|---|---|---|---|"]
        lines += [f"| {r['k']} | {r['way']} | {r['seconds']:.3f} | {r['trial_steps_per_s']:,.0f} | "
                  f"{'n/a' if r['launches_per_step'] is None else round(r['launches_per_step'], 2)} |"
                  for r in trials["rows"]]
    skipped = [s for p in (profile, autobatch, throughput, tf32, trials) if p for s in p.get("skipped", [])]
    if skipped:
        lines += ["", "Skipped at a part's time limit: " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: gpu_report.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    parts = _parts(out)
    profile, autobatch, throughput = (_load(out, n) for n in ("profile", "autobatch", "throughput"))
    tf32, trials = _load(out, "throughput_tf32"), _load(out, "trials")
    dry = any(p and p.get("dry_run") for p in (profile, autobatch, throughput))
    checks = [] if dry else targets(profile, throughput)  # toy sizes on the CPU: no target applies
    summary = {"parts": parts, "targets": [{"target": t, "value": v, "met": ok} for t, v, ok in checks],
               "profile": profile, "autobatch": autobatch, "throughput": throughput, "throughput_tf32": tf32,
               "trials": trials}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    md = markdown(parts, profile, autobatch, throughput, checks, tf32, trials)
    (out / "summary.md").write_text(md)
    print(md)
    return 0 if all(p["rc"] == 0 for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
