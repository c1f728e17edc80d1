"""Who may talk to the supervisor: loopback by default, a token for anything else.

The token comes from `--token-file` or the `ALEXSERVE_TOKEN` environment
variable. Binding the control socket or the HTTP endpoint to a non-loopback
address without one is refused at start-up; with one, every control request
must carry it, and /metrics wants it as `Authorization: Bearer TOKEN` when the
HTTP endpoint is not on loopback (unless `--metrics-public`). /healthz says
nothing secret and stays open for container health checks.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
from pathlib import Path

from alexserve.contract.names import ENV_TOKEN

MIN_TOKEN_LENGTH = 16


class AuthError(ValueError):
    """A configuration that would expose the supervisor without a usable token."""


def read_token(token_file: Path | None, env: dict[str, str] | None = None) -> str | None:
    """The token from the file (first line) or the environment; None when neither is set."""
    env = os.environ if env is None else env
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as err:
            raise AuthError(f"{token_file}: cannot read token: {err.strerror}") from None
        if not token:
            raise AuthError(f"{token_file}: the token file is empty")
    else:
        token = env.get(ENV_TOKEN, "").strip() or None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise AuthError(f"the token must be at least {MIN_TOKEN_LENGTH} characters")
    return token


def tokens_match(expected: str | None, given: object) -> bool:
    """True when no token is required or `given` is it; anything else (not a string, not UTF-8) is False."""
    if expected is None:
        return True
    if not isinstance(given, str):
        return False
    # surrogatepass: JSON can carry a lone surrogate ("\\udc80"), which strict UTF-8 cannot encode.
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


def is_loopback_host(host: str) -> bool:
    """True when every address `host` names is a loopback one ('*', '0.0.0.0', '' are not)."""
    host = host.strip("[]")
    if host in ("", "*", "0.0.0.0", "::"):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def zmq_endpoint_host(endpoint: str) -> str | None:
    """The host of a tcp:// endpoint; None for ipc:// and inproc:// (local by construction)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return None
    if not endpoint.startswith("tcp://"):
        raise AuthError(f"control endpoint {endpoint!r}: use tcp://HOST:PORT or ipc://PATH")
    rest = endpoint[len("tcp://") :]
    host, sep, _port = rest.rpartition(":")
    if not sep:
        raise AuthError(f"control endpoint {endpoint!r} has no port")
    return host.split(";")[-1]


def check_binds(control_addr: str, metrics_host: str, token: str | None) -> None:
    """Refuses (AuthError) any non-loopback bind when there is no token."""
    exposed = []
    host = zmq_endpoint_host(control_addr)
    if host is not None and not is_loopback_host(host):
        exposed.append(f"control {control_addr}")
    if not is_loopback_host(metrics_host):
        exposed.append(f"metrics {metrics_host}")
    if exposed and token is None:
        raise AuthError(
            f"refusing to bind {' and '.join(exposed)} (not loopback) without an auth token: "
            f"set {ENV_TOKEN} or pass --token-file"
        )
