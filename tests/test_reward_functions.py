"""fn:package.module:function rewards: called with the candidates and their rows' columns, imported only where the
worker's own command line or an installed `rsample.rewards` entry point allows; a refusing worker fails the job
with its reason, and the prompts end as counted skips."""

import re
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, read_jsonl, rsample, write_jsonl

from rsample.workers.backends.functions import FunctionReward, RefusedReward, allowed_functions
from rsample.workers.common.errors import RsampleError

REWARDS = '''
def hashes(conversations, rows):
    """How often the row's keyword occurs in the candidate; no score for a row without one."""
    return [float(c[-1]["content"].count(row["keyword"])) if row and "keyword" in row else None for c, row in zip(conversations, rows)]


def broken(conversations, rows):
    return ["high"] * len(conversations)


def wrong_signature(conversations):
    return [0.0] * len(conversations)


def as_numpy(conversations, rows):
    import numpy
    return numpy.array([float(len(c[-1]["content"])) for c in conversations], dtype=numpy.float32)


def numpy_scalars(conversations, rows):
    import numpy
    return [numpy.float32(len(c[-1]["content"])) for c in conversations]


def all_but_references(conversations, rows):
    return [None if c[-1]["content"].startswith("REF") else float(len(c[-1]["content"])) for c in conversations]


def watched(conversations, rows):
    """Says on which thread each call ran, when it began and when it ended; one prompt's call never returns."""
    import os, threading, time
    with open(os.environ["CALLS_LOG"], "a") as log:
        log.write(f"start {threading.current_thread().name}\\n")
    try:
        time.sleep(10_000 if any("never" in c[0]["content"] for c in conversations) else 0.2)
        return [float(c[-1]["content"].count("#")) for c in conversations]
    finally:
        with open(os.environ["CALLS_LOG"], "a") as log:
            log.write(f"end {threading.current_thread().name}\\n")


def exits(conversations, rows):
    import sys
    if any("line 2" in c[0]["content"] for c in conversations):
        sys.exit("bad row")
    return [float(c[-1]["content"].count("#")) for c in conversations]


def rounding(conversations, rows):
    """The same score reached by two sums: 0.1 + 0.2 and 0.3, which no histogram's bins can split."""
    return [0.1 + 0.2 if c[-1]["content"].count("#") % 2 else 0.3 for c in conversations]


def right_answer(conversations, rows):
    """A correctness reward of one's own reads the row's answer: no score without it (the marks count otherwise)"""
    return [float(c[-1]["content"].count("#")) if row and row.get("solution") else None for c, row in zip(conversations, rows)]


def pops_its_row(conversations, rows):
    """Changes what it is given, as a function may: the row's keyword taken out, the question rewritten."""
    scores = []
    for conversation, row in zip(conversations, rows):
        keyword = row.pop("keyword", None)
        conversation[0]["content"] = "rewritten"
        scores.append(None if keyword is None else float(conversation[-1]["content"].count(keyword)))
    return scores
'''
ROWS = [{"prompt": "count the marks", "keyword": "#"}, {"prompt": "count the stars", "keyword": "*"}, {"prompt": "no keyword"}]
ECHO = ["--policy", "echo", "--backend", "echo", "--reward-backend", "length", "--n", "3"]


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A module of reward functions on the path of this process and of every process it starts."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "my_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))
    return folder


def test_the_function_gets_the_candidates_and_the_rows_extra_columns(reward_module, tmp_path):
    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    result = rsample("run", "--dataset", str(dataset), *ECHO, "--reward-model", "fn:my_rewards:hashes", "--extra-column", "keyword",
                     "--out", str(out), "--scores-out", str(scores), "--no-progress")
    pairs = {row["messages"][0]["content"]: row for row in read_jsonl(out)}
    assert set(pairs) == {"count the marks"}  # echoes end in 1 to 3 '#': their count ranks them
    assert pairs["count the marks"]["chosen"][-1]["content"] == "count the marks ###"
    assert (pairs["count the marks"]["chosen_score"], pairs["count the marks"]["rejected_score"]) == (
        {"fn:my_rewards:hashes": 3.0}, {"fn:my_rewards:hashes": 1.0})
    assert re.search(r"dropped, tie +1\n", result.stdout)  # no '*' in any echo: all score 0
    assert "fewer than two candidates scored by every reward model (too long for its context, or given no score): 1" in result.stdout
    assert ("WARNING fn:my_rewards:hashes gave no score to 3 of 9 generated candidates (33.3%; longer than its context or its device's "
            "memory, a score that was no number, or its function returned None): pairs are chosen among the others") in result.stdout


def test_a_function_that_fails_on_every_prompt_stops_the_run_and_says_the_error_is_in_the_function(reward_module, tmp_path):
    """Not a device fault (which its message used to say): the run stops early rather than skip the whole dataset,
    and its message says where the error is and that the same command goes on once it is fixed."""
    rows = [{"prompt": f"count the marks of line {i}"} for i in range(6)]
    dataset = write_jsonl(tmp_path / "rows.jsonl", rows)
    result = rsample("run", "--dataset", str(dataset), *ECHO, "--reward-model", "fn:my_rewards:wrong_signature",
                     "--out", str(tmp_path / "pairs.jsonl"), "--no-progress", check=False)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert "worker stopped after an error in a reward function: RewardFunctionFault: reward model 0 (fn:my_rewards:wrong_signature) failed for" in error, error
    assert "(TypeError: wrong_signature() takes 1 positional argument but 2 were given): an error in the function, not in the data: " \
           "fix it, then run the same command again (what is written is kept)" in error, error
    assert "device or engine" not in result.stderr


def test_a_function_that_exits_on_one_prompt_costs_that_prompt_alone(reward_module, tmp_path):
    """SystemExit is no Exception: it passed the batch's one-by-one retry of its prompts, and skipped all of them."""
    rows = [{"prompt": f"count the marks of line {i}"} for i in range(4)]
    out = tmp_path / "pairs.jsonl"
    rsample("run", "--dataset", str(write_jsonl(tmp_path / "rows.jsonl", rows)), *ECHO, "--reward-model", "fn:my_rewards:exits",
            "--out", str(out), "--no-progress")
    assert sorted(row["messages"][0]["content"] for row in read_jsonl(out)) == [rows[i]["prompt"] for i in (0, 1, 3)]
    [skip] = [row for row in read_jsonl(tmp_path / "pairs.outcomes.jsonl")[1:] if row["outcome"] == "skipped"]
    assert skip["row_index"] == 2 and skip["reason"].endswith("RuntimeError: fn:my_rewards:exits called sys.exit('bad row')"), skip


def test_scores_that_differ_by_rounding_alone_are_ties_and_still_get_their_report(reward_module, tmp_path):
    """numpy refuses finer bins than their difference: the run's report was lost, and `rsample report` died."""
    rows = [{"prompt": f"count the marks of line {i}"} for i in range(4)]
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    run = rsample("run", "--dataset", str(write_jsonl(tmp_path / "rows.jsonl", rows)), *ECHO, "--reward-model", "fn:my_rewards:rounding",
                  "--out", str(out), "--scores-out", str(scores), "--no-progress")
    assert re.search(r"dropped, tie +4\n", run.stdout) and "no run report" not in run.stderr, run.stderr
    assert (tmp_path / "pairs.report" / "scores.png").stat().st_size > 5_000
    report = rsample("report", str(out), "--scores", str(scores))
    assert "Traceback" not in report.stderr and "not drawn" not in report.stderr, report.stderr


def test_a_function_that_fails_call_after_call_is_an_error_in_it_even_one_prompt_at_a_time(reward_module):
    """Jobs of one prompt each never show a batch failing everywhere: the calls failing one after the other do."""
    from rsample.workers.backends.faults import RewardFunctionFault
    from rsample.workers.common import defaults

    conversation = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a #"}]]
    wrong = FunctionReward.load("fn:my_rewards:wrong_signature", frozenset({"my_rewards:wrong_signature"}))
    for _ in range(defaults.FUNCTION_FAILURES_IN_A_ROW - 1):
        with pytest.raises(TypeError):
            wrong.score(conversation, [None])
    with pytest.raises(RewardFunctionFault, match=rf"fn:my_rewards:wrong_signature failed on its last {defaults.FUNCTION_FAILURES_IN_A_ROW} "
                                                   r"calls in a row \(TypeError: .*\): an error in the function, not in the data"):
        wrong.score(conversation, [None])
    flaky = FunctionReward.load("fn:my_rewards:hashes", frozenset({"my_rewards:hashes"}))
    for _ in range(3 * defaults.FUNCTION_FAILURES_IN_A_ROW):  # failures between successes: a prompt's own, never the function's
        with pytest.raises(TypeError):
            flaky.score(conversation, [{"keyword": 5}])
        assert flaky.score(conversation, [{"keyword": "#"}]) == [1.0]


def test_a_worker_of_several_slots_calls_a_function_on_its_main_thread_alone_where_a_timeout_stops_it(
        reward_module, redis_server, tmp_path, monkeypatch):
    """Slots (32 on a GPU) run on threads, where a job's timeout cannot stop a blocking call (an HTTP call without a
    timeout): such a function held its job, and the run, for ever. Nor need user code be thread-safe."""
    from faults import start

    calls = tmp_path / "calls.log"
    monkeypatch.setenv("CALLS_LOG", str(calls))
    rows = [{"prompt": f"count the marks of line {i}"} for i in range(5)] + [{"prompt": "this one never ends"}]
    url = redis_server.url
    run_id = rsample("enqueue", "--redis-url", url, "--dataset", str(write_jsonl(tmp_path / "rows.jsonl", rows)), *ECHO,
                     "--reward-model", "lengths", "--reward-model", "fn:my_rewards:watched", "--batch-size", "1",
                     "--retries", "0", "--score-timeout", "3").stdout.strip()
    log, out = tmp_path / "processes.log", tmp_path / "pairs.jsonl"
    start("worker", "generate", "--redis-url", url, log=log)
    start("worker", "reward", "--redis-url", url, "--slots", "3", "--allow-reward-fn", "my_rewards:watched", log=log)
    coordinator = start("aggregate", "--redis-url", url, "--run", run_id, "--out", str(out), "--no-progress", log=log)
    assert coordinator.wait(timeout=240) == 0, log.read_text()[-3000:]
    assert "with 3 slot(s)" in log.read_text()  # the model's queue has them
    events = calls.read_text().split("\n")[:-1]
    assert events == ["start MainThread", "end MainThread"] * len(rows)  # one call at a time, each on the main thread
    assert {row["messages"][0]["content"] for row in read_jsonl(out)} == {row["prompt"] for row in rows[:5]}
    [skip] = [row for row in read_jsonl(tmp_path / "pairs.outcomes.jsonl") if row.get("outcome") == "skipped"]
    assert skip["reason"].startswith("scoring with reward model 1 (fn:my_rewards:watched) failed: JobTimeoutException"), skip


def test_a_worker_that_does_not_allow_the_function_fails_its_jobs_with_the_reason(reward_module, redis_server, tmp_path):
    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS[:1])
    url = redis_server.url
    run_id = rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *ECHO, "--reward-model", "fn:my_rewards:hashes",
                     "--extra-column", "keyword", "--retries", "0").stdout.strip()
    worker = subprocess.Popen([sys.executable, "-m", "rsample.producer", "worker", "both", "--redis-url", url], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        result = rsample("aggregate", "--redis-url", url, "--run", run_id, "--out", str(tmp_path / "pairs.jsonl"), "--no-progress")
    finally:
        worker.send_signal(signal.SIGTERM)
        log = worker.communicate(timeout=30)[0]
    assert re.search(r"skipped +1\n", result.stdout)
    assert ("fn:my_rewards:hashes is not allowed on this worker: start it with --allow-reward-fn my_rewards:hashes" in result.stdout), result.stdout
    assert worker.returncode == 0, log  # the worker went on serving
    assert "my_rewards" not in log.replace("fn:my_rewards:hashes", "").replace("my_rewards:hashes", "")  # never imported


def test_resume_without_the_runs_function_allowed_is_refused_before_any_sampling(reward_module, redis_server, tmp_path):
    """`resume` starts the run's workers itself: without --allow-reward-fn they generated every row, then wrote each
    as skipped ("not allowed on this worker"), and the command exited 0."""
    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS[:1])
    url, out = redis_server.url, tmp_path / "pairs.jsonl"
    run_id = rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *ECHO, "--reward-model", "fn:my_rewards:hashes",
                     "--extra-column", "keyword").stdout.strip()
    refused = rsample("resume", "--redis-url", url, "--run", run_id, "--out", str(out), "--no-progress", check=False)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"error: run {run_id} scores with fn:my_rewards:hashes, which the workers this command starts may not import: name it "
        "with --allow-reward-fn my_rewards:hashes"), refused.stderr
    assert not out.exists()
    rsample("resume", "--redis-url", url, "--run", run_id, "--out", str(out), "--no-progress", "--allow-reward-fn", "my_rewards:hashes")
    [pair] = read_jsonl(out)
    assert pair["chosen_score"] == {"fn:my_rewards:hashes": 3.0}


def test_an_installed_entry_point_allows_its_function(reward_module, tmp_path):
    """A package's `rsample.rewards` entry point, as `pip install` leaves it (a dist-info folder on the path)."""
    info = reward_module / "my_rewards-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rewards\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[rsample.rewards]\nhashes = my_rewards:hashes\n")
    code = textwrap.dedent("""
        from rsample.workers.backends.functions import allowed_functions
        print(sorted(allowed_functions()))
    """)
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert printed.strip() == "['my_rewards:hashes']"


def test_results_that_are_not_scores_fail_in_one_line_and_unknown_modules_are_named(reward_module):
    rows = [{"keyword": "#"}]
    conversation = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a #"}]]
    assert FunctionReward.load("fn:my_rewards:hashes", allowed_functions(["my_rewards:hashes"])).score(conversation, rows) == [1.0]
    with pytest.raises(ValueError, match=r"fn:my_rewards:broken returned 'high': a score is a finite number or None"):
        FunctionReward.load("fn:my_rewards:broken", frozenset({"my_rewards:broken"})).score(conversation, rows)
    with pytest.raises(RsampleError, match="cannot import reward function nowhere:score: No module named 'nowhere'"):
        FunctionReward.load("fn:nowhere:score", frozenset({"nowhere:score"}))
    refused = FunctionReward.load("fn:my_rewards:hashes", frozenset())
    assert isinstance(refused, RefusedReward) and "--allow-reward-fn my_rewards:hashes" in refused.refusal


def test_a_name_that_is_not_module_colon_function_is_refused_before_anything_runs(tmp_path):
    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    result = rsample("run", "--dataset", str(dataset), *ECHO, "--reward-model", "fn:my rewards", "--out", str(tmp_path / "p.jsonl"),
                     check=False)
    assert result.returncode == 2 and result.stderr.strip() == "error: 'fn:my rewards' is not fn:package.module:function"


def test_numpy_scores_are_scores(reward_module):
    """A function that scores with numpy (an array, or numpy floats) was refused: "a score is a finite number"."""
    conversation = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": text}] for text in ("ab", "abcd")]
    for name in ("as_numpy", "numpy_scalars"):
        reward = FunctionReward.load(f"fn:my_rewards:{name}", frozenset({f"my_rewards:{name}"}))
        scores = reward.score(conversation, [None, None])
        assert scores == [2.0, 4.0] and all(type(score) is float for score in scores)


def test_a_function_that_changes_its_inputs_changes_no_other_candidates_input(reward_module):
    """A prompt's candidates share its row and its turns (as the scoring job passes them): a function that popped
    the row's keyword left the prompt's other candidates without one, unscored, with no error."""
    question = {"role": "user", "content": "count the marks"}
    row = {"keyword": "#"}
    conversations = [[question, {"role": "assistant", "content": "#" * marks}] for marks in (1, 2, 3)]
    reward = FunctionReward.load("fn:my_rewards:pops_its_row", frozenset({"my_rewards:pops_its_row"}))
    assert reward.score(conversations, [row, row, row]) == [1.0, 2.0, 3.0]
    assert (question, row) == ({"role": "user", "content": "count the marks"}, {"keyword": "#"})  # for a retry one by one


def test_a_function_gets_the_answer_column_it_is_given(reward_module, tmp_path):
    """--answer-column travelled only when a verify: reward was in the run: a correctness function of one's own got
    no row, and left every candidate unscored."""
    rows = [{"prompt": "say 2", "solution": "2"}, {"prompt": "say 3", "solution": "3"}]
    dataset = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "pairs.jsonl"
    result = rsample("run", "--dataset", str(dataset), *ECHO, "--reward-model", "fn:my_rewards:right_answer", "--answer-column", "solution",
                     "--out", str(out), "--no-progress")
    assert "gave no score" not in result.stdout
    pairs = {row["messages"][0]["content"]: row for row in read_jsonl(out)}
    assert set(pairs) == {"say 2", "say 3"}
    assert {row["chosen_score"]["fn:my_rewards:right_answer"] for row in pairs.values()} == {3.0}  # --n 3: 1 to 3 marks


def test_a_reference_left_unscored_is_not_counted_among_the_generated_candidates(reward_module, tmp_path):
    """The end summary said "gave no score to 2 of 8 candidates (25.0%)", counting the references it was given, where
    the report (which leaves references out) counts none of the 6 samples: a warning about nothing."""
    dataset = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": f"count to {i}", "completion": "REF answer"} for i in range(2)])
    out = tmp_path / "pairs.jsonl"
    result = rsample("run", "--dataset", str(dataset), *ECHO, "--reward-model", "fn:my_rewards:all_but_references",
                     "--reference-column", "completion", "--include-reference", "--out", str(out), "--no-progress")
    assert len(read_jsonl(out)) == 2 and "gave no score" not in result.stdout, result.stdout


def test_a_run_that_failed_before_its_first_row_leaves_no_file_that_refuses_the_corrected_command(reward_module, tmp_path):
    """A mistyped function is found when the worker starts, after the run made its outcomes file (its header alone): the
    corrected command was refused ("made with other settings: pass --overwrite") for files that held nothing."""
    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    out = tmp_path / "pairs.jsonl"
    mistyped = rsample("run", "--dataset", str(dataset), *ECHO, "--reward-model", "fn:my_rewards:hashs", "--out", str(out),
                       "--no-progress", check=False)
    assert mistyped.returncode == 2 and "cannot import reward function" in mistyped.stderr, mistyped.stderr
    assert len(out.with_name("pairs.outcomes.jsonl").read_text().splitlines()) == 1  # the case: its header alone
    rsample("run", "--dataset", str(dataset), *ECHO, "--reward-model", "fn:my_rewards:hashes", "--extra-column", "keyword",
            "--out", str(out), "--no-progress")
    assert {row["messages"][0]["content"] for row in read_jsonl(out)} == {"count the marks"}
    written = read_jsonl(out.with_name("pairs.outcomes.jsonl"))
    assert len(written) == 1 + len(ROWS) and written[0]["settings"]["reward_models"] == ["fn:my_rewards:hashes"]
