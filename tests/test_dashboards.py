"""dashboards/: the Grafana JSON generate.py writes, its provisioning, the Prometheus config and
docker-compose.yml. tests/test_prometheus_stack.py asks a real Prometheus every query."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from memtrain import config

ROOT = Path(__file__).resolve().parent.parent
DASH = ROOT / "dashboards"
JSON_DIR = DASH / "json"
DASHBOARDS = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(JSON_DIR.glob("*.json"))}
DS = {"type": "prometheus", "uid": "${datasource}"}
DOCKER_COMPOSE = shutil.which("docker-compose")
GPU_RESERVATION = [{"capabilities": ["gpu"], "count": 1, "driver": "nvidia"}]


def _panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])  # a collapsed row holds its panels


def _data_panels():
    """(dashboard uid, panel) for every panel but rows, which hold no query."""
    return [(d["uid"], p) for d in DASHBOARDS.values() for p in _panels(d) if p["type"] != "row"]


def _exprs():
    return [(uid, p["title"], t["expr"]) for uid, p in _data_panels() for t in p["targets"]]


# -- a YAML reader for the subset these files use (PyYAML is not a dependency) ------------------


def parse_yaml(text: str):
    """Block mappings and sequences (`- key: value` items included), comments, quoted and plain
    scalars, flow lists of scalars and `{}`. Anything else (anchors, multi-line strings, flow
    mappings with content) raises ValueError, so a file outside the subset is not misread."""
    lines = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = _uncomment(raw).rstrip()
        if line.strip():
            lines.append([n, len(line) - len(line.lstrip(" ")), line.strip()])
    if not lines:
        return None
    value, i = _block(lines, 0, lines[0][1])
    if i != len(lines):
        raise ValueError(f"line {lines[i][0]}: bad indentation")
    return value


def _uncomment(line: str) -> str:
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


_KEY = re.compile(r"""^("[^"]*"|'[^']*'|[\w.\-/]+):(?:\s+(.*))?$""")


def _block(lines, i, indent):
    if lines[i][2] == "-" or lines[i][2].startswith("- "):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines, i, indent):
    out = []
    while i < len(lines) and lines[i][1] == indent and (lines[i][2] == "-" or lines[i][2].startswith("- ")):
        n, _, content = lines[i]
        rest = content[1:].lstrip()
        if not rest:
            if i + 1 < len(lines) and lines[i + 1][1] > indent:
                value, i = _block(lines, i + 1, lines[i + 1][1])
            else:
                value, i = None, i + 1
        elif _KEY.match(rest):  # "- key: value": a mapping whose keys line up after the dash
            lines[i] = [n, indent + len(content) - len(rest), rest]
            value, i = _mapping(lines, i, lines[i][1])
        else:
            value, i = _scalar(rest, n), i + 1
        out.append(value)
    return out, i


def _mapping(lines, i, indent):
    out = {}
    while i < len(lines) and lines[i][1] == indent:
        n, _, content = lines[i]
        m = _KEY.match(content)
        if not m:
            raise ValueError(f"line {n}: expected `key: value`: {content}")
        key = _scalar(m.group(1), n)
        if key in out:
            raise ValueError(f"line {n}: duplicate key {key}")
        i += 1
        if m.group(2):
            out[key] = _scalar(m.group(2), n)
        elif i < len(lines) and (lines[i][1] > indent or (lines[i][1] == indent and lines[i][2].startswith("-"))):
            out[key], i = _block(lines, i, lines[i][1])
        else:
            out[key] = None
    return out, i


def _scalar(s: str, n: int):
    if s[0] in "&*!|>" or s.startswith("<<") or (s[0] == "{" and s != "{}"):
        raise ValueError(f"line {n}: outside the YAML subset: {s}")
    if s[0] == '"':
        return json.loads(s)
    if s[0] == "'":
        return s[1:-1].replace("''", "'")
    if s == "{}":
        return {}
    if s[0] == "[":
        if not s.endswith("]"):
            raise ValueError(f"line {n}: unclosed flow list: {s}")
        return [_scalar(item.strip(), n) for item in s[1:-1].split(",") if item.strip()]
    if s in ("true", "false"):
        return s == "true"
    if s in ("null", "~"):
        return None
    return int(s) if re.fullmatch(r"-?\d+", s) else s


def test_yaml_subset_reader():
    text = 'a: 1  # c\nb:\n  - x: "q#"\n    y: [p, \'r\']\n  - 2\nc:\n- k\nd: {}\ne: http://h:9\n'
    assert parse_yaml(text) == {"a": 1, "b": [{"x": "q#", "y": ["p", "r"]}, 2], "c": ["k"], "d": {}, "e": "http://h:9"}
    for bad in ("a: &x 1\n", "a: |\n  t\n", "a: 1\n b: 2\n", "a: 1\na: 2\n"):
        with pytest.raises(ValueError):
            parse_yaml(bad)


# -- the JSON is generate.py's output --------------------------------------------------------------


def test_regenerating_changes_nothing(tmp_path):
    subprocess.run([sys.executable, str(DASH / "generate.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True, timeout=60)
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in JSON_DIR.iterdir()}
    assert fresh.keys() == committed.keys()
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"{stale} differ from generate.py's output: run python dashboards/generate.py"


# -- schema ---------------------------------------------------------------------------------------------


def test_dashboard_identity():
    assert set(DASHBOARDS) == {"memtrain-job", "memtrain-fleet", "memtrain-service"}
    for stem, d in DASHBOARDS.items():
        assert d["uid"] == stem  # fixed, so links survive re-provisioning
        assert d["id"] is None
        assert d["schemaVersion"] >= 39
        assert d["title"].startswith("memtrain — ")
    assert len({d["title"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)


def test_template_variables():
    for uid, d in DASHBOARDS.items():
        v = {var["name"]: var for var in d["templating"]["list"]}
        assert v["datasource"]["type"] == "datasource" and v["datasource"]["query"] == "prometheus"
        # the service dashboard's job/instance are the service's; $jobs is its training jobs' scrape job
        info = "memtrain_service_jobs" if uid == "memtrain-service" else "memtrain_job_info"
        assert v["job"]["query"] == f"label_values({info}, job)"
        assert v["instance"]["query"] == f'label_values({info}{{job=~"$job"}}, instance)'
        if uid == "memtrain-service":
            assert v["jobs"]["query"] == "label_values(memtrain_job_info, job)"
        for name in ("job", "instance"):
            assert v[name]["type"] == "query" and v[name]["datasource"] == DS
        if uid != "memtrain-service":  # a trial array's trials; All also matches a lone job (no trial label)
            assert v["trial"]["query"] == 'label_values(memtrain_job_info{job=~"$job", instance=~"$instance"}, trial)'
            assert v["trial"]["allValue"] == ".*" and v["trial"]["multi"] and v["trial"]["includeAll"]


def test_per_trial_families_are_the_exporters_and_filtered_by_trial():
    """generate.py's TRIAL_FAMILIES are the families a trial array labels by trial (metrics.py), and
    every selector of one (but the joins' memtrain_job_info) filters on $trial; no other does."""
    from memtrain.metrics import PREFIX, _training
    from memtrain.train.state import JobState

    sys.path.insert(0, str(DASH))
    import generate

    kinds = {PREFIX + name + ("_total" if kind == "counter" else "_info" if kind == "info" else "")
             for kind, name, _, _ in _training(JobState())}
    assert generate.TRIAL_FAMILIES == kinds
    for uid, title, expr in _exprs():
        for m in re.finditer(r"\b(memtrain_\w+)\{([^}]*)\}", expr):
            family = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
            filtered = 'trial=~"$trial"' in m.group(2)
            join = m.group(1) == "memtrain_job_info" and expr[:m.start()].rstrip().endswith("group_left (exported_job)")
            assert filtered == (family in generate.TRIAL_FAMILIES and not join and uid != "memtrain-service"), (
                uid, title, m.group())
        if "group_left (exported_job)" in expr:
            assert "on (job, instance, trial) group_left (exported_job)" in expr, (uid, title, expr)


def test_every_panel_and_target_uses_the_datasource_variable():
    for uid, p in _data_panels():
        assert p["datasource"] == DS, (uid, p["title"])
        assert p["targets"], (uid, p["title"])
        for t in p["targets"]:
            assert t["datasource"] == DS, (uid, p["title"], t["refId"])


def test_every_panel_has_a_unit():
    for uid, p in _data_panels():
        assert p["fieldConfig"]["defaults"].get("unit"), (uid, p["title"])


def test_panel_ids_and_grid():
    for d in DASHBOARDS.values():
        ids = [p["id"] for p in _panels(d)]
        assert len(ids) == len(set(ids))
        for p in _panels(d):
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (d["uid"], p["title"], g)


def _calls(expr: str, fn: str):
    """The argument text of every fn(...) call in expr."""
    for m in re.finditer(rf"\b{fn}\(", expr):
        depth, start = 1, m.end()
        for i in range(start, len(expr)):
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            if depth == 0:
                yield expr[start:i]
                break


def test_rate_and_increase_use_rate_interval():
    seen = 0
    for uid, title, expr in _exprs():
        for fn in ("rate", "irate", "increase"):
            for args in _calls(expr, fn):
                seen += 1
                assert args.endswith("[$__rate_interval]"), (uid, title, expr)
        assert set(re.findall(r"\[([^\]]*)\]", expr)) <= {"$__rate_interval"}, (uid, title, expr)
    assert seen


def test_every_selector_is_scoped_to_job_and_instance():
    scope = '{job=~"$job", instance=~"$instance"'
    for uid, title, expr in _exprs():
        for m in re.finditer(r"\bmemtrain_\w+", expr):
            after = expr[m.end():]
            if after.startswith("{"):
                # the service dashboard's per-job series: every training job of the service
                jobs = uid == "memtrain-service" and after.startswith('{job=~"$jobs"')
                assert after.startswith(scope) or jobs, (uid, title, expr)
            else:  # the state set's label, in a matcher or a grouping
                assert m.group() == "memtrain_job_state" and re.match(r'="|\)', after), (uid, title, expr)


# -- ties to the exporter -----------------------------------------------------------------------------


def _documented() -> dict:
    """docs/metrics.md's reference tables: name -> type."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    return dict(re.findall(r"^\| `(memtrain_\w+)` \| (\w+)", text, re.M))


def _referenced() -> set:
    names = set()
    for _, _, expr in _exprs():
        names.update(re.findall(r"\b(memtrain_\w+)\{", expr))
    return names


def test_every_metric_queried_is_documented():
    documented = _documented()
    assert len(documented) > 20  # the doc's tables parsed
    for name in _referenced():
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in documented or documented.get(base) == "histogram", f"{name} is not in docs/metrics.md"


def test_every_documented_metric_is_on_a_dashboard():
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in _referenced()}
    assert set(_documented()) - shown == set()


def test_measured_sources_are_documented():
    text = (ROOT / "docs" / "metrics.md").read_text()
    sources = set(re.findall(r"^\| `(\w+)` \| ", text.split("Sources of `memtrain_memory_measured_bytes`")[1], re.M))
    for _, _, expr in _exprs():
        for m in re.finditer(r'source=~?"([^"]*)"', expr):
            assert set(m.group(1).split("|")) <= sources, expr


# -- provisioning, Prometheus, compose -----------------------------------------------------------------


def _prometheus():
    return parse_yaml((DASH / "prometheus" / "prometheus.yml").read_text())


def test_prometheus_config():
    prom = _prometheus()
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    # the jobs are discovered through the service, which Prometheus scrapes too, with its token
    (sd,) = jobs["memtrain"]["http_sd_configs"]
    assert sd["url"] == "http://memtrain:8470/prometheus/targets"
    assert sd["authorization"]["credentials_file"] == "/run/secrets/memtrain-token"
    assert jobs["memtrain-service"]["static_configs"] == [{"targets": ["memtrain:8470"]}]
    assert jobs["memtrain-service"]["authorization"] == sd["authorization"]
    # The dashboards' `job` variable is the scrape job and the name is read from exported_job:
    # honor_labels would give memtrain_job_info a different `job` from every other series.
    assert not jobs["memtrain"].get("honor_labels", False)
    assert jobs["dcgm"]["static_configs"] == [{"targets": ["dcgm-exporter:9400"]}]


def test_grafana_datasource():
    (ds,) = parse_yaml((DASH / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert (ds["uid"], ds["type"], ds["url"]) == ("prometheus", "prometheus", "http://prometheus:9090")
    assert ds["jsonData"]["timeInterval"] == _prometheus()["global"]["scrape_interval"]


def test_grafana_dashboard_provider_reads_what_compose_mounts():
    (provider,) = parse_yaml((DASH / "provisioning" / "dashboards" / "memtrain.yml").read_text())["providers"]
    assert provider["type"] == "file"
    mounts = re.findall(r"^\s+- \./dashboards/json:(\S+?)(?::ro)?$", (ROOT / "docker-compose.yml").read_text(), re.M)
    assert mounts == [provider["options"]["path"]]


def test_demo_long_job_file_loads():
    """The job to submit to the compose stack's service (docs/dashboards.md): a model that fits its
    (harder, slower to learn) synthetic data set, served on the demo's port."""
    cfg = config.load(DASH / "demo-long.toml")
    demo = config.load(ROOT / "docs" / "example-job.toml")
    n, d, classes = map(int, re.fullmatch(r"synthetic:classification\((.*)\)",
                                          cfg.data.dataset.replace(" ", "")).group(1).split(","))
    sizes = cfg.model_spec().sizes
    assert (sizes[0], sizes[-1]) == (d, classes)
    assert cfg.metrics == demo.metrics


def _compose_config(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MEMTRAIN_", "COMPOSE_"))}
    out = subprocess.run([DOCKER_COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "config"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env={**clean, **env})
    assert out.returncode == 0, out.stderr
    return parse_yaml(out.stdout)


@pytest.mark.skipif(DOCKER_COMPOSE is None,
                    reason="docker-compose not on PATH (Debian: apt-get install docker-compose; .ci/run installs it)")
def test_compose_config():
    c = _compose_config()
    s = c["services"]
    assert set(s) == {"memtrain", "memtrain-cpu", "prometheus", "grafana", "dcgm-exporter"}
    assert s["memtrain"]["command"] == ["memtrain", "serve", "--state-dir", "/runs/service", "--host", "0.0.0.0",
                                        "--token-file", "/run/secrets/memtrain-token", "--devices", "auto",
                                        "--job-metrics-host", "0.0.0.0", "--job-metrics-address", "memtrain"]
    assert s["memtrain"]["deploy"]["resources"]["reservations"]["devices"] == [{**GPU_RESERVATION[0],
                                                                                "count": "all"}]
    assert "profiles" not in s["memtrain"]  # plain `docker compose up` runs it
    cpu = s["memtrain-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    assert cpu["command"][cpu["command"].index("--devices") + 1] == "cpu"
    assert cpu["networks"]["default"]["aliases"] == ["memtrain"]  # the scrape target's name
    assert s["dcgm-exporter"]["profiles"] == ["dcgm"]
    for name in ("memtrain", "memtrain-cpu"):
        assert s[name]["build"]["context"] == str(ROOT)
        assert "runs:/runs:rw" in s[name]["volumes"]
        assert s[name]["command"][s[name]["command"].index("--state-dir") + 1].startswith("/runs/")
        assert [x["source"] for x in s[name]["secrets"]] == ["memtrain-token"]
    assert [x["source"] for x in s["prometheus"]["secrets"]] == ["memtrain-token"]
    assert c["secrets"]["memtrain-token"]["file"] == str(ROOT / "memtrain-token")
    assert "prometheus-data:/prometheus:rw" in s["prometheus"]["volumes"]
    assert f"{DASH}/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in s["prometheus"]["volumes"]
    assert f"{DASH}/provisioning:/etc/grafana/provisioning:ro" in s["grafana"]["volumes"]
    assert s["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert s["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert set(c["volumes"]) == {"runs", "prometheus-data", "grafana-data"}
    ports = [p for svc in s.values() for p in svc.get("ports", [])]
    assert sorted(ports) == ["127.0.0.1:3000:3000/tcp", "127.0.0.1:8470:8470/tcp", "127.0.0.1:8470:8470/tcp",
                             "127.0.0.1:9090:9090/tcp"]  # the service and its CPU variant (one profile at a time)
    for name, svc in s.items():
        if "image" in svc and "build" not in svc:  # pinned: a version tag, never latest
            assert re.search(r":v?\d+\.\d+\.\d+", svc["image"]), (name, svc["image"])


@pytest.mark.skipif(DOCKER_COMPOSE is None,
                    reason="docker-compose not on PATH (Debian: apt-get install docker-compose; .ci/run installs it)")
def test_compose_service_is_where_prometheus_looks():
    """Prometheus discovers jobs at memtrain:8470: the service listens there, with the token file it reads."""
    s = _compose_config()["services"]
    for name in ("memtrain", "memtrain-cpu"):
        cmd = s[name]["command"]
        assert "--port" not in cmd and "8470" in s[name]["expose"]  # the default port, 8470
        assert cmd[cmd.index("--job-metrics-address") + 1] == "memtrain"
        assert cmd[cmd.index("--token-file") + 1] == "/run/secrets/memtrain-token"


def test_demo_long_keeps_learning(tmp_path):
    """Its curves must move on the dashboards: no near-perfect validation accuracy after a few
    epochs (the 64-feature set it replaced was at 1.000 by epoch 2), and still improving."""
    import io

    from memtrain.train.job import run

    data = tomllib.loads((DASH / "demo-long.toml").read_text())
    data["training"].update(epochs=3, batch_size=128)  # the batch auto solves to (max_batch_size), without its probes
    data["device"] = "cpu"
    data.pop("metrics")
    data["output"] = {"dir": str(tmp_path)}
    log = io.StringIO()
    run(config.from_dict(data), log_format="json", progress=False, stream=log, install_signals=False)
    acc = [json.loads(ln)["val_accuracy"] for ln in log.getvalue().splitlines() if '"event": "epoch"' in ln]
    assert len(acc) == 3 and acc[0] < acc[1] < acc[2] < 0.8, acc
