#!/usr/bin/env python3
"""Write the Grafana dashboards (dashboards/json/*.json) from plain dicts.

    python dashboards/generate.py             # rewrite dashboards/json/
    python dashboards/generate.py --out DIR   # write them somewhere else

The JSON files are this script's output: edit here, regenerate, commit both
(tests/test_dashboards.py fails when they differ). Every metric comes from
docs/metrics.md; docs/dashboards.md says what each panel shows.

The `job` template variable is Prometheus's scrape job (`job="memtrain"`): the
scrape config keeps `honor_labels` false, so the job's own name, the `job`
label of `memtrain_job_info`, is stored as `exported_job`, and the panels
show it from there (`group_left(exported_job)`).

A trial array (docs/metrics.md, "Trial arrays") serves all its trials from one target: each
trial's training and job series carry a `trial` label, the array's memory has none, and its
own `memtrain_job_info` has an empty one. The `trial` variable (All: `.*`, which also matches a
lone job's series, which have no `trial` label) filters the per-trial families, and joins to
`memtrain_job_info` are `on (job, instance, trial)`, so an array's memory joins its own info.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    from memtrain.train.state import JOB_STATES
except ImportError:  # a checkout without memtrain installed: import it from the tree
    sys.path.insert(0, str(HERE.parent))
    from memtrain.train.state import JOB_STATES

OUT = HERE / "json"
SCHEMA_VERSION = 39  # Grafana 11.0; later versions migrate it on load
DS = {"type": "prometheus", "uid": "${datasource}"}
SCOPE = 'job=~"$job", instance=~"$instance"'  # every selector carries it
TRIAL = 'trial=~"$trial"'  # and every selector of a per-trial family (memtrain/metrics.py _training)
TRIAL_FAMILIES = {  # a trial array labels these by trial; its memory and GPU families are the process's, once
    "memtrain_batch_size", "memtrain_micro_batch_size", "memtrain_oom_recoveries_total", "memtrain_steps_total",
    "memtrain_samples_total", "memtrain_epoch", "memtrain_step_duration_seconds", "memtrain_train_loss",
    "memtrain_validation_loss", "memtrain_validation_accuracy", "memtrain_validation_rmse", "memtrain_validation_mae",
    "memtrain_validation_r2", "memtrain_learning_rate", "memtrain_gradient_norm", "memtrain_nonfinite_steps_total",
    "memtrain_checkpoints_total", "memtrain_last_checkpoint_timestamp_seconds",
    "memtrain_job_start_timestamp_seconds", "memtrain_job_state", "memtrain_job_info"}
STATE_COLORS = {"planning": "blue", "training": "green", "evaluating": "purple", "checkpointing": "yellow",
                "finished": "text", "failed": "red"}
# Sources measured by the process itself: CuPy's pool peak and NVML on a GPU, tracemalloc on the CPU.
MEASURED = "cupy_pool_peak|nvml_process|tracemalloc_peak"
PEAKS = "cupy_pool_peak|tracemalloc_peak"  # the job's own peak: the pool's on a GPU, tracemalloc's on the CPU


def sel(metric: str, *matchers: str, trial: bool = True) -> str:
    """`metric{job=~"$job", instance=~"$instance", ...}`, and `trial=~"$trial"` for a per-trial family
    (unless trial=False)."""
    family = re.sub(r"_(bucket|sum|count)$", "", metric)
    scope = (SCOPE, TRIAL) if trial and family in TRIAL_FAMILIES else (SCOPE,)
    return f"{metric}{{{', '.join((*scope, *matchers))}}}"


def named(expr: str) -> str:
    """Attach the job's own name (exported_job) to a per-job or per-trial series (labels job, instance,
    and trial in an array), for legends: an array's memory (no trial label) gets the array's name."""
    return (f"{expr} * on (job, instance, trial) group_left (exported_job) "
            f"{sel('memtrain_job_info', trial=False)}")


def state_code() -> str:
    """memtrain_job_state as one series per job whose value is the state's position in JOB_STATES
    (1-based): a state set has one series per state, a timeline wants one per job."""
    parts = [sel("memtrain_job_state", 'memtrain_job_state="%s"' % name) + f" * {i}"
             for i, name in enumerate(JOB_STATES, 1)]
    return "sum without (memtrain_job_state) (\n  " + "\n  or ".join(parts) + "\n)"


STATE_MAPPINGS = [{"type": "value", "options": {
    str(i): {"text": name, "color": STATE_COLORS[name], "index": i - 1} for i, name in enumerate(JOB_STATES, 1)}}]


# -- targets and panels -------------------------------------------------------------------------------


def target(expr: str, legend: str = "", *, table: bool = False) -> dict:
    t = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend or "__auto",
         "range": not table, "instant": table}
    if table:
        t["format"] = "table"
    return t


def _panel(kind: str, title: str, description: str, unit: str, targets: list, *, w: int, h: int,
           defaults: dict | None = None, options: dict | None = None, overrides: list | None = None) -> dict:
    for ref, t in zip("ABCDEFGHIJ", targets):
        t["refId"] = ref
    return {"type": kind, "title": title, "description": description, "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": 0, "y": 0},
            "fieldConfig": {"defaults": {"unit": unit, **(defaults or {})}, "overrides": overrides or []},
            "options": options or {}, "targets": targets}


_LEGEND = {"displayMode": "list", "placement": "bottom", "showLegend": True}
_TOOLTIP = {"mode": "multi", "sort": "desc"}
_REDUCE = {"calcs": ["lastNotNull"], "fields": "", "values": False}


def timeseries(title, description, unit, targets, *, w=8, h=8, stack=False, fill=10, minimum=None,
               overrides=None, thresholds=None):
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": fill, "showPoints": "never",
              "spanNulls": False, "stacking": {"mode": "normal" if stack else "none", "group": "A"},
              "thresholdsStyle": {"mode": "dashed" if thresholds else "off"}}
    if minimum is not None:
        custom["axisSoftMin"] = minimum
    defaults = {"custom": custom, "color": {"mode": "palette-classic"}}
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
    return _panel("timeseries", title, description, unit, targets, w=w, h=h, defaults=defaults,
                  options={"legend": _LEGEND, "tooltip": _TOOLTIP}, overrides=overrides)


def stat(title, description, unit, targets, *, w=4, h=4, steps=None):
    defaults = {"color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": steps or [{"color": "text", "value": None}]}}
    return _panel("stat", title, description, unit, targets, w=w, h=h, defaults=defaults,
                  options={"reduceOptions": _REDUCE, "colorMode": "value", "graphMode": "none",
                           "justifyMode": "auto", "orientation": "auto", "textMode": "auto"})


def table(title, description, unit, targets, *, w=24, h=6, hide=(), rename=None, overrides=None):
    transformations = [{"id": "merge", "options": {}}] if len(targets) > 1 else []
    transformations.append({"id": "organize", "options": {
        "excludeByName": {name: True for name in ("Time", "__name__", *hide)},
        "renameByName": rename or {}}})
    p = _panel("table", title, description, unit, targets, w=w, h=h, overrides=overrides,
               options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}})
    p["transformations"] = transformations
    return p


def state_timeline(title, description, targets, *, w=24, h=5):
    return _panel("state-timeline", title, description, "none", targets, w=w, h=h,
                  defaults={"color": {"mode": "thresholds"}, "mappings": STATE_MAPPINGS,
                            "custom": {"fillOpacity": 80, "lineWidth": 0}},
                  options={"mergeValues": True, "showValue": "auto", "alignValue": "left", "rowHeight": 0.9,
                           "legend": _LEGEND, "tooltip": {"mode": "single", "sort": "none"}})


def bargauge(title, description, unit, targets, *, w=12, h=8):
    return _panel("bargauge", title, description, unit, targets, w=w, h=h,
                  defaults={"min": 0, "max": 1, "color": {"mode": "thresholds"},
                            "thresholds": {"mode": "absolute", "steps": [
                                {"color": "green", "value": None}, {"color": "orange", "value": 0.8},
                                {"color": "red", "value": 0.95}]}},
                  options={"reduceOptions": _REDUCE, "displayMode": "gradient", "orientation": "horizontal",
                           "showUnfilled": True, "valueMode": "color", "minVizHeight": 16, "minVizWidth": 8})


def by_ref(ref: str, **props) -> dict:
    """A field override for the series of query `ref` (custom__fillOpacity: the property custom.fillOpacity)."""
    return {"matcher": {"id": "byFrameRefID", "options": ref},
            "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()]}


def by_name(name: str, **props) -> dict:
    return {"matcher": {"id": "byName", "options": name},
            "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()]}


LINE = {"custom__stacking": {"mode": "none", "group": "B"}, "custom__fillOpacity": 0, "custom__lineWidth": 2}
DASHED = {**LINE, "custom__lineStyle": {"fill": "dash", "dash": [10, 10]}}


# -- layout and the dashboard ------------------------------------------------------------------------


def layout(sections: list) -> list:
    """[(row title, [panels])] -> Grafana's flat panel list: each row panel followed by its panels,
    placed left to right and wrapped at 24 columns; ids in order."""
    out, y, ids = [], 0, iter(range(1, 1000))
    for title, panels in sections:
        out.append({"type": "row", "title": title, "collapsed": False, "id": next(ids),
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        y += 1
        x, row_h = 0, 0
        for p in panels:
            w, h = p["gridPos"]["w"], p["gridPos"]["h"]
            if x + w > 24:
                x, y, row_h = 0, y + row_h, 0
            p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            p["id"] = next(ids)
            out.append(p)
            x, row_h = x + w, max(row_h, h)
        y += row_h
    return out


# the data-source picker every dashboard starts its variables with
DATASOURCE_VARIABLE = {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                       "regex": "", "current": {}, "options": [], "refresh": 1, "hide": 0, "multi": False,
                       "includeAll": False}


def query_variable(name: str, label: str, query: str, *, multi: bool) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DS, "definition": query, "query": query,
            "refresh": 2, "sort": 1, "regex": "", "multi": multi, "includeAll": multi,
            "allValue": ".+" if multi else None, "current": {}, "options": [], "hide": 0}


def variables(*, multi_instance: bool) -> list:
    return [
        DATASOURCE_VARIABLE,
        query_variable("job", "Prometheus job", "label_values(memtrain_job_info, job)", multi=True),
        query_variable("instance", "Instance", 'label_values(memtrain_job_info{job=~"$job"}, instance)',
                       multi=multi_instance),
        # a trial array's trials (empty for lone jobs); All is ".*" so that a lone job's series, which
        # have no trial label, match too
        {**query_variable("trial", "Trial", 'label_values(memtrain_job_info{job=~"$job", instance=~"$instance"}, '
                          "trial)", multi=True), "allValue": ".*"},
    ]


def service_variables() -> list:
    """The service's own scrape job and instance, and the scrape job of the training jobs it
    runs (discovered through its /prometheus/targets)."""
    return [
        DATASOURCE_VARIABLE,
        query_variable("job", "Service job", "label_values(memtrain_service_jobs, job)", multi=False),
        query_variable("instance", "Service", 'label_values(memtrain_service_jobs{job=~"$job"}, instance)',
                       multi=False),
        query_variable("jobs", "Training jobs' scrape job", "label_values(memtrain_job_info, job)", multi=True),
    ]


def dashboard(uid: str, title: str, description: str, sections: list, *, multi_instance: bool) -> dict:
    return {
        "uid": uid, "id": None, "title": title, "description": description, "tags": ["memtrain"],
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "time": {"from": "now-30m", "to": "now"}, "refresh": "10s", "timezone": "", "timepicker": {},
        "fiscalYearStartMonth": 0, "weekStart": "", "liveNow": False, "links": [],
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": variables(multi_instance=multi_instance)},
        "panels": layout(sections),
    }


# -- memtrain — training job ---------------------------------------------------------------------------


def job_dashboard() -> dict:
    traced = sel("memtrain_memory_measured_bytes", 'source="tracemalloc_peak"')
    job = [
        state_timeline("State", "memtrain_job_state: planning, training, evaluating, checkpointing, finished, "
                       "failed.", [target(state_code(), "{{instance}} {{trial}}")], w=24, h=4),
        table("Job", "memtrain_job_info: the job's name (exported_job: see docs/dashboards.md), model, optimizer, "
              "dtype and device.", "none", [target(sel("memtrain_job_info"), table=True)], w=12, h=4,
              hide=("Value",), rename={"exported_job": "name", "job": "prometheus job"}),
        stat("Running for", "time() - memtrain_job_start_timestamp_seconds: since this run of the job started.",
             "s", [target(f"time() - {sel('memtrain_job_start_timestamp_seconds')}", "{{instance}} {{trial}}")], w=3),
        stat("Epochs done", "memtrain_epoch: epochs completed.", "short",
             [target(sel("memtrain_epoch"), "{{instance}} {{trial}}")], w=3),
        stat("Last checkpoint", "time() - memtrain_last_checkpoint_timestamp_seconds. Orange after 15 minutes "
             "(the job checkpoints every epoch and every 10 minutes by default), red after 30.", "s",
             [target(f"time() - {sel('memtrain_last_checkpoint_timestamp_seconds')}", "{{instance}} {{trial}}")], w=3,
             steps=[{"color": "green", "value": None}, {"color": "orange", "value": 900},
                    {"color": "red", "value": 1800}]),
        stat("Checkpoints", "memtrain_checkpoints_total: checkpoints written by this run.", "short",
             [target(sel("memtrain_checkpoints_total"), "{{instance}} {{trial}}")], w=3),
    ]
    memory = [
        timeseries("Memory: planned vs measured", "Planned bytes per category, stacked "
                   "(memtrain_memory_planned_bytes), against the measured peaks as lines: cupy_pool_peak and "
                   "nvml_process on a GPU, tracemalloc_peak on the CPU (memtrain_memory_measured_bytes).", "bytes",
                   [target(f"sum by (category) ({sel('memtrain_memory_planned_bytes')})", "planned {{category}}"),
                    target(sel("memtrain_memory_measured_bytes", f'source=~"{MEASURED}"'), "measured {{source}}")],
                   w=12, stack=True, fill=40, minimum=0, overrides=[by_ref("B", **LINE)]),
        timeseries("Estimate error", "memtrain_memory_estimate_error_ratio: measured / planned - 1 (GPU: CuPy "
                   "pool peak against the plan without overhead; CPU: tracemalloc peak against the plan). Above 0: "
                   "the job used more than planned. Dashed lines at ±5 %.", "percentunit",
                   [target(sel("memtrain_memory_estimate_error_ratio"), "{{instance}}")], w=12,
                   thresholds=[{"color": "red", "value": None}, {"color": "green", "value": -0.05},
                               {"color": "red", "value": 0.05}]),
        timeseries("GPU memory", "memtrain_gpu_memory_{total,used,free}_bytes for each GPU NVML sees "
                   "(used: by every process on it). Empty without NVML.", "bytes",
                   [target(sel("memtrain_gpu_memory_total_bytes"), "GPU {{gpu}} total"),
                    target(sel("memtrain_gpu_memory_used_bytes"), "GPU {{gpu}} used"),
                    target(sel("memtrain_gpu_memory_free_bytes"), "GPU {{gpu}} free")], w=12, minimum=0,
                   overrides=[by_ref("A", **DASHED)]),
        timeseries("Headroom until OOM", "GPU: memtrain_gpu_memory_free_bytes, what any process can still "
                   "allocate on each GPU. CPU job: memtrain_memory_budget_bytes (the memory limit, or the free "
                   "memory when the job started) minus its tracemalloc peak; below 0 the job is outside the "
                   "budget it was sized for.", "bytes",
                   [target(sel("memtrain_gpu_memory_free_bytes"), "GPU {{gpu}} free"),
                    target(f"{sel('memtrain_memory_budget_bytes')} - on (job, instance) {traced}",
                           "CPU: budget - traced peak")], w=12,
                   thresholds=[{"color": "red", "value": None}, {"color": "transparent", "value": 0}]),
    ]
    batch = [
        timeseries("Batch size", "memtrain_batch_size (rows per optimizer step) and memtrain_micro_batch_size "
                   "(rows per forward/backward pass; smaller with gradient accumulation or after an OOM "
                   "recovery).", "short",
                   [target(sel("memtrain_batch_size"), "batch {{trial}}"),
                    target(sel("memtrain_micro_batch_size"), "micro-batch {{trial}}")], w=16, h=6, minimum=0),
        stat("OOM recoveries", "memtrain_oom_recoveries_total: out-of-memory errors recovered by halving the "
             "micro-batch (the trainer's count: continues from a resumed checkpoint).", "short",
             [target(sel("memtrain_oom_recoveries_total"), "{{instance}} {{trial}}")], w=8, h=6,
             steps=[{"color": "green", "value": None}, {"color": "orange", "value": 1}]),
    ]
    training = [
        timeseries("Loss", "memtrain_train_loss (last step's batch) and memtrain_validation_loss (after the last "
                   "completed epoch).", "none",
                   [target(sel("memtrain_train_loss"), "train {{trial}}"),
                    target(sel("memtrain_validation_loss"), "validation {{trial}}")], w=12),
        timeseries("Validation accuracy", "memtrain_validation_accuracy after the last completed epoch "
                   "(a classifier; a regression has the panel beside it).",
                   "percentunit", [target(sel("memtrain_validation_accuracy"), "validation {{trial}}")], w=6),
        timeseries("Validation RMSE, MAE, R² (regression)", "A linear-output job's memtrain_validation_rmse, "
                   "memtrain_validation_mae and memtrain_validation_r2 after the last completed epoch (its loss is "
                   "half the squared error). Empty for a classifier.", "none",
                   [target(sel("memtrain_validation_rmse"), "RMSE {{trial}}"),
                    target(sel("memtrain_validation_mae"), "MAE {{trial}}"),
                    target(sel("memtrain_validation_r2"), "R² {{trial}}")], w=6),
        timeseries("Learning rate", "memtrain_learning_rate of the last applied update.", "sci",
                   [target(sel("memtrain_learning_rate"), "lr {{trial}}")], w=9),
        timeseries("Gradient norm", "memtrain_gradient_norm: L2 norm of the last step's gradient, before "
                   "clipping.", "none", [target(sel("memtrain_gradient_norm"), "‖g‖ {{trial}}")], w=9),
        stat("Non-finite steps", "memtrain_nonfinite_steps_total: steps skipped because the loss or the "
             "gradient norm was not finite (the trainer's count).", "short",
             [target(sel("memtrain_nonfinite_steps_total"), "{{instance}} {{trial}}")], w=6, h=8,
             steps=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
    ]
    throughput = [
        timeseries("Samples / s", "rate(memtrain_samples_total): training samples per second.",
                   "suffix: samples/s",
                   [target(f"rate({sel('memtrain_samples_total')}[$__rate_interval])", "{{instance}} {{trial}}")], w=8),
        timeseries("Steps / s", "rate(memtrain_steps_total): optimizer steps per second.", "suffix: steps/s",
                   [target(f"rate({sel('memtrain_steps_total')}[$__rate_interval])", "{{instance}} {{trial}}")], w=8),
        timeseries("Step duration", "p50 and p95 from the memtrain_step_duration_seconds histogram, and the "
                   "mean (_sum / _count). A step's time includes checkpoints and validation run after it.", "s",
                   [target(f"histogram_quantile({q}, sum by (job, instance, trial, le) "
                           f"(rate({sel('memtrain_step_duration_seconds_bucket')}[$__rate_interval])))",
                           f"{name} {{{{trial}}}}")
                    for q, name in (("0.5", "p50"), ("0.95", "p95"))]
                   + [target(f"rate({sel('memtrain_step_duration_seconds_sum')}[$__rate_interval])"
                             f" / rate({sel('memtrain_step_duration_seconds_count')}[$__rate_interval])",
                             "mean {{trial}}")],
                   w=8),
    ]
    gpu = [
        timeseries("GPU utilisation", "memtrain_gpu_utilization_ratio: fraction of NVML's sample period a "
                   "kernel ran.", "percentunit", [target(sel("memtrain_gpu_utilization_ratio"), "GPU {{gpu}}")],
                   w=8, minimum=0),
        timeseries("GPU temperature", "memtrain_gpu_temperature_celsius.", "celsius",
                   [target(sel("memtrain_gpu_temperature_celsius"), "GPU {{gpu}}")], w=8),
        timeseries("GPU power", "memtrain_gpu_power_watts.", "watt",
                   [target(sel("memtrain_gpu_power_watts"), "GPU {{gpu}}")], w=8, minimum=0),
        table("GPUs", "memtrain_gpu_info: every GPU NVML sees. `gpu` is NVML's index, not necessarily the CUDA "
              "ordinal of cuda:N; match on uuid or pci_bus_id.", "none",
              [target(sel("memtrain_gpu_info"), table=True)], h=5, hide=("Value",)),
    ]
    return dashboard("memtrain-job", "memtrain — training job",
                     "One memtrain training job: memory plan against measurement, batch, training curves, "
                     "throughput, GPU and job state.",
                     [("Job", job), ("Memory", memory), ("Batch", batch), ("Training", training),
                      ("Throughput", throughput), ("GPU", gpu)], multi_instance=False)


# -- memtrain — fleet ------------------------------------------------------------------------------------


def fleet_dashboard() -> dict:
    per_job = "max by (job, instance, trial)"  # trial: empty for a job's (an array's) memory
    nvml = f"{per_job} ({sel('memtrain_memory_measured_bytes', 'source=%s' % json.dumps('nvml_process'))})"
    peak = f"{per_job} ({sel('memtrain_memory_measured_bytes', 'source=~%s' % json.dumps(PEAKS))})"
    capacity = f"{per_job} ({sel('memtrain_gpu_memory_total_bytes')})"
    planned = f"sum by (job, instance, trial) ({sel('memtrain_memory_planned_bytes')})"
    columns = {"Value #B": ("state", "none"), "Value #C": ("planned", "bytes"), "Value #D": ("peak", "bytes"),
               "Value #E": ("on GPU (NVML)", "bytes"), "Value #F": ("GPU capacity", "bytes"),
               "Value #G": ("share of GPU", "percentunit"), "Value #H": ("samples/s", "suffix: samples/s")}
    jobs = [
        table("Jobs", "One row per job: identity (memtrain_job_info), state, planned total, measured peak "
              "(CuPy pool or tracemalloc), the process's memory on its GPU (NVML), the GPU's capacity and the "
              "share of it the job holds. Capacity is the largest GPU the job's process sees: exact when a "
              "container is given one GPU, or when the server's GPUs are alike. A trial array has a row of its "
              "own (its memory, once for its process) and one per trial (its state and samples/s).", "none",
              [target(sel("memtrain_job_info"), table=True),
               target(state_code(), table=True),
               target(planned, table=True),
               target(peak, table=True),
               target(nvml, table=True),
               target(capacity, table=True),
               target(f"{nvml} / on (job, instance, trial) {capacity}", table=True),
               target(f"sum by (job, instance, trial) (rate({sel('memtrain_samples_total')}[$__rate_interval]))",
                      table=True)],
              h=8, hide=("Value #A",),
              rename={"exported_job": "name", "job": "prometheus job",
                      **{k: name for k, (name, _) in columns.items()}},
              overrides=[by_name(name, unit=unit, **({"mappings": STATE_MAPPINGS} if name == "state" else {}))
                         for name, unit in columns.values()]),
    ]
    memory = [
        timeseries("Memory per job against its GPU", "Each job's plan (memtrain_memory_planned_bytes, summed) "
                   "and measured peak as lines, its process's memory on the GPU (nvml_process), and the "
                   "capacity of its GPU dashed.", "bytes",
                   [target(named(planned), "{{exported_job}} @ {{instance}} planned"),
                    target(named(peak), "{{exported_job}} @ {{instance}} peak"),
                    target(named(nvml), "{{exported_job}} @ {{instance}} on GPU"),
                    target(named(capacity), "{{exported_job}} @ {{instance}} GPU capacity")],
                   w=24, h=9, minimum=0, overrides=[by_ref("D", **DASHED)]),
        bargauge("GPU memory in use, per GPU", "memtrain_gpu_memory_used_bytes / _total_bytes per GPU (by uuid: "
                 "every job on a server reports the same GPUs), by every process on it. Empty without NVML.",
                 "percentunit",
                 [target(f"max by (uuid) ({sel('memtrain_gpu_memory_used_bytes')})"
                         f" / max by (uuid) ({sel('memtrain_gpu_memory_total_bytes')})"
                         f" * on (uuid) group_left (name) max by (uuid, name) ({sel('memtrain_gpu_info')})",
                         "{{name}} {{uuid}}")]),
        timeseries("Estimate error per job", "memtrain_memory_estimate_error_ratio: measured / planned - 1.",
                   "percentunit", [target(named(sel("memtrain_memory_estimate_error_ratio")),
                                          "{{exported_job}} @ {{instance}}")], w=12),
    ]
    progress = [
        state_timeline("State per job", "memtrain_job_state of every job.",
                       [target(named(state_code()), "{{exported_job}} @ {{instance}}")], h=6),
        timeseries("Samples / s per job", "rate(memtrain_samples_total).", "suffix: samples/s",
                   [target(named(f"rate({sel('memtrain_samples_total')}[$__rate_interval])"),
                           "{{exported_job}} @ {{instance}}")], w=12),
        timeseries("Validation loss per job", "memtrain_validation_loss after each job's last epoch.", "none",
                   [target(named(sel("memtrain_validation_loss")), "{{exported_job}} @ {{instance}}")], w=12),
    ]
    return dashboard("memtrain-fleet", "memtrain — fleet",
                     "Every memtrain job on every instance, and its memory against its GPU's capacity.",
                     [("Jobs", jobs), ("Memory", memory), ("Progress", progress)], multi_instance=True)


# -- memtrain — service --------------------------------------------------------------------------------


def service_dashboard() -> dict:
    def state(name):
        return target(sel("memtrain_service_jobs", f'state="{name}"'), name)

    def device(metric, legend):
        return target(sel(metric), "{{device}} " + legend)

    queue = [
        stat("Queued", "memtrain_service_jobs{state=\"queued\"}: jobs waiting for their plan to fit.", "short",
             [state("queued")], w=6),
        stat("Running", "memtrain_service_jobs{state=\"running\"}.", "short", [state("running")], w=6),
        stat("Failed", "memtrain_service_jobs{state=\"failed\"}: exited non-zero, or killed more often than "
             "max_attempts.", "short", [state("failed")], w=6,
             steps=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
        stat("Rejected submissions", "memtrain_service_submissions_total{outcome=\"rejected\"}: bad input or a "
             "plan that never fits (HTTP 422).", "short",
             [target(sel("memtrain_service_submissions_total", 'outcome="rejected"'), "rejected")], w=6),
        timeseries("Jobs by state", "memtrain_service_jobs per state.", "short",
                   [target(f"sum by (state) ({sel('memtrain_service_jobs')})", "{{state}}")], w=12, stack=True),
        timeseries("Queue wait", "p50 and p95 of memtrain_service_queue_wait_seconds over the jobs started in the "
                   "window (NaN when none started).", "s",
                   [target(f"histogram_quantile({q}, sum by (job, instance, le) "
                           f"(rate({sel('memtrain_service_queue_wait_seconds_bucket')}[$__rate_interval])))", n)
                    for q, n in (("0.5", "p50"), ("0.95", "p95"))], w=12),
    ]
    memory = [
        timeseries("Memory per device", "memtrain_service_device_capacity_bytes (the budget plans may commit), "
                   "memtrain_service_device_committed_bytes (plans of running jobs plus their process overhead) "
                   "and memtrain_service_device_measured_bytes (their resident memory now). Committed never "
                   "exceeds capacity; measured below committed means the plans hold.", "bytes",
                   [device("memtrain_service_device_capacity_bytes", "capacity"),
                    device("memtrain_service_device_committed_bytes", "committed"),
                    device("memtrain_service_device_measured_bytes", "measured")], w=24, minimum=0),
        timeseries("State dir on disk", "memtrain_service_state_dir_bytes: the store, its backup and every job's "
                   "log, checkpoints and models, as du counts them; checkpoint retention keeps it bounded.", "bytes",
                   [target(sel("memtrain_service_state_dir_bytes"), "state dir")], w=18, minimum=0),
        stat("Damaged store rows", "memtrain_service_store_damaged_rows: job rows that do not decode, skipped by "
             "every list; memtrain serve --recover rebuilds them from their job dirs.", "short",
             [target(sel("memtrain_service_store_damaged_rows"), "damaged")], w=6,
             steps=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
    ]
    flow = [
        timeseries("Submissions", "rate(memtrain_service_submissions_total) by outcome: admitted to the queue or "
                   "rejected at submission.", "reqps",
                   [target(f"sum by (outcome) (rate({sel('memtrain_service_submissions_total')}"
                           "[$__rate_interval]))", "{{outcome}}")], w=12),
        timeseries("Starts and retries", "rate(memtrain_service_job_starts_total) (job processes started) and "
                   "rate(memtrain_service_job_retries_total) (jobs requeued to resume from a checkpoint).", "ops",
                   [target(f"rate({sel('memtrain_service_job_starts_total')}[$__rate_interval])", "starts"),
                    target(f"rate({sel('memtrain_service_job_retries_total')}[$__rate_interval])", "retries")],
                   w=12),
        state_timeline("Jobs timeline", "memtrain_job_state of every running job the service exposes in "
                       "/prometheus/targets, by the `name` label discovery gives it.",
                       [target(jobs_state_code(), "{{name}} {{job_id}} {{trial}}")], h=8),
    ]
    return {**dashboard("memtrain-service", "memtrain — service",
                        "memtrain serve: the queue, jobs by state, committed plans against measured memory and "
                        "capacity per device, and a timeline of the jobs it runs.",
                        [("Queue", queue), ("Memory", memory), ("Jobs", flow)], multi_instance=False),
            "templating": {"list": service_variables()}}


def jobs_state_code() -> str:
    """state_code() over every training job the service runs (scrape job $jobs, any instance)."""
    parts = [f'memtrain_job_state{{job=~"$jobs", memtrain_job_state="{name}"}} * {i}'
             for i, name in enumerate(JOB_STATES, 1)]
    return "sum without (memtrain_job_state) (\n  " + "\n  or ".join(parts) + "\n)"


DASHBOARDS = {"memtrain-job.json": job_dashboard, "memtrain-fleet.json": fleet_dashboard,
              "memtrain-service.json": service_dashboard}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def write(out: Path) -> list:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in DASHBOARDS.items():
        (out / name).write_text(render(build), encoding="utf-8")
        paths.append(out / name)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"directory to write to (default {OUT})")
    for path in write(ap.parse_args(argv).out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
