"""The page of a job (/jobs/{id}/page) rendered by a real headless Chromium against a live
service: a finished regression job, a running classifier and a queued job that waits for a slot
and for memory. MEMTRAIN_SCREENSHOT_DIR=DIR also saves screenshots there (docs/images/job-page-*.png
came from it).
"""

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from service_helpers import OVERHEAD, ThreadServer, digits_job
from test_service_page import CHROMIUM, chromium

from memtrain.service import svg
from memtrain.service.jobpage import duration


def regression_job(name, epochs=12):
    return {"name": name, "seed": 0, "model": {"layers": [8, 16, 1], "output": "linear"},
            "optimizer": {"name": "adam", "lr": 0.01}, "training": {"epochs": epochs, "batch_size": 32},
            "data": {"dataset": "synthetic:regression(600, 8, 1)"}}


def _epochs_done(s, job_id, n, timeout=60):
    deadline = time.time() + timeout
    while (s.request("GET", f"/jobs/{job_id}")[1]["progress"].get("epoch") or 0) < n:
        assert time.time() < deadline
        time.sleep(0.1)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not on PATH (Debian: apt-get install chromium; .ci/run does)")
def test_job_pages_in_headless_chromium(tmp_path):
    shots = os.environ.get("MEMTRAIN_SCREENSHOT_DIR")
    # one slot and room for one job: the third waits for the slot and for memory, and says both
    with ThreadServer(tmp_path / "state", budgets={"cpu": OVERHEAD + 40 * 1024**2}, max_jobs_per_device=1) as s:
        reg = s.request("POST", "/jobs", regression_job("page-regression"))[1]["id"]
        assert s.wait(reg)["state"] == "succeeded"
        run = s.request("POST", "/jobs", digits_job("page-classifier", epochs=400, batch=8))[1]["id"]
        s.wait(run, ("running",))
        _epochs_done(s, run, 4)
        samples = tmp_path / "state" / "jobs" / run / "memory.jsonl"  # the worker's, one a second
        deadline = time.time() + 30
        while len(samples.read_text().splitlines() if samples.exists() else []) < 2:
            assert time.time() < deadline
            time.sleep(0.1)
        wait = s.request("POST", "/jobs", digits_job("page-waiting", epochs=1))[1]["id"]
        pages = {"reg": reg, "run": run, "wait": wait}
        with ThreadPoolExecutor(len(pages)) as pool:  # three browsers at once: one Chromium start's wait
            dumps = pool.map(lambda i: chromium("--virtual-time-budget=2000", "--dump-dom", f"{s.url}/jobs/{i}/page"),
                             pages.values())
            doms = dict(zip(pages, dumps))
        status = s.request("GET", "/")[1]  # tests/test_service_page.py renders it in Chromium
        missing = s.request("GET", "/jobs/nope/page")
        if shots:
            for k, i in (("regression", reg), ("running", run)):
                chromium("--window-size=1240,1500", f"--screenshot={os.path.abspath(shots)}/job-page-{k}.png",
                         f"{s.url}/jobs/{i}/page")
        s.request("DELETE", f"/jobs/{run}")
        s.wait(run)
    for r in doms.values():
        assert r.returncode == 0, r.stderr[-2000:]
    reg_dom, run_dom, wait_dom = (doms[k].stdout for k in ("reg", "run", "wait"))
    assert missing[0] == 404 and missing[1]["detail"] == "job nope: no such job"
    assert f"href='/jobs/{run}/page'" in status  # the status page links each job to its page
    assert re.search(r"test loss \d\.\d{4}, RMSE [\d.]+, MAE [\d.]+, R\^2", status)  # a regression's outcome

    # the finished regression job: its scores and their curves, the loss named, no reload
    assert "succeeded" in reg_dom and "http-equiv=\"refresh\"" not in reg_dom
    assert re.search(r"test loss \d\.\d{4}, RMSE [\d.]+, MAE [\d.]+, R\^2 0\.\d{4}; \d+ steps in", reg_dom), reg_dom
    assert "Validation RMSE and MAE (regression)" in reg_dom and "Validation R^2" in reg_dom
    assert "Validation accuracy" not in reg_dom
    for title in ("Loss per epoch", "Validation RMSE and MAE (regression)", "Throughput"):
        chart = _chart(reg_dom, title)
        assert chart.count("<circle") >= 12, title  # a point per epoch (12 epochs)
    assert "ckpt-" in reg_dom and "finished  12 epochs" in reg_dom  # a checkpoint and the summary event
    log = re.search(r"<h2>Log .*?<pre>(.*?)</pre>", reg_dom, re.S).group(1)  # the log's last lines, as text
    assert "epoch 12/12  loss " in log and "validation loss " in log and "{" not in log

    # the running classifier: live curves, memory over time against the plan, durations, reloads
    assert "http-equiv=\"refresh\"" in run_dom and "running" in run_dom
    assert "Validation accuracy" in run_dom and "RMSE" not in run_dom
    mem = _chart(run_dom, "Memory over time")
    assert "resident" in mem and "plan + overhead" in mem and "<polyline" in mem
    assert "no data yet" not in _chart(run_dom, "Loss per epoch")
    assert re.search(r"<dt>ran for</dt><dd>\d+ s so far</dd>", run_dom)
    assert re.search(r"<dt>queued for</dt><dd>\d+ s</dd>", run_dom)
    for cat in ("parameters", "optimizer_state", "activations"):
        assert f"<td>{cat}</td>" in run_dom
    assert "plan's buffers, measured peak" in run_dom and "resident now" in run_dom

    # the queued job: its place in the queue and every reason it waits
    assert "<dt>position</dt><dd>1 of 1 queued" in wait_dom
    assert "<li>all cpu job slots are taken (1 per device)</li>" in wait_dom
    assert re.search(r"<li>needs [\d.]+ MiB, [\d.]+ (MiB|KiB|B) free on cpu</li>", wait_dom), wait_dom
    assert "no data yet" in _chart(wait_dom, "Loss per epoch")
    assert "http" + "s://" not in reg_dom + run_dom + wait_dom  # nothing loaded from elsewhere


def _chart(dom: str, title: str) -> str:
    """The <svg> element whose title is `title`."""
    m = re.search(r"<svg[^>]*aria-label=\"" + re.escape(title) + r"\".*?</svg>", dom, re.S)
    assert m, f"no chart {title!r}"
    return m.group(0)


def test_svg_chart_scales_points_into_the_plot():
    c = svg.Chart("t", [svg.Series("a", [(1, 10.0), (2, float("nan")), (3, 30.0)])], levels=[("plan", 40.0, "#000")])
    out = svg.render(c)
    assert out.startswith("<svg") and out.endswith("</svg>") and "plan" in out
    pts = re.search(r"points='([^']*)'", out).group(1).split()
    assert len(pts) == 2  # the NaN left out
    (x1, y1), (x2, y2) = (tuple(map(float, p.split(","))) for p in pts)
    assert x1 < x2 and y1 > y2  # later to the right, larger higher up
    assert svg.ticks(0, 1) == [0, 0.25, 0.5, 0.75, 1.0] and svg.ticks(0, 0.9) == [0, 0.25, 0.5, 0.75, 1.0]
    assert svg.ticks(3, 97) == [0, 25, 50, 75, 100] and svg.ticks(3, 77) == [0, 20, 40, 60, 80]
    assert "no data yet" in svg.render(svg.Chart("empty"))
    assert "&lt;b&gt;" in svg.render(svg.Chart("<b>"))


def test_a_long_series_is_thinned_to_what_a_chart_can_show():
    pts = [(i, float(i)) for i in range(100_000)]
    kept = svg.thin(pts)
    assert len(kept) == svg.MAX_POINTS and kept[0] == (0, 0.0) and kept[-1] == (99_999, 99_999.0)
    assert all(a[0] < b[0] for a, b in zip(kept, kept[1:]))
    assert len(svg.render(svg.Chart("t", [svg.Series("a", pts)]))) < 40_000


def test_duration_reads_as_a_person_would():
    assert [duration(s) for s in (0, 59.6, 125, 7300)] == ["0 s", "60 s", "2 min 5 s", "2 h 1 min"]


def test_a_gpu_jobs_memory_chart_compares_the_pool_peak_with_the_plan_not_host_memory():
    from memtrain.service.jobpage import _memory_chart

    class NoDevices:
        devices = []

    row = SimpleNamespace(planned_bytes=1 << 20, device_kind="cuda", device="cuda:0")  # the JobRow fields it reads
    c = _memory_chart(row, [{"epoch": 1, "time": 10.0, "measured_peak_bytes": 1 << 20}], [(5.0, 300 << 20)],
                      NoDevices())
    assert c.title.startswith("GPU memory") and [s.label for s in c.series] == ["plan, measured peak"]
    assert c.series[0].points == [(5.0, 1 << 20)] and [lv[0] for lv in c.levels] == ["plan"]
