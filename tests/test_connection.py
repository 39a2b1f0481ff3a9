import pytest
import redis

from rsample.workers.common.errors import RsampleError
from rsample.workers.runtime.connection import connect, redact_url
from rsample.workers.runtime.embedded_redis import EmbeddedRedis, free_port


def test_redact_url_hides_only_the_password():
    assert redact_url("redis://:s3cret@host:6380/2") == "redis://:***@host:6380/2"
    assert redact_url("rediss://user:s3cret@host/0") == "rediss://user:***@host/0"
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_unreachable_redis_names_the_url_without_password():
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(RsampleError) as info:
        connect(url)
    message = str(info.value)
    assert message.startswith("cannot reach Redis at redis://:***@127.0.0.1:")
    assert "hunter2" not in message


def test_a_port_where_another_server_answers_fails_in_one_line():
    """An HTTP proxy's port given by mistake: a 40-line traceback of redis-py's protocol error."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_http() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(1024)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer_http, daemon=True).start()
    try:
        with pytest.raises(RsampleError, match=rf"^no Redis answers at redis://:\*\*\*@127.0.0.1:{port}/0 \(another kind of server\?\): "
                                               r".*HTTP/1.1 400 Bad Request"):
            connect(f"redis://:hunter2@127.0.0.1:{port}/0")
    finally:
        listener.close()


def test_the_version_is_the_installed_package_s():
    """The README asks for one version on every machine of a run: `rsample --version` was no option."""
    import re
    from importlib.metadata import version

    from conftest import rsample

    shown = rsample("--version").stdout
    assert re.fullmatch(rf"rsample {re.escape(version('rsample'))} \(code [0-9a-f]{{12}}\)\n", shown), shown
    assert rsample("--version").stdout == shown  # the same code, the same digest


def test_connect_to_a_real_server(redis_server):
    assert connect(redis_server.url).ping()


@pytest.mark.parametrize("url", [":s3cret@redis-host:6379/0", "redis:/:s3cret@redis-host:6379/0", "redis://user:s3cret@127.0.0.1:notaport/0"])
def test_a_mistyped_url_fails_in_one_line_without_its_password(url):
    """The scheme left out or cut, a port that is no number: the error printed the password, or a traceback from the
    redaction itself."""
    with pytest.raises(RsampleError) as info:
        connect(url, patient=False)
    assert "s3cret" not in str(info.value) and str(info.value).startswith("cannot reach Redis at ") and "***@" in str(info.value)
    assert "s3cret" not in redact_url(url)


@pytest.mark.parametrize("url", ["redis//:s3cret@redis-host:6379/0", "redis:://:s3cret@redis-host:6379/0",
                                 "redis://:s3cret/Ab+c=@redis-host:6379/0"])
def test_other_mistyped_urls_fail_without_their_password(url):
    """The scheme's colon left out or doubled; a base64 password with an unencoded "/" (redis-py's own error then names
    it as the port it could not read)."""
    with pytest.raises(RsampleError) as info:
        connect(url, patient=False)
    assert "s3cret" not in str(info.value) and "Ab+c" not in str(info.value), str(info.value)


def test_a_password_given_as_query_argument_is_redacted():
    from rsample.producer.cli import redacted_command

    url = "redis://redis-host:6379/0?password=s3cret"
    assert redact_url(url) == "redis://redis-host:6379/0?password=***"
    assert "s3cret" not in redacted_command(["aggregate", "--redis-url", url])
    assert redact_url("redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"  # an IPv6 host keeps its brackets


def test_an_embedded_redis_whose_free_port_was_taken_meanwhile_takes_another(tmp_path):
    """A free port can be bound by another test session's Redis before ours binds it: our server then exits, and the
    answer on that port was the other server's (its data, its keys), taken for ours."""
    from rsample.workers.runtime.embedded_redis import EmbeddedRedis

    with EmbeddedRedis(data_dir=tmp_path / "other") as other:
        ours = EmbeddedRedis(data_dir=tmp_path / "ours")
        ours.port = other.port  # as if the free port it chose was taken before its server bound it
        try:
            ours.start()
            assert ours.port != other.port and ours.process.poll() is None
            client = redis.Redis.from_url(ours.url)
            assert client.info("server")["process_id"] == ours.process.pid
            client.close()
        finally:
            ours.close()
        named = EmbeddedRedis(data_dir=tmp_path / "named", port=other.port)  # a port the caller named is not changed
        with pytest.raises(RsampleError, match=f"embedded Redis could not bind port {other.port}: another server holds it"):
            named.start()
        named.close()
    restarted = EmbeddedRedis(data_dir=tmp_path / "restarted").start()  # nor one its clients already hold
    url = restarted.url
    restarted.stop()
    with EmbeddedRedis(data_dir=tmp_path / "taker", port=restarted.port):
        with pytest.raises(RsampleError, match="could not bind port .*: another server holds it"):
            restarted.start()
        assert restarted.url == url
    restarted.close()


def test_a_worker_started_while_redis_restarts_waits_for_it_when_told_to(tmp_path):
    """`rsample run` starts its workers with --wait-for-redis: a Redis restarting at that moment (the coordinator waits
    through it) ended the worker at once, "cannot reach Redis", and the run with it."""
    import subprocess
    import sys
    import time

    from conftest import REPO

    from rsample.workers.runtime.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    try:
        server.stop()
        worker = subprocess.Popen([sys.executable, "-m", "rsample.producer", "worker", "generate", "--redis-url", server.url,
                                   "--burst", "--wait-for-redis", "60"], cwd=REPO, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert worker.poll() is None  # still waiting
        server.start()
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not [c for c in client.client_list() if c.get("cmd") != "client|list"]:  # its own
            time.sleep(0.2)
        assert [c for c in client.client_list() if c.get("cmd") != "client|list"], "the worker never connected"
        worker.terminate()
        _, stderr = worker.communicate(timeout=30)
        assert f"waiting up to 60 s for Redis at {server.url}" in stderr
        refused = subprocess.run([sys.executable, "-m", "rsample.producer", "worker", "generate", "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
                                  "--burst"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "cannot reach Redis" in refused.stderr  # without it, at once, as before
    finally:
        server.close()


def test_a_coordinator_started_while_redis_restarts_waits_for_it_when_told_to(tmp_path):
    """`rsample aggregate` started while its Redis was down or restarting ended at once, "cannot reach Redis", and the
    run had no coordinator until something started one again."""
    import subprocess
    import sys
    import time

    from conftest import REPO

    from rsample.workers.runtime.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    try:
        server.stop()
        coordinator = subprocess.Popen([sys.executable, "-m", "rsample.producer", "aggregate", "--redis-url", server.url, "--out",
                                        str(tmp_path / "pairs.jsonl"), "--wait-for-redis", "60", "--no-progress"], cwd=REPO,
                                       stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert coordinator.poll() is None  # still waiting
        server.start()
        _, stderr = coordinator.communicate(timeout=60)
        assert f"waiting up to 60 s for Redis at {server.url}" in stderr
        assert coordinator.returncode == 2 and stderr.strip().splitlines()[-1] == (  # it reached Redis, which holds no run
            "error: this Redis holds no run yet: start one with `rsample enqueue` or pass --run"), stderr
    finally:
        server.close()


@pytest.mark.parametrize("database", ["3x", "abc", "\u00b2", " 3x"])
def test_a_database_that_is_no_number_is_refused_not_read_as_0(redis_server, database):
    """redis-py reads `/3x` as database 0, silently: a typo put the run into another tenant's database."""
    with pytest.raises(RsampleError, match=f"names database '{database}', which is no number"):
        connect(f"{redis_server.url.rsplit('/', 1)[0]}/{database}", patient=False)
    base = redis_server.url.rsplit("/", 1)[0]
    for accepted, db in (("/3", 3), ("/%33", 3), ("/abc?db=3", 3), ("/", 0), ("", 0)):  # as redis-py reads them
        assert connect(base + accepted).connection_pool.connection_kwargs.get("db", 0) == db, accepted


def test_a_redis_that_asks_for_a_password_the_url_lacks_says_so(tmp_path):
    with EmbeddedRedis(data_dir=tmp_path / "redis", password="pw-9c1") as server:
        without = server.url.replace(":pw-9c1@", "")
        assert "pw-9c1" not in without
        with pytest.raises(RsampleError, match="asks for a password, which the URL does not give"):
            connect(without, patient=False)
        with pytest.raises(RsampleError, match="refused the credentials"):
            connect(server.url.replace("pw-9c1", "wrong"), patient=False)
