"""Typed Parquet copies of the outputs (`--parquet`, `rsample parquet`): the readers that infer a JSONL file's types from
its first rows (several runs' files at once, open-instruct's local files) read them, with every value as written."""

import json
import math
import os

import pytest
from conftest import read_jsonl, rsample, write_jsonl

ZERO_COST = ("--policy", "echo", "--backend", "echo", "--n", "3", "--reward-backend", "length", "--reward-model", "rm=org/rm",
             "--no-progress")
WITH_REFERENCE = [{"messages": [{"role": "user", "content": f"name a lake {i}"}, {"role": "assistant", "content": "Baikal"}]}
                  for i in range(4)]
PROMPT_ONLY = [{"prompt": f"name a river, number {i}"} for i in range(5)]


def run(tmp_path, name, rows, *extra):
    dataset = write_jsonl(tmp_path / f"{name}.data.jsonl", rows)
    folder = tmp_path / name
    folder.mkdir()
    rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(folder / "pairs.jsonl"), *extra)
    return folder


def same_values(parquet_rows: list[dict], jsonl_rows: list[dict]) -> bool:
    """Value for value, ints read as floats where the column is float (a reward function may return 1)."""
    def close(a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
        if isinstance(a, float) or isinstance(b, float):
            return a is not None and b is not None and math.isclose(a, b, rel_tol=0, abs_tol=0)
        return a == b
    return close(parquet_rows, jsonl_rows)


def test_every_output_gets_a_parquet_copy_with_its_rows_as_written(tmp_path):
    from datasets import load_dataset

    folder = run(tmp_path, "both", PROMPT_ONLY + WITH_REFERENCE, "--scores-out", str(tmp_path / "both" / "scores.jsonl"),
                 "--sft-out", str(tmp_path / "both" / "sft.jsonl"), "--parquet")
    for kind in ("pairs", "scores", "sft"):
        written = read_jsonl(folder / f"{kind}.jsonl")
        assert written, kind
        loaded = load_dataset("parquet", data_files=str(folder / f"{kind}.parquet"), split="train").to_list()
        assert same_values(loaded, written), kind
    pairs = read_jsonl(folder / "pairs.jsonl")
    assert {row["reference_completion"] for row in pairs} == {None, "Baikal"}  # both kinds of prompt made pairs


def test_a_parquet_copy_never_outlives_the_rows_it_copied(tmp_path):
    """Written again without --parquet (--overwrite, a resume, --retry-failed), the JSONL changed and the old copy
    stayed: a reader pointed at pairs.parquet trained on the earlier rows without a word. A copy that still matches
    stays."""
    import pyarrow.parquet as pq

    folder = tmp_path / "out"
    out, scores = folder / "pairs.jsonl", folder / "scores.jsonl"
    outputs = ("--out", str(out), "--scores-out", str(scores))
    first = write_jsonl(tmp_path / "rivers.jsonl", PROMPT_ONLY)
    rsample("run", "--dataset", str(first), *ZERO_COST, *outputs, "--parquet")
    assert pq.read_table(out.with_suffix(".parquet")).num_rows == len(read_jsonl(out)) > 0
    os.utime(out.with_suffix(".parquet"), ns=(0, 0))  # copied with the folder, its times not kept: still the same rows
    again = rsample("run", "--dataset", str(first), *ZERO_COST, *outputs)  # complete already: nothing changes
    assert out.with_suffix(".parquet").exists() and "removed" not in again.stderr
    lakes = write_jsonl(tmp_path / "lakes.jsonl", [{"prompt": f"name a lake, number {i}"} for i in range(3)])
    result = rsample("run", "--dataset", str(lakes), *ZERO_COST, *outputs, "--overwrite")
    assert not out.with_suffix(".parquet").exists() and not scores.with_suffix(".parquet").exists()
    assert f"removed {out.with_suffix('.parquet')}: the Parquet copy of {out} as it was before" in result.stderr
    assert all("lake" in row["messages"][0]["content"] for row in read_jsonl(out))
    rsample("run", "--dataset", str(first), *ZERO_COST, *outputs, "--overwrite", "--parquet")
    size = out.stat().st_size
    oceans = write_jsonl(tmp_path / "oceans.jsonl", [{"prompt": row["prompt"].replace("river", "ocean")} for row in PROMPT_ONLY])
    rsample("run", "--dataset", str(oceans), *ZERO_COST, *outputs, "--overwrite")  # other rows, the same size
    assert out.stat().st_size == size and not out.with_suffix(".parquet").exists()
    rsample("parquet", str(out))
    text = out.read_text()
    out.write_text(text.replace("ocean, number 4", "ocean, number 5"))  # changed in place, its size kept
    rsample("run", "--dataset", str(oceans), *ZERO_COST, *outputs)
    assert not out.with_suffix(".parquet").exists()


def test_no_parquet_file_rsample_did_not_write_as_that_copy_is_ever_removed(tmp_path):
    """Removed by age alone, a dataset `train.parquet` went with `--out train.jsonl`, and a user's own pairs.parquet."""
    import pandas

    dataset = tmp_path / "train.parquet"
    pandas.DataFrame(PROMPT_ONLY).to_parquet(dataset)
    mine = tmp_path / "mine" / "pairs.parquet"
    mine.parent.mkdir()
    pandas.DataFrame({"note": ["my own table"]}).to_parquet(mine)
    for out in (tmp_path / "train.jsonl", mine.with_suffix(".jsonl")):
        os.utime(dataset, ns=(0, 0))
        os.utime(mine, ns=(0, 0))
        result = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out), "--overwrite")
        assert "removed" not in result.stderr and len(read_jsonl(out)) == len(PROMPT_ONLY)
    assert pandas.read_parquet(dataset).to_dict("records") == PROMPT_ONLY and pandas.read_parquet(mine)["note"].tolist() == ["my own table"]


def test_overwrite_keeps_a_copy_that_is_the_dataset_or_still_matches(tmp_path):
    """A second round reads the first one's copy as its prompts, `--out` the same: --overwrite removed its dataset. And
    --overwrite on a run's own complete output is a resume with nothing to do: its current copy went."""
    folder = tmp_path / "out"
    out = folder / "pairs.jsonl"
    rsample("run", "--dataset", str(write_jsonl(tmp_path / "rows.jsonl", PROMPT_ONLY)), *ZERO_COST, "--out", str(out), "--parquet")
    copy = out.with_suffix(".parquet")
    rows = copy.read_bytes()
    again = rsample("run", "--dataset", str(tmp_path / "rows.jsonl"), *ZERO_COST, "--out", str(out), "--overwrite")
    assert copy.read_bytes() == rows and "removed" not in again.stderr
    second = rsample("run", "--dataset", str(copy), *ZERO_COST, "--prompt-column", "messages", "--out", str(out), "--overwrite",
                     check=False)
    assert copy.read_bytes() == rows and "removed" not in second.stderr, second.stderr


def test_two_runs_files_load_together_where_their_jsonl_does_not(tmp_path):
    """One run scored references, one did not: its `reference_completion_score` is null in every row, which a JSONL
    reader types as null and then cannot merge with the other file's scores."""
    from datasets import load_dataset

    plain = run(tmp_path, "plain", WITH_REFERENCE, "--parquet")
    scored = run(tmp_path, "scored", WITH_REFERENCE, "--include-reference", "--parquet")
    assert all(row["reference_completion_score"] is None for row in read_jsonl(plain / "pairs.jsonl"))
    with pytest.raises(Exception):  # the failure the copies exist for
        load_dataset("json", data_files=[str(plain / "pairs.jsonl"), str(scored / "pairs.jsonl")], split="train")
    both = load_dataset("parquet", data_files=[str(plain / "pairs.parquet"), str(scored / "pairs.parquet")], split="train")
    expected = read_jsonl(plain / "pairs.jsonl") + read_jsonl(scored / "pairs.jsonl")
    assert same_values(both.to_list(), expected)
    assert {json.dumps(row["reference_completion_score"]) for row in both} >= {"null"}


def test_a_file_read_block_by_block_keeps_its_types_where_the_first_block_has_no_reference(tmp_path):
    """As a file of millions of rows is read: the first blocks have only prompts without a reference."""
    from datasets import load_dataset

    from rsample.producer.parquet import write_parquet

    folder = run(tmp_path, "mixed", PROMPT_ONLY + WITH_REFERENCE)
    rows = read_jsonl(folder / "pairs.jsonl")
    ordered = sorted(rows, key=lambda row: row["reference_completion"] is not None)  # the referenced ones last
    big = write_jsonl(tmp_path / "big.jsonl", ordered * 3)
    block = max(len(line) for line in big.read_text().splitlines()) + 2  # about one row per block
    copy = write_parquet(big, block_bytes=block)
    loaded = load_dataset("parquet", data_files=str(copy), split="train").to_list()
    assert same_values(loaded, ordered * 3)
    assert loaded[-1]["reference_completion"] == "Baikal"
    long = {**ordered[0], "chosen": [*ordered[0]["chosen"][:-1], {"role": "assistant", "content": "river " * (2 << 18)}]}
    huge = write_jsonl(tmp_path / "huge.jsonl", [ordered[1], long, ordered[2]])  # a row of 3 MiB, over the 1 MiB block
    copy = write_parquet(huge, block_bytes=1 << 20)
    assert same_values(load_dataset("parquet", data_files=str(copy), split="train").to_list(), [ordered[1], long, ordered[2]])


def test_rsample_parquet_types_a_file_from_its_first_row_and_refuses_others_in_one_line(tmp_path):
    from datasets import load_dataset

    folder = run(tmp_path, "later", WITH_REFERENCE, "--scores-out", str(tmp_path / "later" / "scores.jsonl"))
    done = rsample("parquet", str(folder / "pairs.jsonl"), str(folder / "scores.jsonl"))
    assert done.stdout.split() == ["wrote", str(folder / "pairs.parquet"), "wrote", str(folder / "scores.parquet")]
    scores = load_dataset("parquet", data_files=str(folder / "scores.parquet"), split="train")
    assert scores.features["scores"].keys() == {"rm"} and same_values(scores.to_list(), read_jsonl(folder / "scores.jsonl"))

    dataset = write_jsonl(tmp_path / "data.jsonl", WITH_REFERENCE)
    refused = rsample("parquet", str(dataset), check=False)
    assert refused.returncode == 2 and not (tmp_path / "data.parquet").exists()
    assert refused.stderr.strip() == f"error: {dataset}: not an rsample output file (pairs, scores or sft JSONL)"

    mixed = write_jsonl(tmp_path / "mixed.jsonl", [*read_jsonl(folder / "pairs.jsonl"),
                                                   {**read_jsonl(folder / "pairs.jsonl")[0], "chosen_score": {"other": 1.0}}])
    refused = rsample("parquet", str(mixed), check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "does not have the columns of an rsample pairs file scored by rm" in refused.stderr
    assert not (tmp_path / "mixed.parquet").exists() and not list(tmp_path.glob(".mixed.parquet*"))


def test_a_parquet_copy_replaces_no_file_that_is_not_the_runs(tmp_path):
    """Neither one of the user's (without --overwrite) nor the JSONL output itself (`--out pairs.parquet`)."""
    dataset = write_jsonl(tmp_path / "data.jsonl", PROMPT_ONLY)
    (tmp_path / "out").mkdir()
    mine = tmp_path / "out" / "pairs.parquet"
    mine.write_bytes(b"my own file")
    refused = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(tmp_path / "out" / "pairs.jsonl"), "--parquet", check=False)
    assert refused.returncode == 2 and f"{mine} exists and is not the output of this run: pass --overwrite" in refused.stderr
    assert mine.read_bytes() == b"my own file" and not (tmp_path / "out" / "pairs.jsonl").exists()
    same = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(tmp_path / "pairs.parquet"), "--parquet", check=False)
    assert same.returncode == 2 and "--out and the Parquet copy of --out are the same file" in same.stderr


def test_a_parquet_copy_may_never_replace_the_dataset(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    dataset = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(PROMPT_ONLY), dataset)
    before = dataset.read_bytes()
    refused = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(tmp_path / "data.jsonl"), "--parquet", check=False)
    assert refused.returncode == 2 and "the Parquet copy of --out" in refused.stderr and "is the dataset itself" in refused.stderr
    assert dataset.read_bytes() == before and not (tmp_path / "data.jsonl").exists()
