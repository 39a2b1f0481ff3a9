"""Opening Redis connections with errors that name the server (never its password)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis

from workers import defaults
from workers.errors import RsampleError


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, for logs, status output and dataset cards."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def connect(url: str) -> redis.Redis:
    """A client for `url` that has answered a PING: an unreachable server fails here, in one line."""
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=defaults.REDIS_CONNECT_TIMEOUT, health_check_interval=30
        )
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, ValueError) as exc:
        raise RsampleError(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    except redis.AuthenticationError as exc:
        raise RsampleError(f"Redis at {redact_url(url)} refused the credentials: {exc}") from None
    return client
