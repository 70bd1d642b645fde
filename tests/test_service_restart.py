"""Restart safety: `kill -9` of the service with 3 jobs running and 2 queued; started again on
the same state dir, every job finishes, with parameters bit-identical to `memtrain train` of
the same job alone."""

import json
import os
import subprocess
import sys
import time

import numpy as np
from service_helpers import ProcessServer, digits_job, request, wait_for


def toml(job: dict, out_dir) -> str:
    lines = [f'name = "{job["name"]}"', f"seed = {job['seed']}"]
    for section in ("model", "optimizer", "training"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in job[section].items()]
    lines += ["[checkpoint]", f'dir = "{out_dir}/ckpt"', "[output]", f'dir = "{out_dir}/out"']
    return "\n".join(lines) + "\n"


def test_kill_9_with_3_running_and_2_queued_then_restart(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    args = ["--max-jobs-per-device", "3", "--budget", "cpu=4GiB"]
    server = ProcessServer(state, *args).start()
    # 24 epochs (~3 s of training here): long enough that the three running jobs overlap past
    # their staggered starts and the list's one-second progress slack (8 epochs missed it 1 in 3)
    jobs = [digits_job(f"r{i}", epochs=24, batch=8, seed=i % 2) for i in range(5)]
    try:
        ids = [request(server.url, "POST", "/jobs", j)[1]["id"] for j in jobs]
        deadline = time.time() + 60
        while True:
            listed = request(server.url, "GET", "/jobs")[1]
            running = [j for j in listed if j["state"] == "running" and (j["progress"].get("epoch") or 0) >= 1]
            if len(running) == 3:
                break
            assert time.time() < deadline, [(j["state"], j["progress"]) for j in listed]
            time.sleep(0.1)
        assert [j["state"] for j in listed].count("queued") == 2
    except BaseException:  # a failed wait must not leave the service running into later tests
        server.stop()
        raise
    server.kill9()
    time.sleep(0.5)  # the jobs run on without their service
    server = ProcessServer(state, *args, port=server.port).start()
    try:
        done = [wait_for(server.url, i, ("succeeded", "failed", "cancelled"), timeout=120) for i in ids]
    finally:
        server.stop()
    assert [d["state"] for d in done] == ["succeeded"] * 5, [d["reason"] for d in done]
    assert all(d["attempts"] == 1 for d in done)  # re-adopted or started once: nothing ran twice

    # the same jobs alone, with `memtrain train` (one BLAS thread, as the service gave them)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for seed in (0, 1):
        ref = tmp_path / f"alone{seed}"
        ref.mkdir()
        (ref / "job.toml").write_text(toml(jobs[seed], ref))
        r = subprocess.run([sys.executable, "-m", "memtrain.cli", "train", str(ref / "job.toml"), "--log-format",
                            "json"], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        with np.load(ref / "out" / "model-final.npz") as alone:
            for d, job in zip(done, jobs):
                if job["seed"] != seed:
                    continue
                with np.load(d["result"]["model"]) as served:
                    keys = [k for k in alone.files if not k.startswith("meta")]
                    assert keys and set(keys) <= set(served.files)
                    for k in keys:
                        assert np.array_equal(alone[k], served[k]), (d["id"], k)
