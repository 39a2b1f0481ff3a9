"""Never clobber a user's file: outputs that are not this run's are refused in one line, before any work."""

from __future__ import annotations

import re

import pytest
from conftest import CHAT_ROWS, read_jsonl, rsample, write_jsonl

from rsample.producer.driver.ledger import check_outputs
from rsample.workers.common.errors import RsampleError

ZERO_COST = ["--policy", "p", "--reward-model", "r", "--backend", "echo", "--reward-backend", "length", "--no-progress"]


def test_the_dataset_is_never_an_output(tmp_path):
    dataset = write_jsonl(tmp_path / "data.jsonl", CHAT_ROWS)
    before = dataset.read_bytes()
    for flag in ("--out", "--scores-out"):
        args = ["--out", str(tmp_path / "pairs.jsonl")] if flag == "--scores-out" else []
        result = rsample("run", "--dataset", str(dataset), *ZERO_COST, *args, flag, str(dataset), "--overwrite", check=False)
        assert result.returncode == 2
        assert result.stderr.strip() == f"error: {flag} {dataset} is the dataset itself: write the output to another file"
    assert dataset.read_bytes() == before


def test_an_existing_file_that_is_not_this_runs_output_is_kept_unless_overwrite(tmp_path):
    dataset = write_jsonl(tmp_path / "data.jsonl", CHAT_ROWS)
    out = tmp_path / "old.jsonl"
    out.write_text("precious\n")
    refused = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out), check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert f"error: {out} exists and is not the output of this run: pass --overwrite" in refused.stderr
    assert out.read_text() == "precious\n" and not (tmp_path / "old.outcomes.jsonl").exists()

    rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out), "--overwrite")
    assert len(read_jsonl(out)) == 7  # 7 distinct prompts, every echo candidate distinct
    again = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out))  # its own output: resumed, no flag needed
    assert "completions          0 in" in again.stdout


def test_another_runs_output_is_refused_and_outputs_must_differ(tmp_path):
    dataset = write_jsonl(tmp_path / "data.jsonl", CHAT_ROWS)
    out = tmp_path / "pairs.jsonl"
    rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out))
    other = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--n", "3", "--out", str(out), check=False)
    assert other.returncode == 2 and "output, made with other settings (--n was 4, now 3): pass --overwrite" in other.stderr
    with pytest.raises(RsampleError, match="--out and --scores-out are the same file"):
        check_outputs("r", out, out)


def test_a_resume_never_truncates_a_file_it_did_not_write(tmp_path):
    """A re-run that adds --scores-out pointing at an existing file: that file is not the run's (it was truncated)."""
    dataset = write_jsonl(tmp_path / "data.jsonl", CHAT_ROWS)
    out = tmp_path / "pairs.jsonl"
    rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out))
    precious = tmp_path / "important.jsonl"
    precious.write_text('{"keep": "me"}\n' * 50)
    refused = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out), "--scores-out", str(precious), check=False)
    assert refused.returncode == 2, refused.stdout
    assert re.fullmatch(rf"error: {re.escape(str(precious))} exists and is not the output of this run \(run \w+ wrote no --scores-out "
                        r"before\): pass --overwrite to replace it, or choose another path", refused.stderr.strip()), refused.stderr
    assert precious.read_text() == '{"keep": "me"}\n' * 50
    scores = tmp_path / "scores.jsonl"  # a new path: the run writes it from here on, and knows it as its own
    rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out), "--scores-out", str(scores))
    assert rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out), "--scores-out", str(scores)).returncode == 0


def test_a_deleted_output_is_not_reported_as_written(tmp_path):
    dataset = write_jsonl(tmp_path / "data.jsonl", CHAT_ROWS)
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out), "--scores-out", str(scores))
    size = scores.stat().st_size
    scores.unlink()
    result = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out), "--scores-out", str(scores), check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {scores} is missing, but its run committed {size} bytes to it: restore it, or start over "
                                     "with --overwrite")


def test_outputs_must_be_writable_regular_files_outside_the_dataset(tmp_path):
    import os

    dataset = write_jsonl(tmp_path / "data.jsonl", CHAT_ROWS)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # as /dev/null: a special file, which the ledger would truncate or unlink
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    folder = tmp_path / "folder_dataset"
    folder.mkdir()
    write_jsonl(folder / "part.jsonl", CHAT_ROWS)
    cases = [
        (["--dataset", str(dataset), "--out", str(fifo)], f"error: --out {fifo} is not a regular file: give a file path"),
        (["--dataset", str(dataset), "--out", str(a_file / "pairs.jsonl")], f"error: --out {a_file / 'pairs.jsonl'}: {a_file} is a file, not a folder"),
        (["--dataset", str(folder), "--out", str(folder / "pairs.jsonl")],
         f"error: --out {folder / 'pairs.jsonl'} is inside the dataset folder {folder}, which would read it as data"),
    ]
    for args, message in cases:
        result = rsample("run", *ZERO_COST, *args, check=False)
        assert result.returncode == 2 and result.stderr.strip().startswith(message), result.stderr
    assert fifo.is_fifo() and sorted(p.name for p in folder.iterdir()) == ["part.jsonl"]


def test_a_resume_refuses_a_dataset_whose_rows_moved_and_takes_one_that_grew(tmp_path):
    dataset = write_jsonl(tmp_path / "data.jsonl", CHAT_ROWS)
    out = tmp_path / "pairs.jsonl"
    rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out))
    original = dataset.read_text()
    grown = original + '{"prompt": "a row appended later"}\n'
    dataset.write_text(grown)  # the numbers of the others stay
    assert rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out)).returncode == 0
    dataset.write_text('{"prompt": "a row put first"}\n' + grown)
    moved = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out), check=False)
    assert moved.returncode == 2
    assert moved.stderr.strip() == ("error: the dataset changed since run " + moved.stderr.split("since run ")[1].split()[0]
                                    + " last read it (data.jsonl has other rows at its start): its output rows are matched to dataset "
                                    "rows by number; restore the dataset, or start over with --overwrite")
    dataset.write_text(original)  # back to before the append: the rows the run wrote for the appended one have no row now
    shrunk = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out), check=False)
    assert shrunk.returncode == 2 and "(data.jsonl shrank from" in shrunk.stderr
    over = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out), "--overwrite")  # the way out it names
    assert "starts over" in over.stderr and len(read_jsonl(out)) == 7
    assert rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out)).returncode == 0  # and resumes from there


def test_rows_of_a_folder_follow_its_files_sorted_names(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [{"prompt": f"shard b row {i}"} for i in range(3)])
    write_jsonl(folder / "c.jsonl", [{"prompt": f"shard c row {i}"} for i in range(3)])
    out = tmp_path / "pairs.jsonl"
    rsample("run", "--dataset", str(folder), *ZERO_COST, "--out", str(out))
    write_jsonl(folder / "d.jsonl", [{"prompt": "a shard added after the others"}])  # after the last: numbers unchanged
    assert rsample("run", "--dataset", str(folder), *ZERO_COST, "--out", str(out)).returncode == 0
    for change, message in ((lambda: write_jsonl(folder / "a.jsonl", [{"prompt": "a shard put first"}]), "a.jsonl is new and comes before d.jsonl"),
                            (lambda: (folder / "a.jsonl").unlink() or (folder / "b.jsonl").open("a").write('{"prompt": "b grew"}\n'),
                             "b.jsonl grew, which moves the rows of c.jsonl and after")):
        change()
        result = rsample("run", "--dataset", str(folder), *ZERO_COST, "--out", str(out), check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_an_output_a_resume_added_stays_the_runs_own(tmp_path):
    dataset = write_jsonl(tmp_path / "data.jsonl", CHAT_ROWS[:4])
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out))
    added = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out), "--scores-out", str(scores))
    assert "gets the rows written from now on, not the 4 written before" in added.stderr
    with dataset.open("a") as handle:
        handle.write('{"prompt": "one more row"}\n')
    rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out), "--scores-out", str(scores))
    assert len(read_jsonl(scores)) == 4  # the new row's 4 echo candidates
    again = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out), "--scores-out", str(scores))
    assert again.returncode == 0 and len(read_jsonl(scores)) == 4


def test_reward_models_named_on_the_command_line_name_their_scores_in_every_file(tmp_path):
    """`--reward-model NAME=MODEL`: a local path need not become a column name, and runs made with the same model at
    other paths write the same columns (so their files concatenate)."""
    from datasets import concatenate_datasets, load_dataset

    from rsample.workers.backends.reward_specs import split_name
    from rsample.workers.stages.output import features

    assert split_name("skywork=/models/Skywork-Reward-V2") == ("skywork", "/models/Skywork-Reward-V2")
    assert split_name("correct=verify:math") == ("correct", "verify:math")
    for unnamed in ("/models/rm=v2", "./rm=v2", "verify:math", "fn:pkg.rewards:score", "judge:org/judge", "org/rm"):
        assert split_name(unnamed) == (None, unnamed)

    dataset = write_jsonl(tmp_path / "data.jsonl", CHAT_ROWS)
    files = {}
    for folder in ("/cluster-a/rm", "/cluster-b/rm"):  # the same model at another path: the same score columns
        run = tmp_path / folder.strip("/").replace("/", "-")
        out, scores, sft = run / "pairs.jsonl", run / "scores.jsonl", run / "sft.jsonl"
        rsample("run", "--dataset", str(dataset), "--policy", "p", "--backend", "echo", "--reward-backend", "length", "--no-progress",
                "--reward-model", f"quality={folder}", "--reward-model", "brevity=/models/other-rm",
                "--out", str(out), "--scores-out", str(scores), "--sft-out", str(sft))
        files[folder] = (out, scores, sft)
        for row in read_jsonl(out):
            assert set(row["chosen_score"]) == set(row["rejected_score"]) == {"quality", "brevity"}
        assert all(set(row["scores"]) == {"quality", "brevity"} for row in read_jsonl(scores))
        assert all(set(row["score"]) == {"quality", "brevity"} for row in read_jsonl(sft))
    pairs = [load_dataset("json", data_files=str(out), split="train", features=features("pairs", ["quality", "brevity"]))
             for out, _, _ in files.values()]
    assert len(concatenate_datasets(pairs)) == 2 * len(read_jsonl(files["/cluster-a/rm"][0]))
    refused = rsample("run", "--dataset", str(dataset), *ZERO_COST[:2], "--backend", "echo", "--reward-backend", "length",
                      "--reward-model", "rm=/a", "--reward-model", "rm=/b", "--out", str(tmp_path / "x.jsonl"), check=False)
    assert refused.returncode == 2 and refused.stderr.strip() == "error: two reward models are named 'rm': each one's scores need a name of their own"


def test_rows_appended_after_a_run_finished_on_a_shared_redis_are_produced(redis_server, tmp_path):
    """A fresh embedded Redis counts the rows again; a shared one kept the run's count and its finished feed, and the
    appended rows were never produced though the ledger took the grown file."""
    dataset = write_jsonl(tmp_path / "data.jsonl", CHAT_ROWS)
    out = tmp_path / "pairs.jsonl"
    rsample("run", "--redis-url", redis_server.url, "--dataset", str(dataset), *ZERO_COST, "--out", str(out), "--no-progress")
    appended = [{"prompt": f"a row appended later, number {i}"} for i in range(3)]
    write_jsonl(dataset, [*CHAT_ROWS, *appended])
    result = rsample("run", "--redis-url", redis_server.url, "--dataset", str(dataset), *ZERO_COST, "--out", str(out), "--no-progress")
    assert "3 rows were appended to its dataset since it was fed: feeding them" in result.stderr
    outcomes = [row for row in read_jsonl(out.with_name("pairs.outcomes.jsonl"))[1:] if "row_index" in row]
    assert sorted(row["row_index"] for row in outcomes) == list(range(len(CHAT_ROWS) + 3))
    assert f"rows                 {len(CHAT_ROWS) + 3}" in result.stdout
    assert re.search(r"completions +12 in", result.stdout), result.stdout  # this session's: 3 rows of 4, not the run's 44


def test_a_resume_refuses_a_dataset_edited_where_its_fingerprint_does_not_look(tmp_path):
    """Two rows swapped past the first 64 KiB, the size unchanged: the fingerprint sees nothing, but the rows read again
    give other prompts than the ones the run wrote outcomes for."""
    rows = [{"prompt": f"question number {i:05d}"} for i in range(2000)]
    dataset = write_jsonl(tmp_path / "data.jsonl", rows)
    assert dataset.stat().st_size > 70_000
    out = tmp_path / "pairs.jsonl"
    rsample("run", "--dataset", str(dataset), *ZERO_COST, "--batch-size", "64", "--out", str(out))
    rows[1900], rows[1950] = rows[1950], rows[1900]
    write_jsonl(dataset, rows)
    edited = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--batch-size", "64", "--out", str(out), check=False)
    run_id = read_jsonl(out.with_name("pairs.outcomes.jsonl"))[0]["rsample_run"]
    assert (edited.returncode, edited.stderr.strip().splitlines()[-1]) == (2, (
        f"error: row 1900 of the dataset is not the row run {run_id} wrote an outcome for (it was edited since, or the rsample that "
        "wrote the run read it otherwise): output rows are matched to dataset rows by number; restore the dataset, or start over "
        "with --overwrite"))
    over = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--batch-size", "64", "--out", str(out), "--overwrite")  # as it says
    assert "row 1900 of the dataset is not the row run" in over.stderr and "--overwrite: the run starts over" in over.stderr
    pairs = {row["prompt_id"]: row["messages"][0]["content"] for row in read_jsonl(out)}
    assert sorted(pairs.values()) == sorted(row["prompt"] for row in rows) and len(pairs) == len(rows)


def test_a_full_disk_stops_the_run_in_one_line_and_the_same_command_resumes(tmp_path):
    """A file-size limit stands for a full disk: the write fails inside a commit. It used to end in a traceback, and
    the run lock was left for another coordinator to wait out."""
    import shlex
    import subprocess
    import sys

    from conftest import REPO
    from faults import assert_exactly_once

    rows = [{"prompt": f"question number {i:05d} " + "x" * 40} for i in range(1500)]
    dataset = write_jsonl(tmp_path / "data.jsonl", rows)
    out, scores = tmp_path / "out" / "pairs.jsonl", tmp_path / "out" / "scores.jsonl"
    command = [sys.executable, "-m", "rsample.producer", "run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out),
               "--scores-out", str(scores)]
    full = subprocess.run(["bash", "-c", f"ulimit -f 100 && exec {shlex.join(command)}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 2 and full.stderr.strip().splitlines()[-1] == (
        f"error: cannot write {scores}: File too large; the rows committed so far are kept, and the same command resumes once "
        "it can write"), full.stderr[-2000:]
    rsample(*command[3:])
    assert assert_exactly_once(out, scores, rows) == {"pair": len(rows)}


def test_sigterm_stops_a_coordinator_as_ctrl_c_does(redis_server, tmp_path):
    """`docker stop`, systemd and Kubernetes send SIGTERM: the coordinator must release its run at once (it was killed
    where it stood, and its run waited out its lock while `rsample status` said it ran)."""
    import signal
    import subprocess
    import sys

    import redis as redis_module
    from conftest import REPO
    from faults import STARTED, wait_for

    from rsample.workers.runtime.keys import RunKeys

    dataset = write_jsonl(tmp_path / "data.jsonl", CHAT_ROWS)
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), *ZERO_COST[:-1]).stdout.strip().splitlines()[-1]
    client = redis_module.Redis.from_url(redis_server.url)
    coordinator = subprocess.Popen([sys.executable, "-m", "rsample.producer", "aggregate", "--redis-url", redis_server.url, "--run", run_id,
                                    "--out", str(tmp_path / "pairs.jsonl"), "--no-progress"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    STARTED.append(coordinator)
    wait_for(lambda: client.exists(RunKeys(run_id).coordinator_lock), 60, "the coordinator to hold its run", interval=0.1)
    coordinator.send_signal(signal.SIGTERM)
    assert coordinator.wait(timeout=30) == 128 + signal.SIGTERM
    assert ("interrupted: the rows written so far are kept; the same `rsample aggregate` command resumes the run"
            in coordinator.stderr.read())
    assert not client.exists(RunKeys(run_id).coordinator_lock)  # released: another may take the run at once


def test_another_out_after_a_coordinator_that_wrote_only_bad_rows_and_duplicates_finishes(redis_server, tmp_path):
    """The first coordinator, stopped while the workers still loaded, had written only the rows its feeder settled
    itself (a bad row, a duplicate). A coordinator with another --out wrote the prompts as the workers finished them,
    then waited forever for those two rows: nothing was in flight, so it never fed the run again."""
    import signal
    import subprocess
    import sys

    from conftest import REPO
    from faults import STARTED, outcome_rows, wait_for

    rows = [{"prompt": f"question {i}"} for i in range(6)] + [{"prompt": ""}, {"prompt": "question 3"}]
    dataset = write_jsonl(tmp_path / "data.jsonl", rows)
    url = redis_server.url
    run_id = rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *ZERO_COST[:-1]).stdout.strip().splitlines()[-1]
    first_out = tmp_path / "first" / "pairs.jsonl"
    first = subprocess.Popen([sys.executable, "-m", "rsample.producer", "aggregate", "--redis-url", url, "--run", run_id,
                              "--out", str(first_out), "--no-progress"], cwd=REPO, stderr=subprocess.DEVNULL)
    STARTED.append(first)
    wait_for(lambda: first_out.with_name("pairs.outcomes.jsonl").exists() and len(outcome_rows(first_out)) == 2, 60,
             "the feeder's own rows written", interval=0.1)
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=30)
    rsample("worker", "both", "--redis-url", url, "--run", run_id, "--burst")  # the prompts' work, done while no coordinator runs
    out = tmp_path / "second" / "pairs.jsonl"
    rsample("aggregate", "--redis-url", url, "--run", run_id, "--out", str(out), "--no-progress", timeout=120)
    assert sorted(row["row_index"] for row in outcome_rows(out)) == list(range(len(rows)))


def test_a_score_name_given_since_is_named_as_such_not_as_another_reward_model():
    """`--reward-model X=/models/rm` against `--reward-model /models/rm` said "--reward-model was None, now ['X']": the
    reward model is the same, its scores' name is new."""
    from rsample.producer.driver.ledger import first_difference

    before = {"reward_models": ["/models/rm"], "reward_names": None, "n": 4}
    assert first_difference(before, {**before, "reward_names": ["X"]}) == "the reward models' names (--reward-model NAME=...) were none, now X"
    assert first_difference({**before, "reward_names": [None, "b"]}, {**before, "reward_names": ["a", "b"]}) == (
        "the reward models' names (--reward-model NAME=...) were (none), b, now a, b")
    assert first_difference(before, {**before, "reward_models": ["/models/other"]}) == "--reward-model was ['/models/rm'], now ['/models/other']"
