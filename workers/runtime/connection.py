"""Opening Redis connections: fail fast on a wrong URL, then ride out outages instead of dying."""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from rsample.workers.common import defaults
from rsample.workers.common.errors import RsampleError, first_line

log = logging.getLogger(__name__)

REDIS_URL_ENV = "RSAMPLE_REDIS_URL"
"""Where every command finds the run's Redis when --redis-url is not given; supervised workers get it only here,
so no password shows in `ps`."""


URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(?P<password>[^\s/]*)(?P<at>@)")
"""A password inside a URL (scheme://user:PASSWORD@host), wherever the URL stands in a longer text."""
HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
"""A Hugging Face access token."""


QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#\s]*")
"""A password given as a URL's query argument (`redis://host/0?password=...`), which redis-py takes."""


def redact_secrets(text: str) -> str:
    """`text` with every URL password and Hugging Face token replaced by ***: for anything shown or stored."""
    return HF_TOKEN.sub("hf_***", QUERY_PASSWORD.sub(r"\1***", URL_PASSWORD.sub(r"\g<head>***\g<at>", text)))


MISTYPED_URL_PASSWORD = re.compile(r"^(?P<head>[^@\s]*?:)(?P<password>[^@\s]*)(?P<at>@)")
"""What may be a password in a URL that does not parse (its scheme left out, cut or doubled, `:pw@host`, `redis//:pw@`,
`redis:://:pw@`; a password with an unencoded `/`): from the first colon to the at sign."""


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, for logs, status output and dataset cards; a mistyped URL too (the
    error that says it is wrong shows it)."""
    url = QUERY_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            host = parts.hostname or ""
            host = f"[{host}]" if ":" in host else host  # IPv6
            if parts.port:  # raises for a port that is no number
                host = f"{host}:{parts.port}"
            return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    except ValueError:
        pass
    return MISTYPED_URL_PASSWORD.sub(r"\g<head>***\g<at>", url)


def _without_the_password(text: str, url: str) -> str:
    """An error's text about `url` without anything of it that `redact_url` hides (redis-py's "Port could not be cast to
    integer value as '<the password>'")."""
    for secret in {match.group("password") for match in (MISTYPED_URL_PASSWORD.search(url), URL_PASSWORD.search(url)) if match}:
        for piece in {secret, *re.split(r"[/:]", secret)}:
            if len(piece) >= 3:
                text = text.replace(piece, "***")
    return redact_secrets(text)


FULL_REDIS = ("it is full: maxmemory reached under maxmemory-policy noeviction; free memory or raise maxmemory (rsample's "
              "keys need noeviction: an evicting policy drops the run's queues)")
"""What to do when Redis refuses writes for want of memory (a shared Redis that other tenants filled)."""


def is_full_redis(error: Exception) -> bool:
    """Redis 6 reports a full Redis met inside a script as a plain script error (`... -OOM command not allowed ...`)."""
    return isinstance(error, redis.exceptions.OutOfMemoryError) or (
        isinstance(error, redis.exceptions.ResponseError) and "OOM command not allowed" in str(error))


def describe_redis_error(error: Exception) -> str:
    return FULL_REDIS if is_full_redis(error) else first_line(error)


class PatientRetry(Retry):
    """Retries connection errors forever with capped backoff; says once that it waits, and once that Redis is back.

    A full Redis is waited out too: it refuses a command, or a whole MULTI/EXEC, before running any of it, and a script
    at its first write, before any change (rsample's scripts write first what makes them once-only), so the retry does
    it once; rsample's pipelines without MULTI only read. Other errors of Redis's are not retried."""

    def __init__(self, url: str):
        super().__init__(ExponentialBackoff(cap=defaults.REDIS_RETRY_BACKOFF_CAP, base=0.2), retries=-1)
        self.update_supported_errors([redis.exceptions.OutOfMemoryError, redis.exceptions.ResponseError])
        self.url = redact_url(url)

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        def retryable(error: Exception) -> bool:
            if isinstance(error, redis.exceptions.ResponseError) and not is_full_redis(error):
                return False  # a wrong command, or NOSCRIPT (which redis-py's script object answers by loading it)
            return is_retryable(error) if is_retryable is not None else True

        return self._patiently(do, fail, retryable, with_failure_count)

    def _patiently(self, do, fail, is_retryable, with_failure_count):
        waited = False

        def announce_and_fail(error, *count):
            nonlocal waited
            if not waited:
                log.warning("waiting for Redis at %s (%s)", self.url, describe_redis_error(error))
                waited = True
            return fail(error, *count)

        result = super().call_with_retry(do, announce_and_fail, is_retryable, with_failure_count)
        if waited:
            log.warning("Redis at %s is back", self.url)
        return result


def _check_database(url: str) -> None:
    """redis-py reads a database it cannot parse (`/3x`, `/abc`) as 0: a typo put a run in another tenant's database."""
    parsed = urlsplit(url)
    database = unquote(parsed.path).replace("/", "")  # as redis-py reads it; a `db` in the query wins over the path
    if (parsed.scheme in ("redis", "rediss") and database and "db" not in parse_qs(parsed.query)
            and not re.fullmatch(r"\d+", database, re.ASCII) and "@" not in database):  # "@": a password with an
        # unencoded "/", which the connection's own error names
        raise RsampleError(f"the Redis URL {redact_url(url)} names database {database!r}, which is no number "
                           "(redis://host:port/N; 0 without one)")


def connect(url: str, patient: bool = True, wait_seconds: float = 0) -> redis.Redis:
    """A client for `url` that has answered a PING: an unreachable server fails here, in one line.

    With `patient`, later commands wait through Redis restarts (workers, coordinator); without it they
    fail at once (status, enqueue). `wait_seconds`: how long a server that cannot be reached (not one that refuses
    the credentials) is waited for first, as a worker started beside a Redis that is restarting needs.
    """
    _check_database(url)
    try:
        probe = redis.Redis.from_url(url, socket_connect_timeout=defaults.REDIS_CONNECT_TIMEOUT, retry=Retry(ExponentialBackoff(), 0))
        deadline, said = time.monotonic() + wait_seconds, False
        while True:
            try:
                probe.ping()
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if isinstance(exc, redis.AuthenticationError) or time.monotonic() >= deadline:
                    raise
                if not said:
                    log.warning("waiting up to %g s for Redis at %s (%s)", wait_seconds, redact_url(url), describe_redis_error(exc))
                    said = True
                time.sleep(0.5)
        probe.close()
    except redis.AuthenticationError as exc:
        if urlsplit(url).password is None and "password=" not in urlsplit(url).query:
            raise RsampleError(f"Redis at {redact_url(url)} asks for a password, which the URL does not give "
                               "(redis://:PASSWORD@host:port/db)") from None
        raise RsampleError(f"Redis at {redact_url(url)} refused the credentials: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, ValueError) as exc:
        raise RsampleError(f"cannot reach Redis at {redact_url(url)}: {_without_the_password(str(exc), url)}") from None
    except redis.ResponseError as exc:
        raise RsampleError(f"Redis at {redact_url(url)} refused the connection: {exc}") from None
    except redis.RedisError as exc:  # another server on that port (an HTTP proxy's "400 Bad Request")
        raise RsampleError(f"no Redis answers at {redact_url(url)} (another kind of server?): "
                           f"{_without_the_password(first_line(exc), url)}") from None
    retry = PatientRetry(url) if patient else Retry(ExponentialBackoff(), 0)
    return redis.Redis.from_url(url, socket_connect_timeout=defaults.REDIS_CONNECT_TIMEOUT, health_check_interval=30, retry=retry)


def eviction_policy(client: redis.Redis) -> str | None:
    """The policy by which a memory-capped Redis drops keys when full (None: it refuses writes instead, or has no cap,
    or does not say): an evicting one may drop a run's queues and counters."""
    try:
        memory = client.info("memory")
    except redis.RedisError:  # a managed Redis may refuse INFO
        return None
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    return policy if int(memory.get("maxmemory", 0) or 0) > 0 and policy != "noeviction" else None


def memory_line(client: redis.Redis) -> str | None:
    """What a Redis holds against its cap, for `rsample status`: a full Redis stalls a run (the window of prompts in
    flight is what a run needs, see `--max-in-flight`). None where the Redis does not say (a managed one may refuse INFO)."""
    try:
        memory = client.info("memory")
    except redis.RedisError:
        return None
    used, cap = int(memory.get("used_memory", 0) or 0), int(memory.get("maxmemory", 0) or 0)
    if not cap:
        return f"redis memory: {used / 2**20:,.1f} MiB used (no maxmemory)"
    return (f"redis memory: {used / 2**20:,.1f} MiB used of maxmemory {cap / 2**20:,.0f} MiB ({used / cap:.0%}, "
            f"{memory.get('maxmemory_policy', 'noeviction')})")

