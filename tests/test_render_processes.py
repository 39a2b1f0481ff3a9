"""A reward worker renders its chat templates in processes of its own where `RSAMPLE_RENDER_PROCESSES` says: the
scores stay those of one unpadded conversation at a time, the run's date is the one the worker pinned, a template's
refusal stays a refusal, a render process that dies costs no job, and none outlives the model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import _cmdline, _live_descendants
from oracles import reference_reward
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rsample.workers.backends.render_processes import PROCESSES_ENV, InProcessRenderer, ProcessRenderer, configured_render_processes
from rsample.workers.backends.template_date import pin_run_date
from rsample.workers.backends.tiny_models import build_reward_model
from rsample.workers.backends.transformers_reward import TransformersRewardModel
from rsample.workers.common.errors import RejectedInput, RsampleError

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}],
    [{"role": "user", "content": "write a poem about the river " * 12}, {"role": "assistant", "content": "the river runs " * 14}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why"}, {"role": "assistant", "content": "because"}],
]


def render_processes() -> list[int]:
    """This process's children that multiprocessing spawned."""
    return [pid for pid in _live_descendants(os.getpid()) if "multiprocessing.spawn" in _cmdline(pid)]


@pytest.fixture(scope="module")
def reward_path(tmp_path_factory):
    return str(build_reward_model(tmp_path_factory.mktemp("rm") / "reward", seed=3, pad="eos"))


def with_template(reward_path: str, directory, template: str) -> str:
    tokenizer = AutoTokenizer.from_pretrained(reward_path)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_a_reward_model_rendering_in_processes_scores_as_one_conversation_at_a_time(reward_path, monkeypatch):
    model = AutoModelForSequenceClassification.from_pretrained(reward_path, dtype=torch.float32).eval()
    expected = [reference_reward(model, AutoTokenizer.from_pretrained(reward_path), c) for c in CONVERSATIONS]
    monkeypatch.setenv(PROCESSES_ENV, "2")
    reward = TransformersRewardModel(reward_path, "float32")
    try:
        assert isinstance(reward.renderer, ProcessRenderer) and len(render_processes()) == 2
        assert reward.score(CONVERSATIONS) == pytest.approx(expected, abs=1e-5)
        assert reward.score(CONVERSATIONS[1:]) == pytest.approx(expected[1:], abs=1e-5)
    finally:
        reward.close()
    assert render_processes() == []


def test_the_worker_renders_in_its_own_process_unless_told(reward_path, monkeypatch):
    monkeypatch.delenv(PROCESSES_ENV, raising=False)
    reward = TransformersRewardModel(reward_path, "float32")
    assert isinstance(reward.renderer, InProcessRenderer) and render_processes() == []
    monkeypatch.setenv(PROCESSES_ENV, "two")
    with pytest.raises(RsampleError, match=r"RSAMPLE_RENDER_PROCESSES must be a whole number .*'two'"):
        configured_render_processes()


def test_render_processes_show_the_date_of_the_run_the_worker_serves(reward_path, tmp_path):
    """The date is pinned in the worker (`pin_run_date`, again when it moves to another run): each call carries it."""
    spec = with_template(reward_path, tmp_path / "dated", "{{ strftime_now('%Y-%m-%d %H:%M') }}|"
                                                           "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    tokenizer = AutoTokenizer.from_pretrained(spec)
    renderer = ProcessRenderer(spec, False, None, 1)
    try:
        for moment in (1_700_000_000, 1_800_003_600):
            pin_run_date(moment)
            text = tokenizer.decode(renderer.render(CONVERSATIONS[:1])[0])
            assert text.split("|")[0] == time.strftime("%Y-%m-%d %H:%M", time.gmtime(moment))
    finally:
        pin_run_date(None)
        renderer.close()


def test_a_template_s_refusal_is_a_refusal_in_the_worker(reward_path, tmp_path):
    spec = with_template(reward_path, tmp_path / "refusing", "{% for m in messages %}{% if m['role'] == 'system' %}"
                                                             "{{ raise_exception('System role not supported') }}{% endif %}"
                                                             "{{ m['content'] }}{% endfor %}")
    renderer = ProcessRenderer(spec, False, None, 1)
    try:
        with pytest.raises(RejectedInput, match="System role not supported"):
            renderer.render(CONVERSATIONS)
        assert len(renderer.render(CONVERSATIONS[:2])) == 2
    finally:
        renderer.close()


def test_a_render_process_that_dies_costs_no_call(reward_path):
    tokenizer = AutoTokenizer.from_pretrained(reward_path)
    expected = InProcessRenderer(tokenizer, tokenizer.eos_token_id).render(CONVERSATIONS)
    renderer = ProcessRenderer(reward_path, False, tokenizer.eos_token_id, 1)
    try:
        assert renderer.render(CONVERSATIONS) == expected
        [dying] = render_processes()
        os.kill(dying, signal.SIGKILL)
        assert renderer.render(CONVERSATIONS) == expected
        assert render_processes() and dying not in render_processes()
    finally:
        renderer.close()
    assert render_processes() == []


def test_render_processes_that_cannot_start_are_said_at_load(tmp_path):
    renderer = ProcessRenderer(str(tmp_path / "gone"), False, None, 1)
    with pytest.raises(RsampleError, match=r"'.*gone': its render processes did not start \(reward model not found: .*gone\); set \$RSAMPLE_RENDER_PROCESSES=0"):
        renderer.check()
    assert render_processes() == []


WORKER = """
import sys
from rsample.workers.backends.render_processes import ProcessRenderer
renderer = ProcessRenderer(sys.argv[1], False, None, 1)
renderer.check()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("when", ["while they start", "once they render"])
def test_render_processes_of_a_worker_killed_outright_end_too(reward_path, when):
    """SIGKILL (the OOM killer, a scheduler past its grace period) never lets the worker close its pool; killed while
    they start, they are another parent's before they look for theirs."""
    worker = subprocess.Popen([sys.executable, "-c", WORKER, reward_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if when == "once they render":
            assert worker.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not (children := [pid for pid in _live_descendants(worker.pid) if "multiprocessing.spawn" in _cmdline(pid)]):
            assert time.monotonic() < deadline, "no render process started"
            time.sleep(0.01)
        worker.kill()
        worker.wait()
        deadline = time.monotonic() + 30  # orphaned, they are this test process's (the suite's subreaper, conftest)
        while set(children) & set(_live_descendants(os.getpid())) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not set(children) & set(_live_descendants(os.getpid()))
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


NEVER_ENDS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"


def test_a_render_that_never_ends_does_not_keep_the_worker_from_stopping(reward_path, tmp_path):
    import threading

    spec = with_template(reward_path, tmp_path / "endless", NEVER_ENDS)
    renderer = ProcessRenderer(spec, False, None, 1)
    outcome = []

    def render() -> None:
        try:
            outcome.append(renderer.render(CONVERSATIONS[:1]))
        except Exception as exc:
            outcome.append(exc)

    stuck = threading.Thread(target=render, daemon=True)
    stuck.start()
    deadline = time.monotonic() + 60
    while not render_processes():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1)  # the render has begun
    began = time.monotonic()
    renderer.close(grace=1.0)
    assert time.monotonic() - began < 10
    assert render_processes() == []
    stuck.join(10)
    assert not stuck.is_alive() and len(outcome) == 1 and isinstance(outcome[0], Exception)  # the call that waited on it ended too


def test_render_processes_are_a_process_group_of_their_own(reward_path):
    """A stop signal to the worker's group (a Ctrl-C in its terminal, `kill -- -PGID`) is the worker's to handle while it
    finishes its jobs: it reached the render processes too, broke the pool, and every running job paid for a new one."""
    renderer = ProcessRenderer(reward_path, False, None, 1)
    try:
        renderer.check()
        [child] = render_processes()
        assert os.getpgid(child) == child != os.getpgid(os.getpid())
    finally:
        renderer.close()
    assert render_processes() == []
