"""Text, CSV and JSON renderings of the library's report dicts (the CLI prints these)."""

from __future__ import annotations

import csv
import io
import json

from memtrain.jsonable import plain
from memtrain.memory.plan import CATEGORIES
from memtrain.units import format_bytes


def to_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=plain)


def _table(headers, rows, align=None) -> str:
    align = align or ["<"] + [">"] * (len(headers) - 1)
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _x(v) -> str:
    return f"{v:.2f}x"


def estimate_text(r: dict) -> str:
    out = [f"model      {r['model']['description']}, {r['model']['n_params']:,} parameters"]
    if r["optimizer"]:
        slots = ", ".join(f"{s['name']} ({s['kind']}, {s['dtype']})" for s in r["optimizer"]["slots"]) or "none"
        out.append(f"optimizer  {r['optimizer']['name']}: state slots {slots}")
    out.append(f"plan       {r['mode']}, batch {r['batch_size']}, device {r['device']}"
               + (", buffers rounded to 512 B (CuPy pool)" if r["device"] == "cuda" else ""))
    out.append("")
    m = r["multipliers"]
    rows = []
    for cat in CATEGORIES:
        b = r["categories"][cat]
        name = cat
        if cat == "overhead" and b:  # which overhead it is (the process's or the device's) and where it came from
            name = f"{r['overhead'].get('kind', 'device')} overhead ({r['overhead']['source']})"
        rows.append([name, f"{b:,}", format_bytes(b), _x(m[cat])])
    rows.append(["total", f"{r['total']:,}", format_bytes(r["total"]), _x(r["total"] / max(r["categories"]["parameters"], 1))])
    out.append(_table(["category", "bytes", "size", "x params"], rows))
    if r["mode"] == "train":
        out.append(f"\nparameters + gradients + optimizer state = {_x(m['params_grads_state'])} the parameters")
        extra = [b["name"] for b in r["buffers"] if b["name"] in ("best_params", "grad_accum")]
        if extra:
            out.append("(not counted there: " + ", ".join(
                {"best_params": "best_params, the best weights early stopping keeps",
                 "grad_accum": "grad_accum, the gradient-accumulation buffer"}[n] for n in extra) + ")")
    f = r["formula"]
    out.append(f"total(B) = {f['fixed']:,} B + B x {f['per_sample']:,} B"
               f"   ({format_bytes(f['fixed'])} + B x {format_bytes(f['per_sample'])})"
               + ("  + rounding of each buffer to 512 B" if f["rounding"] else ""))
    if "max_batch" in r:
        out.append(max_batch_text(r["max_batch"], r["mode"]))
    if "per_layer" in r:
        out.append("")
        out.append(_table(
            ["layer", "shape", "parameters", "param bytes", "act. bytes/sample", "act. bytes", "share"],
            [[p["layer"], p["shape"], f"{p['parameters']:,}", format_bytes(p["parameter_bytes"]),
              f"{p['activation_bytes_per_sample']:,}", format_bytes(p["activation_bytes"]), f"{p['share']:.1%}"]
             for p in r["per_layer"]]))
    if "data_parallel" in r:
        d = r["data_parallel"]
        out.append(f"\n{d['gpus']} data-parallel GPUs (estimate): per GPU {format_bytes(d['replicated_per_gpu'])} with "
                   f"optimizer state replicated, {format_bytes(d['sharded_per_gpu'])} sharded {d['gpus']} ways "
                   f"(ZeRO-1), saving {format_bytes(d['saved_per_gpu'])} per GPU")
    return "\n".join(out)


def max_batch_text(f: dict, mode: str) -> str:
    src = f" ({f['budget_source']})" if f.get("budget_source") else ""
    if f.get("margin"):  # the same safety margin autobatch keeps
        src += f" less a {format_bytes(f['margin'])} margin"
    limit = format_bytes(f.get("memory_limit", f["budget"]))
    what = "inference batch" if mode == "inference" else "batch"
    if not f["batch_size"]:
        return (f"largest {what} in {limit}{src}: none; batch 1 needs "
                f"{format_bytes(f['shortfall'])} more")
    return (f"largest {what} in {limit}{src}: B = {f['batch_size']:,} "
            f"(uses {format_bytes(f['total'])}, {f['utilisation']:.1%}; {format_bytes(f['headroom'])} left)")


def estimate_csv(r: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["category", "bytes", "x_params"])
    for cat in CATEGORIES:
        w.writerow([cat, r["categories"][cat], f"{r['multipliers'][cat]:.6f}"])
    w.writerow(["total", r["total"], f"{r['total'] / max(r['categories']['parameters'], 1):.6f}"])
    return buf.getvalue().rstrip("\n")


def table_text(t: dict) -> str:
    budget = t["budget"]
    headers = ["optimizer", "batch", "state slots", "state", "p+g+state", "total"]
    if budget is not None:
        headers.append(f"max batch in {format_bytes(budget)}")
    rows = []
    for r in t["rows"]:
        row = [r["optimizer"], r["batch_size"], ",".join(r["slots"]) or "-", _x(r["state_multiplier"]),
               _x(r["params_grads_state_multiplier"]), format_bytes(r["total"])]
        if budget is not None:
            row.append(f"{r['max_batch']:,}" if r["max_batch"] else "none")
        rows.append(row)
    head = f"model {'-'.join(map(str, t['model']['sizes']))} {t['model']['activation']}, {t['model']['dtype']}, device {t['device']}"
    return head + "\n\n" + _table(headers, rows, ["<", ">", "<", ">", ">", ">", ">"][: len(headers)])


def table_csv(t: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["optimizer", "batch_size", *CATEGORIES, "total", "state_multiplier", "params_grads_state_multiplier",
                "max_batch"])
    for r in t["rows"]:
        w.writerow([r["optimizer"], r["batch_size"], *(r["categories"][c] for c in CATEGORIES), r["total"],
                    f"{r['state_multiplier']:.6f}", f"{r['params_grads_state_multiplier']:.6f}",
                    "" if r["max_batch"] is None else r["max_batch"]])
    return buf.getvalue().rstrip("\n")


def profile_text(p: dict) -> str:
    rows = [[r["category"], f"{r['planned']:,}", f"{r['measured']:,}", f"{r['error_bytes']:+,}",
             "" if r["error_ratio"] is None else f"{r['error_ratio']:+.3%}"] for r in p["rows"]]
    rows.append(["step temporaries (unplanned)", "0", f"{p['step_transient']:,}", f"{p['step_transient']:+,}", ""])
    rows.append(["total (peak)", f"{p['planned_total']:,}", f"{p['measured_total']:,}", f"{p['error_bytes']:+,}",
                 f"{p['error_ratio']:+.3%}"])
    tol = p["tolerance"]
    verdict = "OK" if p["ok"] else "OVER TOLERANCE"
    lines = [f"profile: {p['steps']} training steps at batch {p['batch_size']} on {p['device']}, measured by {p['source']}",
             "", _table(["category", "planned B", "measured B", "error B", "error"], rows), "",
             f"{verdict}: |error| {abs(p['error_bytes']):,} B, allowed {tol['allowed_bytes']:,} B "
             f"(max of {tol['ratio']:.2%} and {tol['bytes']:,} B)"]
    if p.get("nvml_process") is not None:
        lines.append(f"NVML process usage {p['nvml_process']:,} B vs plan total {p['planned_total']:,} B "
                     f"({p['nvml_error_ratio']:+.3%})")
    return "\n".join(lines)


def probe_line(p) -> str:
    measured = "n/a" if p.measured is None else f"{p.measured:,} B"
    return (f"probe       B = {p.batch_size:,}: planned {p.planned:,} B, measured peak {measured} -> {p.outcome} "
            f"({p.seconds:.2f} s)")


def autobatch_text(r) -> str:
    lines = [
        f"budget      {format_bytes(r.budget + r.margin)} ({r.budget_source}) - margin {format_bytes(r.margin)} "
        f"= {format_bytes(r.budget)}",
        f"analytic    B = {r.analytic:,} (largest with plan(B) <= budget"
        + (f", at most {r.cap:,}: the training rows or max_batch_size)" if getattr(r, "cap", None) else ")"),
        f"confirmed   B = {r.confirmed:,} after {len(r.probes)} probe{'s' if len(r.probes) != 1 else ''}, "
        f"{r.seconds:.2f} s in all",
        f"evaluation  B = {r.eval_batch:,} (inference plan)",
    ]
    if r.throughput:
        best = max(r.throughput, key=lambda t: t[1])
        lines.append(f"fastest     B = {best[0]:,}: {best[1]:,.0f} samples/s (stopped when doubling gained < 5%)")
    return "\n".join(lines)


def devices_text(r: dict) -> str:
    lines = []
    if r["gpus"]:
        lines.append(f"NVIDIA driver {r['nvml']['driver_version']}")
        rows = []
        for g in r["gpus"]:
            procs = ", ".join(f"{p['pid']}: {format_bytes(p['used_bytes'] or 0)}" for p in g.get("processes", [])) or "-"
            rows.append([g["index"], g["name"], g["pci_bus_id"], format_bytes(g["memory_total"]),
                         format_bytes(g["memory_used"]), format_bytes(g["memory_free"]),
                         "-" if g["utilization"] is None else f"{g['utilization']:.0%}",
                         "-" if g["temperature_c"] is None else f"{g['temperature_c']} C",
                         "-" if g["power_w"] is None else f"{g['power_w']:.0f} W", procs])
        lines.append(_table(["gpu", "name", "pci bus id", "total", "used", "free", "util", "temp", "power",
                             "processes (pid: memory)"], rows, ["<"] * 10))
        lines.append("")
    else:
        lines.append(f"no GPU: {r['nvml']['reason']}")
    c = r["cpu"]
    lines.append(f"cpu         {c['model']}, {c['cores']} cores")
    lines.append(f"memory      {format_bytes(c['memory_total'])} total, {format_bytes(c['memory_available'])} available "
                 f"(MemAvailable), this process {format_bytes(c['process_rss'])} (RSS)")
    return "\n".join(lines)


def score_cell(r: dict, prefix: str, *, r2: bool = True) -> str:
    """"acc 0.9722" for a classifier, "RMSE 0.4232 R^2 0.855" for a regression (R^2 left out of
    narrow tables with r2=False), "-" without scores. `prefix`: "test_", "best_val_", ..."""
    if r.get(prefix + "accuracy") is not None:
        return f"acc {r[prefix + 'accuracy']:.4f}"
    if r.get(prefix + "rmse") is not None:
        r2v = r.get(prefix + "r2") if r2 else None
        return f"RMSE {r[prefix + 'rmse']:.4g}" + ("" if r2v is None else f" R^2 {r2v:.3f}")
    return "-"


def trials_text(a: dict) -> str:
    """`estimate --trials K`: the trial array beside the same trials as separate jobs."""
    rows = [[cat, f"{a['categories'][cat]:,}", format_bytes(a["categories"][cat])] for cat in CATEGORIES]
    rows.append(["total", f"{a['total']:,}", format_bytes(a["total"])])
    out = [f"\ntrial array: {a['trials']} trials of this plan trained as one (batch {a['batch_size']}); "
           "the data set and the process once", _table(["category", "bytes", "size"], rows),
           f"total(K) = {a['fixed']:,} B + K x {a['per_trial']:,} B   ({format_bytes(a['fixed'])} + K x "
           f"{format_bytes(a['per_trial'])})",
           f"{a['trials']} separate jobs (each its own data set, process and trial objects): "
           f"{format_bytes(a['separate'])}; the array saves {format_bytes(a['saved'])}"]
    if "max_trials" in a:
        m = a["max_trials"]
        out.append(f"largest array in {format_bytes(m['budget'])} (less the margin, {format_bytes(m['after_margin'])}):"
                   f" {m['trials']:,} trials")
    return "\n".join(out)


def trials_csv(a: dict) -> str:
    rows = [f"array:{cat},{a['categories'][cat]}" for cat in CATEGORIES] + [f"array:total,{a['total']}"]
    return "\n".join(rows)
