"""RayExecutor: each job attempt is one named Ray actor that runs the worker process.

Ray places the actor by the resources its plan asks for (launch/resources.py: Ray
`memory` on the CPU, a fraction of a GPU on a GPU); the actor, on the node Ray chose,
starts the same `python -m memtrain.launch.worker LAUNCH.json` the local executor
starts, with stdout/stderr appended to the job's log on the shared storage, and
reports how it ended. Cancel asks the actor to send SIGTERM (the job checkpoints,
then exits 0). When the actor dies with its node or Ray worker, poll() reports
Exit(code=None, signal=SIGKILL, reason="ray: ... died ..."), and the caller may start
the job again: it resumes from its last checkpoint on the storage.

Ray is an optional extra (`pip install 'memtrain[ray]'`); `import memtrain` does not
import this module.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from memtrain.errors import MemtrainError
from memtrain.launch.executor import Exit, Handle, Launch
from memtrain.launch.resources import THREAD_VARS, check_fits, ray_options

NAMESPACE = "memtrain"
INSTALL_HINT = "--executor ray needs Ray, which is not installed: pip install 'memtrain[ray]'"


class RayMissing(MemtrainError):
    """`--executor ray` without Ray installed."""


def import_ray():
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise RayMissing(INSTALL_HINT) from None
    return ray


# -- on the node: the actor ---------------------------------------------------------------


def _die_with_parent():
    """In the worker child, before exec: SIGKILL it when the actor's process dies, so a
    lost node or Ray worker leaves no job writing to the storage behind Ray's back
    (Linux prctl PR_SET_PDEATHSIG, which fires when the forking thread ends: the
    actor's main thread, which runs __init__ and lives as long as the actor; elsewhere
    a no-op)."""
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


class JobActor:
    """One attempt of one job on the node Ray placed it on. The worker process starts in
    __init__ (so Ray's admission is the job's start); wait() blocks until it exits
    while info() and terminate() answer meanwhile (the actor is threaded)."""

    def __init__(self, launch: dict, attempt: str):
        import ray  # noqa: PLC0415

        ctx = ray.get_runtime_context()
        self.info_ = {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                      "attempt": attempt, "pid": None, "started_at": None, "ended_at": None}
        run_dir = Path(launch["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        launch_path = run_dir / f"launch-{attempt}.json"
        launch_path.write_text(json.dumps(launch, indent=1))
        env = {**os.environ, **{k: str(v) for k, v in launch.get("env", {}).items()}}
        if "CUDA_VISIBLE_DEVICES" in os.environ:  # Ray's choice of GPU for this actor wins
            env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
        threads = str(max(1, int(launch["resources"]["num_cpus"])))
        for var in THREAD_VARS:  # the actor holds num_cpus CPUs: the job's BLAS uses that many
            env[var] = str(launch.get("env", {}).get(var, threads))
        Path(launch["log_path"]).parent.mkdir(parents=True, exist_ok=True)
        self.log_path = launch["log_path"]
        with open(self.log_path, "ab") as log:
            self.info_["started_at"] = time.time()
            self.proc = subprocess.Popen([sys.executable, "-m", "memtrain.launch.worker", str(launch_path)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         cwd=str(run_dir), start_new_session=True, preexec_fn=_die_with_parent)
        self.info_["pid"] = self.proc.pid
        self.lock = threading.Lock()

    def info(self) -> dict:
        return dict(self.info_)

    def wait(self) -> dict:
        code = self.proc.wait()
        with self.lock:
            if self.info_["ended_at"] is None:
                self.info_["ended_at"] = time.time()
        sig = -code if code < 0 else None
        reason = None if code == 0 else f"killed by {signal.Signals(sig).name}" if sig else last_error_line(
            self.log_path)
        return {**self.info(), "code": None if sig else code, "signal": sig, "reason": reason}

    def terminate(self) -> bool:
        """SIGTERM to the worker's process group: it checkpoints, then exits 0."""
        if self.proc.poll() is not None:
            return False
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True


def last_error_line(path, tail_bytes: int = 65536) -> str | None:
    """The last `error: ...` line of a job's log (the worker's one-line error), else its
    last non-JSON line (a traceback's final line), else None."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    plain = [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("{")]
    errors = [x for x in plain if x.startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    return plain[-1] if plain else None


# -- on the caller's side ----------------------------------------------------------------------


class RayExecutor:
    """The Executor protocol on a Ray cluster (see memtrain/launch/executor.py).

    address: None (RAY_ADDRESS, else the cluster `ray start` started on this machine,
    else a new local instance), "auto" (a running cluster, or ConnectionError),
    "local" (always a new local instance) or "host:port". When Ray is already
    initialised in this process (a test, a notebook) the executor uses that connection
    and leaves it open on close(). detached: actors outlive this process (the service
    sets it, so a restarted service adopts its running jobs); otherwise they end with
    it. accelerator_type pins GPU jobs to one GPU model (docs/cluster.md)."""

    name = "ray"
    admits = True  # Ray starts a job when a node has its resources: callers hand over every job at once

    def __init__(self, address: str | None = None, *, detached: bool = False, accelerator_type: str | None = None,
                 init_kwargs: dict | None = None):
        self.ray = import_ray()
        self.detached = detached
        self.accelerator_type = accelerator_type
        self._owns = False
        if not self.ray.is_initialized():
            _check_reachable(address)
            try:
                self.ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="error",
                              **(init_kwargs or {}))
            except ConnectionError:  # "auto" with no cluster running
                raise MemtrainError(f"--ray-address {address}: no running Ray cluster found; start one "
                                    "(ray start --head) or give its host:port") from None
            self._owns = True
        self._actors = {}  # Handle.ref -> actor handle
        self._waits = {}  # Handle.ref -> ObjectRef of JobActor.wait()
        self._infos = {}  # Handle.ref -> ObjectRef of JobActor.info() (ready once the actor started)
        self._details = {}  # Handle.ref -> what the actor reported (node, pid, start/end times)
        self._ended = {}  # Handle.ref -> Exit

    # -- placement ---------------------------------------------------------------------------

    def options(self, launch: Launch) -> dict:
        """The Ray resources the job's plan asks for (no Ray call)."""
        return ray_options(launch.resources, launch.device, self.accelerator_type)

    def largest_memory(self) -> int:
        """The largest Ray `memory` resource of an alive node that can run jobs (has a
        CPU): what one CPU job may plan."""
        return max((int(n["Resources"].get("memory", 0)) for n in self.ray.nodes()
                    if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1), default=0)

    def start(self, launch: Launch) -> Handle:
        """Create the job's actor; Ray starts it once a node has its resources free.
        Raises NeverFits when no node of the cluster could ever hold the request."""
        opts = self.options(launch)
        check_fits(opts, self.ray.nodes(), what=launch.job_id)
        data = launch.to_dict()
        data["run_dir"], data["log_path"] = (os.path.abspath(data["run_dir"]), os.path.abspath(data["log_path"]))
        if launch.device.startswith("cuda"):
            data["config"] = {**data["config"], "device": "cuda:0"}  # the one GPU Ray made visible to the actor
        attempt = uuid.uuid4().hex[:8]
        ref = f"{launch.job_id}:{attempt}"
        actor = self.ray.remote(JobActor).options(
            name=ref, namespace=NAMESPACE, lifetime="detached" if self.detached else None, max_concurrency=4,
            max_restarts=0, **opts).remote(data, attempt)
        self._track(ref, actor)
        target = None if launch.metrics_port is None else f"{launch.metrics_host}:{launch.metrics_port}"
        return Handle(job_id=launch.job_id, executor=self.name, ref=ref, metrics_target=target)

    def _track(self, ref, actor):
        self._actors[ref] = actor
        self._waits[ref] = actor.wait.remote()
        self._infos[ref] = actor.info.remote()

    # -- watching ------------------------------------------------------------------------------

    def poll(self, handle: Handle) -> Exit | None:
        if handle.ref in self._ended:
            return self._ended[handle.ref]
        if handle.ref not in self._waits:
            raise KeyError(f"{handle.ref}: not started by this executor; adopt() it first")
        wait_ref = self._waits[handle.ref]
        ready, _ = self.ray.wait([wait_ref], timeout=0)
        if not ready:
            return None
        try:
            result = self.ray.get(wait_ref)
        except self.ray.exceptions.ActorUnavailableError:
            # its node stopped answering: it may come back, so the job is not over until
            # Ray declares the actor dead (starting it again now could make two writers)
            self._waits[handle.ref] = self._actors[handle.ref].wait.remote()
            return None
        except self.ray.exceptions.RayError as exc:
            if getattr(exc, "actor_init_failed", False):  # e.g. the storage is not writable there: not retried
                ended = Exit(code=1, signal=None, reason=_died_reason(exc, retry=False))
            else:  # its node or Ray worker died, or Ray's memory monitor killed it (the node ran low on memory)
                ended = Exit(code=None, signal=int(signal.SIGKILL), reason=_died_reason(exc))
        else:
            self._details[handle.ref] = result
            ended = Exit(code=result["code"], signal=result["signal"], reason=result["reason"])
        self._ended[handle.ref] = ended
        self._release(handle.ref)
        return ended

    def running(self, handle: Handle) -> bool:
        """Whether Ray has placed and started the job (False while it waits for resources)."""
        ref = self._infos.get(handle.ref)
        return ref is not None and bool(self.ray.wait([ref], timeout=0)[0])

    def details(self, handle: Handle) -> dict | None:
        """node_id, node_ip, pid, started_at, ended_at (epoch seconds) once known."""
        if handle.ref in self._details:
            return self._details[handle.ref]
        if handle.ref in self._infos and self.running(handle):
            try:
                return self.ray.get(self._infos[handle.ref])
            except self.ray.exceptions.RayActorError:
                return None
        return None

    def metrics_target(self, handle: Handle, port: int | None) -> str | None:
        """node_ip:port for Prometheus once the job runs (the job must bind a reachable
        host, e.g. metrics.host = "0.0.0.0", on a multi-node cluster)."""
        d = self.details(handle)
        return None if d is None or port is None else f"{d['node_ip']}:{port}"

    # -- stopping ------------------------------------------------------------------------------

    def cancel(self, handle: Handle) -> None:
        """A started job gets SIGTERM (checkpoint, exit 0); one still waiting for
        resources is removed from Ray's queue and ends as cancelled."""
        actor = self._actors.get(handle.ref)
        if actor is None or handle.ref in self._ended:
            return
        if self.running(handle):
            actor.terminate.remote()
            return
        self.ray.kill(actor, no_restart=True)
        self._ended[handle.ref] = Exit(code=None, signal=None, reason="cancelled before Ray started it")
        self._release(handle.ref)

    def kill(self, handle: Handle) -> None:
        """No checkpoint: the actor and (through its death signal) the worker are killed."""
        actor = self._actors.get(handle.ref)
        if actor is not None:
            self.ray.kill(actor, no_restart=True)

    def adopt(self, handle: Handle) -> bool:
        """After the caller restarted: True when the attempt's actor is still alive (a
        detached one); poll/cancel then work on it."""
        try:
            actor = self.ray.get_actor(handle.ref, namespace=NAMESPACE)
            self.ray.get(actor.info.remote(), timeout=30)
        except (ValueError, self.ray.exceptions.RayError):
            return False
        self._track(handle.ref, actor)
        return True

    def _release(self, ref):
        """Free the attempt's Ray resources: a detached actor lives until killed."""
        actor = self._actors.pop(ref, None)
        self._waits.pop(ref, None)
        self._infos.pop(ref, None)
        if actor is not None:
            try:
                self.ray.kill(actor, no_restart=True)
            except self.ray.exceptions.RayError:
                pass

    def close(self) -> None:
        self._actors.clear()
        self._waits.clear()
        self._infos.clear()
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
            self._owns = False


def _check_reachable(address, timeout_s: float = 5.0) -> None:
    """Ray retries an unreachable head for minutes (and ignores SIGTERM meanwhile):
    a host:port that refuses a TCP connection is answered at once instead."""
    addr = address if address is not None else os.environ.get("RAY_ADDRESS")
    if not addr or addr in ("auto", "local") or "://" in addr:
        return
    host, _, port = addr.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except ValueError:
        raise MemtrainError(f"--ray-address: expected host:port, auto or local, got {addr!r}") from None
    except OSError as exc:
        raise MemtrainError(f"--ray-address {addr}: no Ray cluster answers there "
                            f"({exc.strerror or type(exc).__name__})") from None


def _died_reason(exc, retry: bool = True) -> str:
    """One line from Ray's multi-line error: why the actor (with its node or Ray worker)
    went away, e.g. "The actor died because its node has died. Node Id: ..." or "1
    worker(s) were killed due to the node running low on memory. ..."."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    lines = [x for x in lines if x != "The actor died unexpectedly before finishing this task."]  # says no why
    why = [x for x in lines if any(w in x.lower() for w in ("because", "killed", "died", "dead"))]
    line = why[0] if why else lines[0] if lines else type(exc).__name__
    return "ray: " + line + (" (the job may resume from its checkpoint)" if retry else "")
