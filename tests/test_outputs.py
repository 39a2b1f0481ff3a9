"""Never clobber a user's file: outputs that are not this run's are refused in one line, before any work."""

from __future__ import annotations

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
    assert other.returncode == 2 and "output, made with other settings: pass --overwrite" in other.stderr
    with pytest.raises(RsampleError, match="--out and --scores-out are the same file"):
        check_outputs("r", out, out)
