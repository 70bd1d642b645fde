"""Who may talk to the service and how much they may ask of it: the bind rule, the bearer
tokens (one per user), the body size limit, the time to send a request, a job's run-time bound.

The token file (--token-file) is either one token (the whole file: every request is user
"default"), or one line per user, `NAME TOKEN [QUOTA]` (blank lines and `#` comments
skipped), where QUOTA overrides --user-quota for that user (docs/service.md).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from memtrain.errors import MemtrainError
from memtrain.units import parse_bytes

MAX_BODY = 1024 * 1024  # 1 MiB: a job file is a few hundred bytes
REQUEST_TIMEOUT = 10.0  # seconds to send a whole request, headers and body (slow_clients.py)
MAX_RUNTIME = 86400.0  # seconds: a job's training.max_runtime when it sets none, and the most it may set
DEFAULT_USER = "default"  # the user of every job without per-user tokens
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class Tokens:
    """token -> user name, and the per-user quota overrides (bytes) the file gives."""

    users: dict
    quotas: dict = field(default_factory=dict)

    @classmethod
    def single(cls, token: str) -> "Tokens":
        return cls({token: DEFAULT_USER})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_tokens(path) -> Tokens | None:
    """The tokens in --token-file (see the module's docstring), or None without a file."""
    if path is None:
        return None
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise MemtrainError(f"--token-file: cannot read {path}: {exc.strerror or exc}") from None
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) == 1 and len(lines[0][1]) == 1:  # the single shared token of earlier versions
        return Tokens.single(_token(lines[0][1][0], f"{path}"))
    if not lines:
        raise MemtrainError(f"--token-file: {path} is empty; expected a token, or lines 'NAME TOKEN [QUOTA]'")
    users, quotas = {}, {}
    for n, fields in lines:
        where = f"{path} line {n}"
        if len(fields) not in (2, 3) or not _NAME.fullmatch(fields[0]):
            raise MemtrainError(f"--token-file: {where}: expected 'NAME TOKEN [QUOTA]' (NAME: letters, digits, "
                                "'.', '_', '-')")
        name, token = fields[0], _token(fields[1], where)
        if token in users or name in users.values():
            raise MemtrainError(f"--token-file: {where}: {'user ' + name if name in users.values() else 'token'} "
                                "given twice; expected one line per user, each with its own token")
        users[token] = name
        if len(fields) == 3:
            quotas[name] = parse_bytes(fields[2], f"--token-file: {where}: quota")
    return Tokens(users, quotas)


def _token(token: str, where: str) -> str:
    if len(token) < 16:
        raise MemtrainError(f"--token-file: {where} holds a token of {len(token)} characters; expected at least 16")
    return token


def check_bind(host: str, tokens: Tokens | None) -> None:
    if not is_loopback(host) and tokens is None:
        raise MemtrainError(f"--host {host}: binding beyond this machine needs --token-file (anyone who can reach "
                            "the port could run jobs)")


def user_of(tokens: Tokens | None, header: str | None) -> str | None:
    """The user whose token the Authorization header carries; None: no token of this service.
    Without tokens every request is the default user."""
    if tokens is None:
        return DEFAULT_USER
    if not header or not header.startswith("Bearer "):
        return None
    sent = header[len("Bearer "):].strip().encode()
    found = None
    for token, user in tokens.users.items():  # every token compared, in constant time each
        if hmac.compare_digest(sent, token.encode()):
            found = user
    return found


def token_ok(tokens: Tokens | None, header: str | None) -> bool:
    """Whether the Authorization header carries a token of this service (any user's)."""
    return user_of(tokens, header) is not None
