"""The ledger: each row's outcome written once, crash leftovers repaired, resumable from files alone."""

import json

import pytest

from rsample.producer.driver.ledger import Ledger, outcomes_path_for
from rsample.workers.common.errors import RsampleError
from rsample.workers.common.messages import DUPLICATE, PAIR, SKIPPED, Outcome


def pair(pid):
    return {"prompt_id": pid, "chosen": [], "rejected": []}


def score(pid, index):
    return {"prompt_id": pid, "completion_index": index, "scores": {}}


def lines(path):
    return [json.loads(line) for line in path.read_text().split("\n") if line]


def test_commit_writes_each_row_once(tmp_path):
    ledger = Ledger(tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", "run1")
    fresh = ledger.commit([Outcome(0, "a", PAIR), Outcome(1, None, SKIPPED, "empty content")], [pair("a")], [score("a", 0), score("a", 1)])
    assert len(fresh) == 2
    again = ledger.commit([Outcome(0, "a", PAIR)], [pair("a")], [score("a", 0)])  # a repeated delivery
    assert again == []
    ledger.close()
    assert [row["prompt_id"] for row in lines(tmp_path / "pairs.jsonl")] == ["a"]
    assert len(lines(tmp_path / "scores.jsonl")) == 2
    assert lines(tmp_path / "pairs.outcomes.jsonl")[0] == {"rsample_run": "run1", "outputs": ["pairs", "scores"],
                                                           "paths": {"pairs": "pairs.jsonl", "scores": "scores.jsonl"}}


def test_reopening_repairs_what_a_crash_left(tmp_path):
    ledger = Ledger(tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", "run1")
    ledger.commit([Outcome(0, "a", PAIR), Outcome(1, "b", DUPLICATE, "same prompt as row 0")], [pair("a")], [score("a", 0)])
    ledger.close()
    # a crash after the data of prompt "c" but before its outcome, in the middle of a line
    with (tmp_path / "pairs.jsonl").open("a") as handle:
        handle.write(json.dumps(pair("c")) + "\n" + '{"prompt_id": "d", "cho')
    with (tmp_path / "scores.jsonl").open("a") as handle:
        handle.write(json.dumps(score("c", 0)) + "\n" + json.dumps(score("a", 0)) + "\n")
    with (tmp_path / "pairs.outcomes.jsonl").open("a") as handle:
        handle.write('{"row_index": 2, "prompt_id": "c", "outc')
    reopened = Ledger(tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", "run1")
    assert set(reopened.rows) == {0, 1}
    assert reopened.prompt_ids == {"a"}
    assert [row["prompt_id"] for row in lines(tmp_path / "pairs.jsonl")] == ["a"]
    assert lines(tmp_path / "scores.jsonl") == [score("a", 0)]
    assert len(lines(tmp_path / "pairs.outcomes.jsonl")) == 3
    assert reopened.commit([Outcome(2, "c", PAIR)], [pair("c")], []) != []
    reopened.close()
    assert [row["prompt_id"] for row in lines(tmp_path / "pairs.jsonl")] == ["a", "c"]


def test_files_of_another_run_are_not_mixed_in(tmp_path):
    first = Ledger(tmp_path / "pairs.jsonl", None, "run1")
    first.commit([Outcome(0, "a", SKIPPED, "empty prompt")], [], [])  # a row's outcome, though no pair
    first.close()
    with pytest.raises(RsampleError, match="exists and is run run1.s output, made with other settings: pass --overwrite"):
        Ledger(tmp_path / "pairs.jsonl", None, "run2")


def test_files_of_a_run_that_settled_no_row_are_replaced(tmp_path):
    """Nothing to keep: a run that stopped before its first row (its worker refused to start) left the header alone."""
    Ledger(tmp_path / "pairs.jsonl", None, "run1").close()
    Ledger(tmp_path / "pairs.jsonl", None, "run2").close()
    assert json.loads((tmp_path / "pairs.outcomes.jsonl").read_text().splitlines()[0])["rsample_run"] == "run2"


def test_counts_cover_every_row(tmp_path):
    ledger = Ledger(tmp_path / "p.jsonl", None, "r")
    ledger.commit([Outcome(0, "a", PAIR), Outcome(1, None, SKIPPED, "invalid JSON"), Outcome(2, "a", DUPLICATE, "x")], [pair("a")], [])
    outcomes, reasons = ledger.counts()
    assert outcomes == {PAIR: 1, SKIPPED: 1, DUPLICATE: 1}
    assert reasons == {"invalid JSON": 1}


def test_overwrite_replaces_another_runs_files(tmp_path):
    first = Ledger(tmp_path / "pairs.jsonl", None, "run1")
    first.commit([Outcome(0, "a", PAIR)], [{"prompt_id": "a"}], [])
    first.close()
    Ledger(tmp_path / "pairs.jsonl", None, "run2", overwrite=True).close()
    assert (tmp_path / "pairs.jsonl").read_text() == ""
    assert json.loads((tmp_path / "pairs.outcomes.jsonl").read_text().splitlines()[0]) == {"rsample_run": "run2", "outputs": ["pairs"],
                                                                                           "paths": {"pairs": "pairs.jsonl"}}


def test_a_commit_cut_between_its_outcome_lines_is_undone_whole(tmp_path):
    ledger = Ledger(tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", "run1")
    ledger.commit([Outcome(0, "a", PAIR)], [pair("a")], [score("a", 0)])
    ledger.close()
    committed = {name: (tmp_path / name).read_bytes() for name in ("pairs.jsonl", "scores.jsonl", "pairs.outcomes.jsonl")}
    # the next commit: its data made it, and the first of its two outcome lines, but not the last (which says where the data ends)
    with (tmp_path / "pairs.jsonl").open("a") as handle:
        handle.write(json.dumps(pair("b")) + "\n" + json.dumps(pair("c")) + "\n")
    with (tmp_path / "pairs.outcomes.jsonl").open("a") as handle:
        handle.write(json.dumps({"row_index": 1, "prompt_id": "b", "outcome": PAIR, "reason": None}) + "\n")
    reopened = Ledger(tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", "run1")
    assert reopened.rows == {0} and reopened.prompt_ids == {"a"}
    reopened.close()
    assert {name: (tmp_path / name).read_bytes() for name in committed} == committed


def test_outcome_files_from_before_data_end_are_still_repaired(tmp_path):
    """Files written by a version whose outcome lines carry no `data_end`: resumed by parsing the data, as then."""
    (tmp_path / "pairs.outcomes.jsonl").write_text(json.dumps({"rsample_run": "run1"}) + "\n" + json.dumps(
        {"row_index": 0, "prompt_id": "a", "outcome": PAIR, "reason": None}) + "\n")
    (tmp_path / "pairs.jsonl").write_text(json.dumps(pair("a")) + "\n" + json.dumps(pair("x")) + "\n")  # "x": never committed
    reopened = Ledger(tmp_path / "pairs.jsonl", None, "run1")
    assert reopened.rows == {0}
    reopened.close()
    assert [row["prompt_id"] for row in lines(tmp_path / "pairs.jsonl")] == ["a"]


def test_the_sft_file_is_committed_with_the_rest_and_cut_back_after_a_crash(tmp_path):
    ledger = Ledger(tmp_path / "pairs.jsonl", None, "run1", sft_out=tmp_path / "sft.jsonl")
    ledger.commit([Outcome(0, "a", PAIR)], [pair("a")], [], [{"prompt_id": "a", "messages": []}])
    ledger.close()
    with (tmp_path / "sft.jsonl").open("a") as handle:  # a crash after the SFT row of "b", before its outcome
        handle.write(json.dumps({"prompt_id": "b", "messages": []}) + "\n")
    reopened = Ledger(tmp_path / "pairs.jsonl", None, "run1", sft_out=tmp_path / "sft.jsonl")
    assert [row["prompt_id"] for row in lines(tmp_path / "sft.jsonl")] == ["a"] and reopened.sft_written == 1
    reopened.commit([Outcome(1, "b", PAIR), Outcome(2, "c", SKIPPED, "why")], [pair("b")], [], [{"prompt_id": "b", "messages": []}])
    reopened.close()
    assert [row["prompt_id"] for row in lines(tmp_path / "sft.jsonl")] == ["a", "b"] and reopened.sft_written == 2


def test_the_sft_file_may_not_be_another_output(tmp_path):
    from rsample.producer.driver.ledger import check_outputs

    with pytest.raises(RsampleError, match="--out and --sft-out are the same file"):
        check_outputs("r", tmp_path / "pairs.jsonl", None, sft_out=tmp_path / "pairs.jsonl")


def test_retry_failed_opens_again_the_rows_whose_work_failed_and_only_those(tmp_path):
    out = tmp_path / "pairs.jsonl"
    ledger = Ledger(out, None, "run1")
    ledger.commit([Outcome(0, "a", PAIR), Outcome(1, "b", SKIPPED, "generation failed: AbandonedJobError: the worker died"),
                   Outcome(2, "c", SKIPPED, "prompt longer than --max-prompt-tokens (5000 > 4096 tokens)"),
                   Outcome(3, "d", SKIPPED, "reward model 1 failed: RuntimeError: reward server unreachable"),
                   Outcome(4, "b", DUPLICATE, "same prompt as row 1")], [pair("a")], [])
    ledger.commit([Outcome(5, "e", SKIPPED, "unprocessable result: ValueError: scores do not fit")], [], [])
    ledger.close()

    reopened = Ledger(out, None, "run1")
    retried = reopened.retry_failed()
    assert [o.row_index for o in retried] == [1, 3, 5]
    assert reopened.rows == {0, 2, 4}
    assert reopened.prompt_ids == {"a", "c"}  # "b" can be produced again; row 4 stays its duplicate
    outcomes, reasons = reopened.counts()
    assert outcomes == {PAIR: 1, SKIPPED: 1, DUPLICATE: 1}
    assert reasons == {"prompt longer than --max-prompt-tokens (5000 > 4096 tokens)": 1}
    assert reopened.commit([Outcome(1, "b", PAIR), Outcome(3, "d", SKIPPED, "reward model 1 failed: RuntimeError: again")],
                           [pair("b")], []) != []
    reopened.close()

    # the file alone, read as its format says: outcome lines in order, a retry line opening its rows again
    final = {}
    for line in lines(tmp_path / "pairs.outcomes.jsonl")[1:]:
        for row in line.get("rsample_retry", ()):
            del final[row]
        if "row_index" in line:
            assert line["row_index"] not in final, "a row settled twice without a retry between"
            final[line["row_index"]] = line["outcome"]
    assert final == {0: PAIR, 1: PAIR, 2: SKIPPED, 3: SKIPPED, 4: DUPLICATE}
    assert [row["prompt_id"] for row in lines(out)] == ["a", "b"]

    resumed = Ledger(out, None, "run1")  # without --retry-failed: the retry line is history, row 5 is open
    assert resumed.rows == {0, 1, 2, 3, 4}
    assert resumed.counts()[0] == {PAIR: 2, SKIPPED: 2, DUPLICATE: 1}
    assert [o.row_index for o in resumed.retry_failed()] == [3]  # failed again: another retry may take it
    resumed.close()


def test_a_retry_line_in_an_older_outcomes_file_keeps_its_data(tmp_path):
    """Files written before commits recorded `data_end`: a retry line written on them, then no commit (the resume
    stopped at once), must not make the next resume take them for a newer file and cut its data to nothing."""
    out = tmp_path / "pairs.jsonl"
    out.write_text(json.dumps(pair("a")) + "\n")
    outcomes = [{"rsample_run": "run1", "outputs": ["pairs"]}, {"row_index": 0, "prompt_id": "a", "outcome": PAIR, "reason": None},
                {"row_index": 1, "prompt_id": "b", "outcome": SKIPPED, "reason": "generation failed: RuntimeError: boom"}]
    (tmp_path / "pairs.outcomes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in outcomes))
    ledger = Ledger(out, None, "run1")
    assert [o.row_index for o in ledger.retry_failed()] == [1]
    ledger.close()
    again = Ledger(out, None, "run1")
    assert again.rows == {0} and again.prompt_ids == {"a"}
    again.close()
    assert lines(out) == [pair("a")]


def test_an_output_left_out_for_a_session_keeps_its_rows_when_given_again(tmp_path):
    """A session without --scores-out recorded the scores file's end as 0, and the next session that gave it again cut
    the file to nothing: every score written before was lost."""
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    first = Ledger(out, scores, "run1")
    first.commit([Outcome(0, "a", PAIR)], [pair("a")], [score("a", 0), score("a", 1)])
    first.close()
    without = Ledger(out, None, "run1")
    without.commit([Outcome(1, "b", PAIR)], [pair("b")], [score("b", 0)])
    without.close()
    again = Ledger(out, scores, "run1")
    again.commit([Outcome(2, "c", PAIR)], [pair("c")], [score("c", 0)])
    again.close()
    assert [(row["prompt_id"], row["completion_index"]) for row in lines(scores)] == [("a", 0), ("a", 1), ("c", 0)]
    assert [row["prompt_id"] for row in lines(out)] == ["a", "b", "c"]


def test_a_known_output_at_another_path_that_holds_a_file_is_refused_not_cut(tmp_path):
    """The run wrote its SFT rows to sft.jsonl; a resume naming another, existing file would have cut that file to the
    run's committed size and appended to it."""
    out, sft, other = tmp_path / "pairs.jsonl", tmp_path / "sft.jsonl", tmp_path / "notes.jsonl"
    first = Ledger(out, None, "run1", sft_out=sft)
    first.commit([Outcome(0, "a", PAIR)], [pair("a")], [], [{"prompt_id": "a", "messages": []}])
    first.close()
    other.write_text("".join(json.dumps({"note": i}) + "\n" for i in range(100)))
    before = other.read_bytes()
    with pytest.raises(RsampleError) as error:
        Ledger(out, None, "run1", sft_out=other)
    assert str(error.value) == (f"{other} is not the --sft-out file of run run1, which is {tmp_path / 'sft.jsonl'}: give that path, "
                                "or start over with --overwrite")
    assert other.read_bytes() == before
    over = Ledger(out, None, "run1", sft_out=other, overwrite=True)  # the way out it names
    assert over.rows == set() and other.read_bytes() == b""
    over.commit([Outcome(0, "a", PAIR)], [pair("a")], [], [{"prompt_id": "a", "messages": []}])
    over.close()
    assert json.loads(other.read_text()) == {"prompt_id": "a", "messages": []}
    assert lines(out.with_name("pairs.outcomes.jsonl"))[-1]["data_end"] == {"pairs": len(out.read_bytes()), "scores": 0,
                                                                          "sft": len(other.read_bytes())}  # the old run's ends gone


def test_an_output_whose_end_an_older_file_never_recorded_is_not_cut(tmp_path):
    """An outcomes file from before commits recorded where the data ends: a session without --scores-out does not know
    the scores file's end, and must not record it as 0, or the next session with --scores-out cuts it to nothing."""
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    out.write_text(json.dumps(pair("a")) + "\n")
    scores.write_text(json.dumps(score("a", 0)) + "\n")
    out.with_name("pairs.outcomes.jsonl").write_text(json.dumps({"rsample_run": "run1"}) + "\n"
                                                      + json.dumps({"row_index": 0, "prompt_id": "a", "outcome": PAIR}) + "\n")
    without = Ledger(out, None, "run1")
    without.commit([Outcome(1, "b", PAIR)], [pair("b")], [])
    without.close()
    again = Ledger(out, scores, "run1")
    again.close()
    assert [row["prompt_id"] for row in lines(scores)] == ["a"]


def test_outputs_whose_whole_folder_moved_are_still_the_runs(tmp_path):
    """Paths are recorded from the outcomes file's folder: moving that folder moves them all alike."""
    (tmp_path / "a").mkdir()
    first = Ledger(tmp_path / "a" / "pairs.jsonl", None, "run1", sft_out=tmp_path / "a" / "sft.jsonl")
    first.commit([Outcome(0, "a", PAIR)], [pair("a")], [], [{"prompt_id": "a", "messages": []}])
    first.close()
    (tmp_path / "a").rename(tmp_path / "b")
    moved = Ledger(tmp_path / "b" / "pairs.jsonl", None, "run1", sft_out=tmp_path / "b" / "sft.jsonl")
    assert moved.rows == {0}
    moved.close()


def test_a_second_coordinator_is_kept_out_while_the_first_lives_paused_or_not(tmp_path):
    """Paused past its Redis lock (a stopped process, a machine asleep), the first still holds the output: the second,
    which the Redis lock let in, would cut back the files under it and write the same rows again."""
    import subprocess
    import sys

    out = tmp_path / "pairs.jsonl"
    paused = Ledger(out, None, "run1")
    paused.commit([Outcome(0, "a", PAIR)], [pair("a")], [])
    with pytest.raises(RsampleError, match=rf"^another process is writing run run1's output {out} \(a coordinator still running, or "):
        Ledger(out, None, "run1")
    elsewhere = subprocess.run([sys.executable, "-c", f"from rsample.producer.driver.ledger import Ledger; Ledger({str(out)!r}, None, 'run1')"],
                               capture_output=True, text=True)
    assert elsewhere.returncode != 0 and "another process is writing run run1's output" in elsewhere.stderr
    paused.commit([Outcome(1, "b", PAIR)], [pair("b")], [])  # it wakes and goes on: nobody wrote under it
    paused.close()
    after = Ledger(out, None, "run1")  # the lock went with it
    assert after.rows == {0, 1}
    after.close()
    assert [row["prompt_id"] for row in lines(out)] == ["a", "b"]


def test_a_file_system_without_file_locks_is_said_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    """Lustre mounted noflock answers ENOSYS, NFSv3 without lockd ENOLCK: a traceback, and no run could start at all."""
    import errno
    import fcntl

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "pairs.jsonl"
    ledger = Ledger(out, None, "run1")
    ledger.commit([Outcome(0, "a", PAIR)], [pair("a")], [])
    ledger.close()
    assert "takes no file locks (Function not implemented)" in caplog.text
    assert [row["prompt_id"] for row in lines(out)] == ["a"]


def test_a_ledger_that_failed_to_open_lets_the_output_go(tmp_path, monkeypatch):
    """A caller in one process (a notebook) that tries again must not find the output held by its own failed try."""
    out = tmp_path / "pairs.jsonl"
    first = Ledger(out, None, "run1")
    first.commit([Outcome(0, "a", PAIR)], [pair("a")], [])
    first.close()
    opened = Ledger._open

    def fails_at_the_outcomes_file(ledger, path):
        if path == ledger.outcomes_path:
            raise OSError(24, "Too many open files")
        return opened(ledger, path)

    monkeypatch.setattr(Ledger, "_open", fails_at_the_outcomes_file)
    with pytest.raises(OSError):
        Ledger(out, None, "run1")
    monkeypatch.setattr(Ledger, "_open", opened)
    again = Ledger(out, None, "run1")
    assert again.rows == {0}
    again.close()


def lose_lock(ledger: Ledger) -> None:
    """As an NFS lease of a machine asleep lapses: the lock is gone while the process still thinks it writes alone."""
    import os

    os.close(ledger._lock)
    ledger._lock = None


def test_a_coordinator_whose_lock_lapsed_finds_another_s_commits_after_its_own_and_stops_without_writing(tmp_path):
    out = tmp_path / "pairs.jsonl"
    paused = Ledger(out, None, "run1")
    paused.commit([Outcome(0, "a", PAIR)], [pair("a")], [])
    lose_lock(paused)
    other = Ledger(out, None, "run1")
    other.commit([Outcome(1, "b", PAIR)], [pair("b")], [])
    other.close()
    with pytest.raises(RsampleError) as error:
        paused.commit([Outcome(1, "b", PAIR)], [pair("b")], [])
    assert "another coordinator of run run1 wrote to it meanwhile" in str(error.value)
    paused.close()
    assert [row["prompt_id"] for row in lines(out)] == ["a", "b"]


def test_a_coordinator_paused_within_a_commit_writes_nothing_after_another_took_over(tmp_path, monkeypatch):
    """The pause falls after its scores were written: the other resumes (cutting them back) and commits; the first
    wakes to write its pairs and outcome line, which would settle rows twice and record ends below the other's rows."""
    out, scores, sft = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", tmp_path / "sft.jsonl"

    def commit(ledger, rows):
        ids = [f"p{row}" for row in rows]
        ledger.commit([Outcome(row, pid, PAIR) for row, pid in zip(rows, ids)], [pair(pid) for pid in ids],
                      [score(pid, i) for pid in ids for i in range(3)], [{"prompt_id": pid, "messages": []} for pid in ids])

    first = Ledger(out, scores, "run1", sft_out=sft)
    commit(first, [0, 1])
    original = Ledger._append

    def pausing(ledger, handle, rows):
        original(ledger, handle, rows)
        if ledger is first and handle is first._scores:  # paused here; its lock lapses; another takes over
            monkeypatch.setattr(Ledger, "_append", original)
            lose_lock(first)
            other = Ledger(out, scores, "run1", sft_out=sft)
            commit(other, [2, 3])
            commit(other, [4, 5])
            other.close()

    monkeypatch.setattr(Ledger, "_append", pausing)
    with pytest.raises(RsampleError, match="another coordinator of run run1 wrote to it meanwhile"):
        commit(first, [2, 3])
    first.close()
    resumed = Ledger(out, scores, "run1", sft_out=sft)  # the same command, again
    assert resumed.rows == {0, 1, 2, 3, 4, 5}
    resumed.close()
    settled = [line["row_index"] for line in lines(outcomes_path_for(out))[1:]]
    assert sorted(settled) == [0, 1, 2, 3, 4, 5]
    assert [row["prompt_id"] for row in lines(out)] == [f"p{row}" for row in range(6)]
    assert [row["prompt_id"] for row in lines(sft)] == [f"p{row}" for row in range(6)]
    assert [(row["prompt_id"], row["completion_index"]) for row in lines(scores)] == [(f"p{row}", i) for row in range(6) for i in range(3)]


def test_a_duplicate_committed_with_a_repeated_delivery_of_its_prompt_writes_nothing_twice(tmp_path):
    out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    ledger = Ledger(out, scores, "run1")
    ledger.commit([Outcome(0, "P", PAIR)], [pair("P")], [score("P", 0)])
    ledger.commit([Outcome(0, "P", PAIR), Outcome(7, "P", DUPLICATE, "same prompt as row 0")], [pair("P")], [score("P", 0)])
    ledger.close()
    assert [row["prompt_id"] for row in lines(out)] == ["P"] and len(lines(scores)) == 1


def test_a_one_line_file_that_is_not_an_rsample_header_is_not_replaced(tmp_path):
    from rsample.producer.driver.ledger import check_outputs

    (tmp_path / "pairs.outcomes.jsonl").write_text(json.dumps({"my": "own data " * 1000}))
    with pytest.raises(RsampleError, match="exists and is not the output of this run"):
        check_outputs("run2", tmp_path / "pairs.jsonl", None)


def test_a_row_read_as_a_skip_one_time_and_as_a_prompt_the_other_is_no_edit(tmp_path):
    """rsample reads some rows otherwise since (a `tools` column, Arrow's null keys): a run resumed across the upgrade
    was refused as an edited dataset, and only --overwrite (every row written again) went on. A row whose prompt is
    another is still an edit."""
    from rsample.producer.driver.ledger import FilesChanged

    ledger = Ledger(tmp_path / "pairs.jsonl", None, "run1")
    ledger.commit([Outcome(0, None, SKIPPED, "unknown role"), Outcome(1, "b", PAIR), Outcome(2, "c", PAIR)], [pair("b"), pair("c")], [])
    ledger.check_row(0, "a")  # was skipped, reads now: its outcome stands
    ledger.check_row(1, None)  # was a pair, is skipped now (tool use): its pair stands
    with pytest.raises(FilesChanged, match="row 2 of the dataset is not the row run run1 wrote an outcome for"):
        ledger.check_row(2, "b")
    ledger.close()


def _delivered(client, keys, batch_id, record, texts, scores):
    """A finished job's result as the reward worker leaves it: the generated batch and its scores, then its message."""
    from rsample.workers.common.messages import Candidate, GeneratedBatch, GeneratedPrompt

    batch = GeneratedBatch(batch_id, [GeneratedPrompt(record, [Candidate(text, [i]) for i, text in enumerate(texts)], len(texts))])
    client.set(keys.batch(batch_id), batch.to_json())
    client.hset(keys.scores(batch_id), "0", json.dumps({record.prompt_id: {"scores": scores}}))
    client.xadd(keys.ready, {"batch_id": batch_id})


@pytest.mark.parametrize("first", ["finished", "failed"])
def test_a_row_delivered_twice_in_one_read_is_written_from_one_delivery(redis_client, tmp_path, first):
    """A job fed again as lost (`Feeder.refeed`) whose first run finished after all: both came back in one read. Their
    rows were mixed: one sampling's candidates with the other's (`num_candidates` 3 beside 4 score rows), or the first
    delivery's failure recorded beside the second's pair, which `--retry-failed` then wrote a second time."""
    from rsample.producer.driver.collector import Collector
    from rsample.workers.common.config import DataSelection, RunConfig
    from rsample.workers.common.messages import PromptRecord
    from rsample.workers.runtime.keys import RunKeys

    config = RunConfig(run_id="twice", data=DataSelection("d"), policy="p", reward_models=("rm",))
    keys = RunKeys("twice")
    record = PromptRecord("X", [{"role": "user", "content": "hi"}], row_index=2)
    if first == "finished":
        _delivered(redis_client, keys, "r0", record, ["a0", "a1", "a2"], [0.0, 2.0, 1.0])
    else:
        redis_client.xadd(keys.ready, {"batch_id": "r0", "failed": "generation failed: RuntimeError: CUDA error",
                                       "prompts": json.dumps([[2, "X"]])})
    _delivered(redis_client, keys, "r2-again1", record, ["b0", "b1", "b2", "b3"], [3.0, 0.0, 1.0, -4.0])
    ledger = Ledger(tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl", "twice")
    Collector(redis_client, config, ledger).step(block_ms=None)
    assert ledger.retry_failed() == []  # the row was produced: nothing to retry
    ledger.close()
    [row] = lines(tmp_path / "pairs.jsonl")
    texts = [score["completion"] for score in lines(tmp_path / "scores.jsonl")]
    kept = ["a0", "a1", "a2"] if first == "finished" else ["b0", "b1", "b2", "b3"]  # the first delivery that produced it
    assert texts == kept and row["num_candidates"] == len(kept)
    assert (row["chosen"][-1]["content"], row["rejected"][-1]["content"]) == (("a1", "a0") if first == "finished" else ("b0", "b3"))
    assert [o["outcome"] for o in lines(tmp_path / "pairs.outcomes.jsonl")[1:]] == [PAIR]
