"""`memtrain serve`: settings from the command line, checks that refuse to start, uvicorn."""

from __future__ import annotations

import socket
from pathlib import Path

from memtrain.errors import MemtrainError
from memtrain.service import security
from memtrain.units import format_bytes


def settings_from(*, state_dir, host, port, devices, budgets, token_file, data_roots, max_jobs_per_device,
                  head_wait, max_attempts, overhead, job_metrics_host="127.0.0.1", job_metrics_address=None,
                  executor="local", ray_address=None, storage=None, max_runtime=security.MAX_RUNTIME,
                  request_timeout=security.REQUEST_TIMEOUT, recover=False, keep_checkpoints=10,
                  keep_checkpoints_hours=24.0, user_quota=None):
    from memtrain.service.core import Settings  # noqa: PLC0415
    from memtrain.service.devices import parse_devices  # noqa: PLC0415 - with Settings: loaded when serve runs

    tokens = security.read_tokens(token_file)
    security.check_bind(host, tokens)
    parse_devices(devices)  # a bad --devices fails before Service creates the state dir
    state = Path(state_dir).absolute()  # workers run in their own directories: a relative path would not reach them
    if state.exists() and not state.is_dir():
        raise MemtrainError(f"--state-dir: {state} is not a directory")
    if storage is not None and Path(storage).exists() and not Path(storage).is_dir():
        raise MemtrainError(f"--storage: {storage} is not a directory")
    if executor == "ray" and devices not in ("auto", "cpu"):
        raise MemtrainError(f"--devices {devices}: with --executor ray the service places CPU jobs on the cluster "
                            "(auto or cpu); GPU jobs on Ray: memtrain sweep --executor ray")
    return Settings(state_dir=state, host=host, port=port, devices=devices, budgets=dict(budgets), token=tokens,
                    data_roots=tuple(str(Path(r).resolve()) for r in data_roots),
                    max_jobs_per_device=max_jobs_per_device, head_wait=head_wait, max_attempts=max_attempts,
                    cpu_overhead=overhead, job_metrics_host=job_metrics_host,
                    job_metrics_address=job_metrics_address, executor=_executor(executor, ray_address),
                    storage=None if storage is None else Path(storage), max_runtime=max_runtime,
                    request_timeout=request_timeout, recover=recover, keep_checkpoints=keep_checkpoints,
                    keep_checkpoints_hours=keep_checkpoints_hours, user_quota=user_quota)


def _executor(name: str, address: str | None):
    """None: the service's default (LocalExecutor). Ray: detached actors, so a restarted service
    re-adopts the jobs still running (on a cluster that outlived it)."""
    if name != "ray":
        return None
    from memtrain.launch.ray import RayExecutor  # noqa: PLC0415 - Ray is an optional extra

    return RayExecutor(address, detached=True)


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise MemtrainError(f"--port {port}: cannot listen on {host} ({exc.strerror or exc})") from None


def run(*, log_level="info", echo=print, **options) -> None:
    settings = settings_from(**options)
    import uvicorn  # noqa: PLC0415

    from memtrain.service.app import create_app  # noqa: PLC0415
    from memtrain.service.core import Service  # noqa: PLC0415

    try:
        service = Service(settings)  # first: it refuses a state dir another service uses
    except BaseException:
        if settings.executor is not None:
            settings.executor.close()
        raise
    for line in service.recovered:
        echo(f"recover   {line}")
    check_port(settings.host, settings.port)
    ex = settings.executor
    for d in service.devices:
        at_once = (f"{ex.name} runs as many at once as its nodes' memory holds" if getattr(ex, "admits", False)
                   else f"{d.max_jobs} job(s) at once")
        echo(f"device    {d.name}: budget {format_bytes(d.budget_bytes)} ({d.budget_source}); per-process "
             f"overhead {format_bytes(d.overhead_bytes)} ({d.overhead_source}); {at_once}, "
             f"{d.threads_per_job} BLAS thread(s) each")
    _say_users(settings, echo)
    echo(f"serving   http://{settings.host}:{settings.port}/ (API docs at /docs; state in {settings.state_dir})")
    uvicorn.Server(uvicorn_config(create_app(settings, service), settings, log_level=log_level)).run()


def uvicorn_config(app, settings, **options):
    """uvicorn's settings for the service (its tests start it with the same): each request must
    arrive in full within settings.request_timeout seconds, and the GETs the view cache holds are
    answered by the protocol itself (app.Replies)."""
    import uvicorn  # noqa: PLC0415

    from memtrain.service.slow_clients import protocol  # noqa: PLC0415 - uvicorn's httptools protocol

    return uvicorn.Config(app, host=settings.host, port=settings.port,
                          http=protocol(settings.request_timeout, getattr(app.state, "replies", None)), **options)


def _say_users(settings, echo) -> None:
    """Who the users are and what each may commit: said at start when there is more than the one
    default user, or a quota."""
    tokens = settings.token
    users = sorted(tokens.users.values()) if tokens else [security.DEFAULT_USER]
    overrides = tokens.quotas if tokens else {}
    if len(users) == 1 and settings.user_quota is None and not overrides:
        return
    each = format_bytes(settings.user_quota) if settings.user_quota is not None else "no limit"
    extra = ", ".join(f"{u}: {format_bytes(b)}" for u, b in sorted(overrides.items()))
    echo(f"users     {', '.join(users)} (by token); quota of committed memory: {each} each"
         + (f" ({extra})" if extra else ""))
