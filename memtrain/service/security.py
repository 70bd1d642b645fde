"""Who may talk to the service and how much they may ask of it: the bind rule, the bearer
token, the body size limit, the time to send a request, a job's run-time bound."""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from memtrain.errors import MemtrainError

MAX_BODY = 1024 * 1024  # 1 MiB: a job file is a few hundred bytes
REQUEST_TIMEOUT = 10.0  # seconds to send a whole request, headers and body (slow_clients.py)
MAX_RUNTIME = 86400.0  # seconds: a job's training.max_runtime when it sets none, and the most it may set


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path) -> str | None:
    """The token in --token-file (its first line, whitespace stripped), or None without a file."""
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise MemtrainError(f"--token-file: cannot read {path}: {exc.strerror or exc}") from None
    if len(token) < 16:
        raise MemtrainError(f"--token-file: {path} holds {len(token)} characters; expected a token of at least 16")
    return token


def check_bind(host: str, token: str | None) -> None:
    if not is_loopback(host) and token is None:
        raise MemtrainError(f"--host {host}: binding beyond this machine needs --token-file (anyone who can reach "
                            "the port could run jobs)")


def token_ok(expected: str | None, header: str | None) -> bool:
    if expected is None:
        return True
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), expected.encode())
