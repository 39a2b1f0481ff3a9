import json

import pytest

from rsample.producer.dataset import iter_rows
from rsample.producer.prompts import RowSkip
from rsample.workers.common.config import DataSelection
from rsample.workers.common.errors import RsampleError


def _rows(path, **selection):
    return list(iter_rows(DataSelection(str(path), **selection)))


def test_jsonl_bad_lines_become_skips_with_line_numbers(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"prompt": "one"}\n'
        b"\n"
        b"{not json\n"
        b'{"prompt": "bad \xff\xfe bytes"}\n'
        b'{"prompt": "four"}\n'
    )
    rows = _rows(path)
    assert [index for index, _ in rows] == [0, 1, 2, 3]
    assert rows[0][1] == {"prompt": "one"}
    assert isinstance(rows[1][1], RowSkip) and rows[1][1].reason == "invalid JSON" and rows[1][1].detail.startswith("row 1 (mixed.jsonl line 3): ")
    assert isinstance(rows[2][1], RowSkip) and rows[2][1].reason == "invalid UTF-8" and "line 4" in rows[2][1].detail
    assert rows[3][1] == {"prompt": "four"}


def test_a_line_cut_short_is_said_as_json_says_it(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_bytes(b'{"prompt": "one"}\r\n{"prompt": "cut off\r\n{"prompt": "three"}\n')
    _, (_, skip), _ = _rows(path)
    assert skip.detail == "row 1 (cut.jsonl line 2): Unterminated string starting at column 12"  # not its line break


def test_slice_with_start_end_and_num_prompts(tmp_path):
    path = tmp_path / "ten.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(10)))
    assert [i for i, _ in _rows(path, start=2, end=6)] == [2, 3, 4, 5]
    assert [i for i, _ in _rows(path, start=3, num_prompts=2)] == [3, 4]
    assert [i for i, _ in _rows(path, start=8, num_prompts=5)] == [8, 9]


def test_parquet_through_datasets(tmp_path):
    import datasets

    path = tmp_path / "prompts.parquet"
    datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]).to_parquet(str(path))
    assert [row["prompt"] for _, row in _rows(path, start=1)] == ["b", "c"]


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(RsampleError, match="dataset file not found: .*nope.jsonl"):
        _rows(tmp_path / "nope.jsonl")


def test_unknown_hub_dataset_fails_offline_in_one_line():
    with pytest.raises(RsampleError, match="cannot load dataset 'nobody/no-such-dataset'") as info:
        _rows("nobody/no-such-dataset")
    assert "\n" not in str(info.value)


def test_a_byte_order_mark_and_half_an_emoji_lose_no_good_row(tmp_path):
    from rsample.producer.prompts import extract_prompt

    path = tmp_path / "exported.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "first"}\n'  # a BOM, as some editors and exports write
                     b'{"messages": [{"role": "user", "content": "cut emoji \\ud83d"}]}\n'  # JSON's escape of half a UTF-16 pair
                     b'{"prompt": "third"}\n')
    rows = [row for _, row in _rows(path)]
    assert rows[0] == {"prompt": "first"} and rows[2] == {"prompt": "third"}
    skip = extract_prompt(rows[1], 1)
    assert isinstance(skip, RowSkip) and skip.reason == "invalid text"
    assert skip.detail == "row 1: a lone UTF-16 surrogate '\\ud83d' (half of an emoji?)"
    assert extract_prompt(rows[0], 0).messages == [{"role": "user", "content": "first"}]


def test_json_lines_named_json_are_read_line_by_line_and_a_json_array_as_one_document(tmp_path):
    lines = tmp_path / "lines.json"
    lines.write_text('{"prompt": "one"}\n{"prompt": broken\n{"prompt": "three"}\n')
    rows = _rows(lines)
    assert [row for _, row in rows if not isinstance(row, RowSkip)] == [{"prompt": "one"}, {"prompt": "three"}]
    assert rows[1][1].reason == "invalid JSON" and rows[1][1].detail.startswith("row 1 (lines.json line 2): ")
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"prompt": "one"}, {"prompt": "two"}], indent=2))
    assert [row["prompt"] for _, row in _rows(array)] == ["one", "two"]


def test_a_folder_of_json_lines_reads_the_files_datasets_would_in_its_order_and_skips_bad_lines(tmp_path):
    import datasets

    folder = tmp_path / "shards"
    (folder / "sub").mkdir(parents=True)
    shards = {"b.jsonl": ["b1", "b2"], "a.jsonl": ["a1"], "a10.jsonl": ["a10"], "a9.json": ["a9"], "sub/z.jsonl": ["z1"]}
    for name, prompts in shards.items():
        (folder / name).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    expected = datasets.load_dataset(str(folder), split="train")["prompt"]  # datasets' own files and order
    assert [row["prompt"] for _, row in _rows(folder)] == expected
    with (folder / "a.jsonl").open("a") as handle:
        handle.write('{"prompt": "cut\n{"messages": [{"role": "user", "content": "a3"}]}\n')  # a bad line amid good ones
    rows = _rows(folder)
    assert [index for index, _ in rows] == list(range(len(expected) + 2))
    assert isinstance(rows[1][1], RowSkip) and rows[1][1].reason == "invalid JSON" and rows[1][1].detail.startswith("row 1 (a.jsonl line 2): ")
    assert rows[2][1]["messages"][0]["content"] == "a3" and rows[3][1] == {"prompt": "a10"}


def test_a_folder_names_its_splits_by_file_names(tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"prompt": "to train on"}\n')
    (folder / "test.jsonl").write_text('{"prompt": "to test on"}\n')
    assert [row["prompt"] for _, row in _rows(folder, split="test")] == ["to test on"]
    with pytest.raises(RsampleError, match=r"has no split 'validation' \(its splits, by file names: test, train\)"):
        _rows(folder, split="validation")


def test_a_subset_is_read_from_a_folder_laid_out_as_a_hub_repository(tmp_path):
    """A copy of a Hub dataset repository with several configurations (GSM8K's main and socratic): its README declares
    them, as on the Hub, and `datasets` needs the subset's name, which --subset passes on."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = tmp_path / "gsm8k"
    for subset in ("main", "socratic"):
        (repo / subset).mkdir(parents=True)
        pq.write_table(pa.table({"question": [f"{subset} q{i}" for i in range(3)], "answer": ["#### 1"] * 3}),
                       repo / subset / "train-00000-of-00001.parquet")
    (repo / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {subset}\n  data_files:\n  - split: train\n    path: {subset}/train-*\n" for subset in ("main", "socratic")) + "---\n")
    assert [row["question"] for _, row in _rows(repo, subset="socratic", start=1)] == ["socratic q1", "socratic q2"]
    with pytest.raises(RsampleError, match=r"cannot load dataset .*gsm8k' \(split 'train'\): Config name is missing. \(name one with --subset: main, socratic\)$"):
        _rows(repo)
    with pytest.raises(RsampleError, match=r"--subset applies to Hub datasets and folders; the file .*main/train-00000-of-00001.parquet is one"):
        _rows(repo / "main" / "train-00000-of-00001.parquet", subset="main")


def test_a_bad_line_is_described_in_plain_words(tmp_path):
    path = tmp_path / "tabs.jsonl"
    path.write_bytes(b'{"prompt": "a\tb"}\n{"prompt": "ok"}\n')  # a raw tab: JSON wants \\t
    [(_, skip), (_, good)] = _rows(path)
    assert skip.detail == "row 0 (tabs.jsonl line 1): Invalid control character at column 14" and good == {"prompt": "ok"}


def test_a_folder_of_json_lines_whose_readme_declares_configs_is_read_by_them(tmp_path):
    """As `datasets` reads a Hub repository's copy: its default config, or the files its README maps to the split,
    not every file whose name says `train`."""
    repo = tmp_path / "hub-copy"
    for subset in ("main", "socratic"):
        (repo / subset).mkdir(parents=True)
        (repo / subset / "train.jsonl").write_text("".join(json.dumps({"question": f"{subset} {i}"}) + "\n" for i in range(3)))
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: main\n  default: true\n  data_files:\n  - split: train\n    path: main/*\n"
                                    "- config_name: socratic\n  data_files:\n  - split: train\n    path: socratic/*\n---\n# a card\n")
    assert [row["question"] for _, row in _rows(repo)] == ["main 0", "main 1", "main 2"]
    assert [row["question"] for _, row in _rows(repo, subset="socratic")] == ["socratic 0", "socratic 1", "socratic 2"]
    mapped = tmp_path / "mapped"
    (mapped / "data").mkdir(parents=True)
    (mapped / "data" / "learn.jsonl").write_text(json.dumps({"prompt": "learn"}) + "\n")
    (mapped / "data" / "eval.jsonl").write_text(json.dumps({"prompt": "eval"}) + "\n")
    (mapped / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/learn.jsonl\n"
                                      "  - split: test\n    path: data/eval.jsonl\n---\n")
    assert [row["prompt"] for _, row in _rows(mapped)] == ["learn"]
    assert [row["prompt"] for _, row in _rows(mapped, split="test")] == ["eval"]


@pytest.mark.parametrize("readme", ["# notes, no header\n", "---\nlicense: [unclosed\n---\n", "---\n- a list\n---\n",
                                    "\ufeff---\nlicense: mit\n---\n", "---\nconfigs: []\n---\n"])
def test_a_folder_whose_readme_declares_no_configs_is_read_by_file_names(tmp_path, readme):
    """A README that is no dataset card, or a card without `configs`, leaves the folder to the split's file names."""
    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "kept"}) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"prompt": "other split"}) + "\n")
    (tmp_path / "README.md").write_text(readme)
    assert [row["prompt"] for _, row in _rows(tmp_path)] == ["kept"]


def test_a_bad_line_in_a_folder_read_by_its_readme_configs_is_one_skip(tmp_path):
    """The configs pick the files, as `datasets` resolves them; the files are still read line by line, so that a bad
    line costs one row instead of the whole dataset."""
    repo = tmp_path / "hub-copy"
    for subset in ("main", "socratic"):
        (repo / subset).mkdir(parents=True)
        (repo / subset / "train.jsonl").write_text(json.dumps({"question": f"{subset} 0"}) + '\n{"question": broken\n'
                                                   + json.dumps({"question": f"{subset} 2"}) + "\n")
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: main\n  default: true\n  data_files:\n  - split: train\n    path: main/*\n"
                                    "- config_name: socratic\n  data_files:\n  - split: train\n    path: socratic/*\n---\n")
    for subset in ("main", "socratic"):
        first, skip, last = _rows(repo, subset=None if subset == "main" else subset)
        assert (first[1], last[1]) == ({"question": f"{subset} 0"}, {"question": f"{subset} 2"})
        assert isinstance(skip[1], RowSkip) and skip[1].detail.startswith("row 1 (train.jsonl line 2): ")
    with pytest.raises(RsampleError) as error:
        _rows(repo, split="test")
    assert str(error.value) == f"dataset folder {repo} has no split 'test' in its 'main' configuration (its splits: train)"


def test_a_byte_order_mark_on_a_line_of_its_own_is_no_row(tmp_path):
    from rsample.producer.dataset import count_rows

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf\r\n" + b'{"prompt": "q0"}\r\n{"prompt": "q1"}')
    assert _rows(path) == [(0, {"prompt": "q0"}), (1, {"prompt": "q1"})]
    assert count_rows(DataSelection(str(path))) == 2  # the feeder's count and the rows agree


def test_gzipped_json_lines_are_read_line_by_line_alone_or_in_a_folder(tmp_path):
    import gzip

    from rsample.producer.dataset import count_rows

    lines = b'{"prompt": "a"}\n{not json\n{"prompt": "c"}\n'
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(lines))
    rows = _rows(path)
    assert (rows[0], rows[2]) == ((0, {"prompt": "a"}), (2, {"prompt": "c"}))
    assert isinstance(rows[1][1], RowSkip) and rows[1][1].detail.startswith("row 1 (rows.jsonl.gz line 2): ")
    assert count_rows(DataSelection(str(path))) == 3
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train-0.json.gz").write_bytes(gzip.compress(lines))
    assert [row for _, row in _rows(folder) if not isinstance(row, RowSkip)] == [{"prompt": "a"}, {"prompt": "c"}]
    (tmp_path / "rows.parquet.gz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(RsampleError, match="unsupported dataset file type '.gz'"):
        _rows(tmp_path / "rows.parquet.gz")


def test_a_folder_mixing_file_formats_is_refused_rather_than_read_in_part(tmp_path):
    """datasets reads a folder's commonest format only: the other files' rows would be lost without a word."""
    import datasets

    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text(json.dumps({"prompt": name}) + "\n")
    datasets.Dataset.from_list([{"prompt": "c"}]).to_parquet(str(tmp_path / "c.parquet"))
    with pytest.raises(RsampleError, match=r"mixes file formats in split .train. \(.json, .parquet\)"):
        _rows(tmp_path)
    (tmp_path / "c.parquet").unlink()
    (tmp_path / "c.json").write_text(json.dumps([{"prompt": "c"}]))  # a JSON array beside JSON Lines: one format
    assert sorted(row["prompt"] for _, row in _rows(tmp_path)) == ["a.jsonl", "b.jsonl", "c"]


def test_a_dataset_saved_to_disk_is_read_as_one_split(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}]).save_to_disk(str(tmp_path / "saved"))
    assert _rows(tmp_path / "saved") == [(0, {"prompt": "a"}), (1, {"prompt": "b"})]
    with pytest.raises(RsampleError, match="the saved dataset .* is one split"):
        _rows(tmp_path / "saved", split="test")


@pytest.mark.parametrize("other", ["LICENSE", "notes.txt", "notes.md", "config.yaml"])
def test_a_folder_of_json_lines_with_a_licence_or_notes_beside_them_is_read(tmp_path, other):
    """No data format of its own: never counted as a second format (the folder was refused)."""
    (tmp_path / "data.jsonl").write_text(json.dumps({"prompt": "a"}) + "\n")
    (tmp_path / other).write_text("MIT License\n")
    assert _rows(tmp_path) == [(0, {"prompt": "a"})]


@pytest.mark.parametrize("damage", ["cut short", "not gzip"])
def test_a_damaged_gzipped_file_is_one_clear_error(tmp_path, damage):
    """A copy that did not finish raised EOFError, which the command line took for Ctrl-D ("Aborted!")."""
    import gzip

    lines = b"".join(json.dumps({"prompt": f"q{i}"}).encode() + b"\n" for i in range(2000))
    for content in (lines, json.dumps([{"prompt": f"q{i}"} for i in range(2000)], indent=2).encode()):  # rows, or one array
        data = gzip.compress(content)
        path = tmp_path / "rows.jsonl.gz"
        path.write_bytes(data[: len(data) // 2] if damage == "cut short" else content)
        with pytest.raises(RsampleError, match=r"rows.jsonl.gz.*(cannot be decompressed \((EOFError|BadGzipFile)|Compressed file ended)"):
            _rows(path)  # an array goes to datasets, whose error says it


def test_a_gzipped_file_damaged_inside_is_one_clear_error(tmp_path):
    """Not cut short but damaged inside (a bad block): zlib.error went past `_lines`/`_head` as a traceback."""
    import gzip

    from rsample.producer.dataset import count_rows

    rows = "".join(json.dumps({"prompt": f"question {i} " + "x" * (i % 50)}) + "\n" for i in range(2000))
    data = bytearray(gzip.compress(rows.encode()))
    for i in range(200, 260):
        data[i] ^= 0x5A
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(RsampleError, match="cannot be decompressed"):
        count_rows(DataSelection(str(path)))


def test_a_folder_mixing_jsonl_and_tsv_is_refused(tmp_path):
    """.tsv is a format datasets reads (as csv) but not one rsample names: datasets reads the commonest format only: the JSON Lines rows were lost without a word ."""
    from rsample.producer.dataset import count_rows

    folder = tmp_path / "data"
    folder.mkdir()
    _write_jsonl(folder / "a.jsonl", [{"prompt": f"q{i}"} for i in range(5)])
    for name in ("b.tsv", "c.tsv"):
        (folder / name).write_text("prompt\n" + "".join(f"{name}{i}\n" for i in range(3)))
    with pytest.raises(RsampleError, match="mixes file formats"):
        count_rows(DataSelection(str(folder)))  # it counted 6 rows: the tsv files' only


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_two_folders_of_one_name_and_an_edited_file_each_give_their_own_rows(tmp_path):
    """`datasets` caches a folder whose card declares `configs` by the folder's name alone: a second folder named `repo`
    gave the first one's rows, and so did the first one after a file in it was edited, without a word."""
    import pandas as pd

    card = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.parquet\n---\n# prompts\n"
    folders = {}
    for name, prompts in (("a", ["from folder a"]), ("b", ["from folder b", "and its second row"])):
        repo = tmp_path / name / "repo"
        (repo / "data").mkdir(parents=True)
        (repo / "README.md").write_text(card)
        pd.DataFrame({"prompt": prompts}).to_parquet(repo / "data" / "train.parquet")  # read by datasets (CSV: by rsample)
        folders[name] = repo
    assert _rows(folders["a"]) == [(0, {"prompt": "from folder a"})]
    assert _rows(folders["b"]) == [(0, {"prompt": "from folder b"}), (1, {"prompt": "and its second row"})]
    caches = tmp_path / "hf-datasets-cache" / "rsample-folders"
    before = {path.name for path in caches.iterdir()}
    pd.DataFrame({"prompt": ["edited in a", "added to a"]}).to_parquet(folders["a"] / "data" / "train.parquet")
    assert _rows(folders["a"]) == [(0, {"prompt": "edited in a"}), (1, {"prompt": "added to a"})]
    after = {path.name for path in caches.iterdir()}  # the copy of `a` before the edit is gone; `b`'s stays
    assert len(before) == len(after) == 2 and len(before & after) == 1
    assert _rows(folders["b"]) == [(0, {"prompt": "from folder b"}), (1, {"prompt": "and its second row"})]
    assert {path.name for path in caches.iterdir()} == after


def test_a_folder_whose_card_names_csv_files_is_read_as_written_and_its_parquet_checked(tmp_path):
    """A Hub repository's copy whose card declares its CSV files went through pandas (`007` read as 7, `NA` as null),
    and Parquet shards of text against numbers were not checked there."""
    import pandas as pd

    card = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*.{kind}\n---\n"
    (tmp_path / "csv" / "data").mkdir(parents=True)
    (tmp_path / "csv" / "README.md").write_text(card.format(kind="csv"))
    (tmp_path / "csv" / "data" / "train-00000-of-00001.csv").write_text("prompt,answer\nq one,007\nq two,NA\n")
    assert [row for _, row in _rows(tmp_path / "csv")] == [{"prompt": "q one", "answer": "007"}, {"prompt": "q two", "answer": "NA"}]
    (tmp_path / "pq" / "data").mkdir(parents=True)
    (tmp_path / "pq" / "README.md").write_text(card.format(kind="parquet"))
    pd.DataFrame({"prompt": ["a"], "answer": [7]}).to_parquet(tmp_path / "pq" / "data" / "train-00000-of-00002.parquet")
    pd.DataFrame({"prompt": ["b"], "answer": ["007"]}).to_parquet(tmp_path / "pq" / "data" / "train-00001-of-00002.parquet")
    with pytest.raises(RsampleError, match=r"column 'answer' holds (large_)?string in train-00001-of-00002\.parquet but int64"):
        _rows(tmp_path / "pq")


@pytest.mark.parametrize("linked", [False, True], ids=["files", "links to blobs"])
def test_a_resume_judges_a_folder_s_files_in_the_order_their_rows_are_read(tmp_path, linked):
    """`datasets` reads `train.jsonl` before `my_train.jsonl` (its split patterns, not the names' order): rows appended to
    `train.jsonl` move every row of `my_train.jsonl`, and the check, which took the names' order, let them pass. A
    Hub snapshot's files are links to blobs elsewhere."""
    from rsample.producer.dataset import dataset_change, fingerprint, read_order

    folder, blobs = tmp_path / "shards", tmp_path / "blobs"
    (folder / ".git").mkdir(parents=True)
    blobs.mkdir()
    for name, prefix in (("train.jsonl", "train"), ("my_train.jsonl", "my_train")):
        target = blobs / name if linked else folder / name
        target.write_text("".join(json.dumps({"prompt": f"{prefix} {i}"}) + "\n" for i in range(2)))
        if linked:
            (folder / name).symlink_to(target)
    (folder / "NOTES.txt").write_text("not data\n")
    (folder / ".git" / "index").write_text("git's own\n")
    selection = DataSelection(str(folder))
    assert [row["prompt"] for _, row in _rows(folder)] == ["train 0", "train 1", "my_train 0", "my_train 1"]
    assert read_order(selection) == ["train.jsonl", "my_train.jsonl"]
    stored = {**fingerprint(selection), ".git/index": [10, "an older version kept it"]}

    def change():
        return dataset_change(stored, str(folder), read_order(selection))

    with (folder / "my_train.jsonl").open("a") as handle:  # after the last row read: every number stays
        handle.write(json.dumps({"prompt": "my_train 2"}) + "\n")
    for unread in ("validation.jsonl", "zz_notes.txt", "NOTES.txt", ".git/index"):  # files the run does not read, added or edited
        (folder / unread).write_text('{"prompt": "not in the split"}\n')
    assert change() is None
    with (folder / "train.jsonl").open("a") as handle:
        handle.write(json.dumps({"prompt": "train 2"}) + "\n")
    assert change() == "train.jsonl grew, which moves the rows of my_train.jsonl and after"


def test_a_resume_refuses_a_card_that_reads_other_files_and_takes_a_new_shard_after_the_last(tmp_path):
    from rsample.producer.dataset import dataset_change, fingerprint, read_order

    folder = tmp_path / "repo"
    folder.mkdir()
    for name in ("a.jsonl", "b.jsonl"):
        (folder / name).write_text("".join(json.dumps({"prompt": f"{name} {i}"}) + "\n" for i in range(2)))
    card = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: [{}]\n---\n"
    (folder / "README.md").write_text(card.format("a.jsonl, b.jsonl"))
    selection = DataSelection(str(folder))
    stored = fingerprint(selection)
    assert read_order(selection) == ["a.jsonl", "b.jsonl"]
    (folder / "README.md").write_text(card.format("b.jsonl, a.jsonl"))  # the same files, read in another order
    assert [row["prompt"] for _, row in _rows(folder)] == ["b.jsonl 0", "b.jsonl 1", "a.jsonl 0", "a.jsonl 1"]
    assert dataset_change(stored, str(folder), read_order(selection)) == "README.md has other rows at its start"

    shards = tmp_path / "shards"  # a stream of shards: the last one grew, and the next one came
    shards.mkdir()
    (shards / "train-00000.jsonl").write_text('{"prompt": "s0 0"}\n')
    selection = DataSelection(str(shards))
    stored = fingerprint(selection)
    with (shards / "train-00000.jsonl").open("a") as handle:
        handle.write('{"prompt": "s0 1"}\n')
    (shards / "train-00001.jsonl").write_text('{"prompt": "s1 0"}\n')
    assert dataset_change(stored, str(shards), read_order(selection)) is None


def test_a_jsonl_file_whose_first_row_is_a_list_is_still_read_line_by_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('["a list, not a row"]\n{"prompt": "y"}\n{"prompt": "z"}\n')
    assert _rows(path) == [(0, ["a list, not a row"]), (1, {"prompt": "y"}), (2, {"prompt": "z"})]


@pytest.mark.parametrize("layout", ["one line", "pretty-printed"])
def test_a_jsonl_file_that_holds_one_json_array_is_read_as_its_rows(tmp_path, layout):
    """Read line by line, it was one row that is no object (or an invalid-JSON skip per line): every row lost."""
    rows = [{"prompt": f"p{i}"} for i in range(3)]
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(rows, indent=2 if layout == "pretty-printed" else None) + "\n")
    assert _rows(path) == list(enumerate(rows))


def test_json_python_will_not_read_is_a_skip_and_a_byte_order_mark_on_any_line_is_none(tmp_path):
    """A 5,000-digit number and a line nested 200,000 deep are valid JSON that `json.loads` refuses with a ValueError
    and a RecursionError: they escaped the reader and the run died at them on every restart. Files joined with `cat`
    hold a byte-order mark at each one's first line, which lost that row as invalid JSON."""
    path = tmp_path / "odd.jsonl"
    path.write_bytes(b'{"prompt": "one"}\n{"prompt": "big", "answer": ' + b"9" * 5000 + b"}\n"
                     + b"[" * 200_000 + b"\n\xef\xbb\xbf{\"prompt\": \"joined\"}\n")
    rows = _rows(path)
    assert [row for _, row in rows if not isinstance(row, RowSkip)] == [{"prompt": "one"}, {"prompt": "joined"}]
    big, deep = rows[1][1], rows[2][1]
    assert big.reason == deep.reason == "invalid JSON"
    assert big.detail.startswith("row 1 (odd.jsonl line 2): ") and "4300 digits" in big.detail
    assert deep.detail == "row 2 (odd.jsonl line 3): nested too deeply to read"


def test_a_dataset_dict_saved_to_disk_is_read_by_its_split(tmp_path):
    """`load_dataset(...).save_to_disk(...)` writes a DatasetDict: it was refused as a folder mixing .arrow and .json."""
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}]),
                          "test": datasets.Dataset.from_list([{"prompt": "c"}])}).save_to_disk(str(tmp_path / "saved"))
    assert _rows(tmp_path / "saved") == [(0, {"prompt": "a"}), (1, {"prompt": "b"})]
    assert _rows(tmp_path / "saved", split="test") == [(0, {"prompt": "c"})]
    with pytest.raises(RsampleError, match=r"the saved dataset .*saved has no split 'validation' \(its splits: train, test\)"):
        _rows(tmp_path / "saved", split="validation")


def test_a_csv_row_that_is_no_utf8_is_a_skip_with_its_line_and_the_other_rows_are_kept(tmp_path):
    """`datasets` read a CSV whole: a byte of Windows-1252 failed it ("Invalid UTF8 sequence at string index 1")."""
    path = tmp_path / "sheet.csv"
    path.write_bytes(b"prompt\nhello\ncaf\xe9 au lait\nbye\n")
    (_, hello), (_, skip), (_, bye) = _rows(path)
    assert (hello, bye) == ({"prompt": "hello"}, {"prompt": "bye"})
    assert (skip.reason, skip.detail) == ("invalid UTF-8", "row 1 (sheet.csv line 3): bytes that are no UTF-8")


def test_csv_cells_are_read_as_written_not_retyped_by_pandas(tmp_path):
    """datasets typed each CSV column (pandas): an answer `007` became 7, `NA`, `None` and `null` became null (a
    prompt skipped as empty, a reference dropped), and from row 10,001 on every value was cast to the types of the
    first 10,000 rows (`1e3` became 1000, a 23-digit number lost its digits)."""
    import csv

    path = tmp_path / "big.csv"
    written = [[f"question {i}", f"answer text {i}"] for i in range(10_000)]
    written += [["NA", "007"], ["None", "0.50"], ["null", "1e3"], ["#N/A", "12345678901234567890123"], ["N/A", ""]]
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["prompt", "reference"], *written])
    rows = _rows(path, start=9_998)
    assert [index for index, _ in rows] == list(range(9_998, 10_005))
    expected = [{"prompt": prompt, "reference": reference or None} for prompt, reference in written[9_998:]]
    assert [row for _, row in rows] == expected


def test_a_csv_row_of_too_many_cells_is_a_skip_and_one_of_too_few_has_nulls(tmp_path):
    """pandas failed the whole file at a row of too many cells ("Expected 2 fields in line 3, saw 3")."""
    path = tmp_path / "rows.csv"
    path.write_text('prompt,answer\r\n"What is 1+1?",2\r\nbad row,3,extra\r\n\r\n"multi\r\nline, quoted",4\r\nno answer\r\n', newline="")
    rows = _rows(path)
    assert [index for index, _ in rows] == [0, 1, 2, 3]  # the blank line is no row
    assert rows[0][1] == {"prompt": "What is 1+1?", "answer": "2"}
    assert (rows[1][1].reason, rows[1][1].detail) == (
        "malformed CSV row", "row 1 (rows.csv line 3): 3 cells, but the header names 2 columns (a cell with ',' in it needs quotes)")
    assert rows[2][1] == {"prompt": "multi\r\nline, quoted", "answer": "4"}
    assert rows[3][1] == {"prompt": "no answer", "answer": None}
    from rsample.producer.dataset import count_rows

    assert count_rows(DataSelection(str(path))) == 4


def test_a_csv_quote_never_closed_is_refused_with_its_line_not_read_as_the_rest_of_the_file(tmp_path):
    """Python's csv module (not strict) read the rest of the file as that one cell: three rows gone, one prompt wrong."""
    path = tmp_path / "q.csv"
    path.write_text('prompt,answer\nWhat is one?,1\n"What is two?,2\nWhat is three?,3\nWhat is four?,4\n')
    with pytest.raises(RsampleError, match=r"q\.csv line 3: a quoted cell opens here and is never closed"):
        _rows(path)
    path.write_text('prompt,answer\n"a"b,1\nc,2\n')  # a quote closed in mid-cell: that row alone
    (_, skip), (_, row) = _rows(path)
    assert (skip.reason, row) == ("malformed CSV row", {"prompt": "c", "answer": "2"})


def test_csv_lines_of_spaces_are_no_rows_as_pandas_numbers_them(tmp_path):
    """A line of spaces became a row (an empty prompt) and moved every later row: a run made before could not resume
    ("edited since"); before the header, it was taken for the header."""
    import pandas as pd

    path = tmp_path / "ws.csv"
    path.write_text(" \nprompt,answer\nWhat is one?,1\n  \n\t\nWhat is two?,2\n")
    assert [row for _, row in _rows(path)] == pd.read_csv(path, dtype=str).to_dict("records") == [
        {"prompt": "What is one?", "answer": "1"}, {"prompt": "What is two?", "answer": "2"}]


def test_a_csv_written_by_pandas_names_its_columns_as_pandas_does(tmp_path):
    import pandas as pd

    pd.DataFrame({"prompt": ["a", "b"]}).to_csv(tmp_path / "frame.csv")  # an index column with no name
    assert [row for _, row in _rows(tmp_path / "frame.csv")] == [{"Unnamed: 0": "0", "prompt": "a"}, {"Unnamed: 0": "1", "prompt": "b"}]
    (tmp_path / "twice.csv").write_text("prompt,answer,answer,answer.1\na,b,c,d\n")
    expected = pd.read_csv(tmp_path / "twice.csv", dtype=str).to_dict("records")
    assert [row for _, row in _rows(tmp_path / "twice.csv")] == expected == [{"prompt": "a", "answer": "b", "answer.2": "c", "answer.1": "d"}]


def test_a_json_array_whose_column_mixes_text_and_lists_keeps_its_texts(tmp_path):
    """datasets typed a column that holds text in one row and a list in another as JSON and decoded every text that
    was valid JSON: `"42"` became 42 (a skip, "content is int"), `"null"` a null reference, `  "quoted"  ` quoted."""
    rows = [{"messages": [{"role": "user", "content": "What is 6*7?"}, {"role": "assistant", "content": "42"}]},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "parts one"}]}]},
            {"messages": [{"role": "user", "content": "Say null"}, {"role": "assistant", "content": "null"}]},
            {"messages": [{"role": "user", "content": "true"}]},
            {"messages": [{"role": "user", "content": '  "quoted"  '}]}]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(rows, indent=1))
    assert [row for _, row in _rows(path)] == rows
    gzipped = tmp_path / "mixed.json.gz"
    import gzip

    gzipped.write_bytes(gzip.compress(b"\xef\xbb\xbf" + json.dumps(rows).encode()))
    assert [row for _, row in _rows(gzipped, start=3)] == rows[3:]
    path.write_text(json.dumps(rows, indent=1)[:-9])  # cut short
    with pytest.raises(RsampleError, match=r"mixed\.json is no valid JSON array: .* at line \d+ column \d+$"):
        _rows(path)


@pytest.mark.parametrize("layout", [
    '[{\n  "prompt": "a"\n}, {\n  "prompt": "b"\n}]\n',  # JavaScript's style
    '[ {\n  "prompt" : "a"\n}, {\n  "prompt" : "b"\n} ]\n',  # Jackson's default printer
    '[{"prompt": "a"}\n,{"prompt": "b"}\n]',  # comma first
    '[{"prompt": "a", "tags": [\n "x"]},\n{"prompt": "b", "tags": []}]',
    '[\t{"prompt": "a"},\n{"prompt": "b"}]',
    '[{"prompt": "a"}, {"prompt": "b"}',  # cut: refused
])
def test_a_json_array_is_read_in_any_layout(tmp_path, layout):
    """Only a first line of `[` alone, or one ending in a comma, was taken for an array: other layouts were read as
    JSON Lines, every line "invalid JSON"."""
    path = tmp_path / "rows.json"
    path.write_text(layout)
    if layout.endswith("}"):
        with pytest.raises(RsampleError, match=r"rows\.json is no valid JSON array"):
            _rows(path)
        return
    assert [row["prompt"] for _, row in _rows(path)] == ["a", "b"]
    from rsample.producer.dataset import count_rows

    assert count_rows(DataSelection(str(path))) == 2


def test_a_pretty_printed_json_object_is_refused_as_one_object_not_read_as_bad_lines(tmp_path):
    path = tmp_path / "object.json"
    path.write_text(json.dumps({"version": 1, "data": [{"prompt": "a"}]}, indent=2))
    with pytest.raises(RsampleError, match=r"object\.json holds one JSON object over several lines, not rows"):
        _rows(path)


def test_parquet_files_whose_column_is_text_in_one_and_numbers_in_another_are_refused(tmp_path):
    """datasets cast every file to the first one's types: answers `007` and `0042` of a later file became 7 and 42."""
    import pandas as pd

    (tmp_path / "shards" / "data").mkdir(parents=True)
    pd.DataFrame({"prompt": ["a", "b"], "answer": [1, 2]}).to_parquet(tmp_path / "shards" / "data" / "train-00000-of-00002.parquet")
    pd.DataFrame({"prompt": ["c", "d"], "answer": ["007", "0042"]}).to_parquet(tmp_path / "shards" / "data" / "train-00001-of-00002.parquet")
    with pytest.raises(RsampleError, match=r"column 'answer' holds (large_)?string in train-00001-of-00002\.parquet but int64 in "
                                           r"train-00000-of-00002\.parquet, and datasets would cast"):
        _rows(tmp_path / "shards")
    pd.DataFrame({"prompt": ["a", "b"], "answer": [True, False]}).to_parquet(tmp_path / "shards" / "data" / "train-00000-of-00002.parquet")
    pd.DataFrame({"prompt": ["c", "d"], "answer": [5, 0]}).to_parquet(tmp_path / "shards" / "data" / "train-00001-of-00002.parquet")
    with pytest.raises(RsampleError, match=r"column 'answer' holds int64 in train-00001-of-00002\.parquet but bool in "):
        _rows(tmp_path / "shards")  # 5 was read as True


def test_parquet_files_of_other_columns_are_refused_with_the_columns_that_differ(tmp_path):
    """datasets' CastError says "Couldn't cast" on its first line, and the columns that differ many lines below."""
    import pandas as pd

    (tmp_path / "shards").mkdir()
    pd.DataFrame({"prompt": ["a", "b"]}).to_parquet(tmp_path / "shards" / "train-0.parquet")
    pd.DataFrame({"prompt": ["c"], "source": ["web"]}).to_parquet(tmp_path / "shards" / "train-1.parquet")
    with pytest.raises(RsampleError, match=r"\(CastError: one of its files has columns source that the first has not: give every file the same columns\)$"):
        _rows(tmp_path / "shards")


def test_a_saved_dataset_dict_is_judged_by_the_split_read_for_a_resume(tmp_path):
    """Every file of a saved DatasetDict counted: the test split saved again refused a resume of --split train, naming
    a file the run never reads."""
    import datasets

    from rsample.producer.dataset import dataset_change, fingerprint, read_order

    def save(train: int, test: str) -> None:
        datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": f"p {i}"} for i in range(train)]),
                              "test": datasets.Dataset.from_list([{"prompt": test}])}).save_to_disk(str(tmp_path / "saved"))

    save(3, "t")
    selection = DataSelection(str(tmp_path / "saved"))
    assert read_order(selection) == ["train/data-00000-of-00001.arrow"]
    stored = fingerprint(selection)
    save(3, "another test row")
    assert dataset_change(stored, selection.dataset, read_order(selection)) is None
    save(4, "t")  # Arrow writes a table's length at its start: rows appended are a change, as in a Parquet file
    assert dataset_change(stored, selection.dataset, read_order(selection)) == "train/data-00000-of-00001.arrow has other rows at its start"


def test_a_later_line_of_nothing_but_a_byte_order_mark_keeps_its_row_number(tmp_path):
    """Such a line was always a row (a bad one): reading it as none would move every later row of a run begun before."""
    path = tmp_path / "joined.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n\xef\xbb\xbf\n{"prompt": "b"}\n')
    rows = _rows(path)
    assert [index for index, _ in rows] == [0, 1, 2] and rows[2][1] == {"prompt": "b"}
    assert isinstance(rows[1][1], RowSkip) and rows[1][1].reason == "invalid JSON"


def test_a_media_column_is_not_decoded_so_a_broken_image_breaks_nothing(tmp_path):
    """Every row's image was decoded for nothing, and one that was no image (`PIL.UnidentifiedImageError`) killed the
    coordinator at its row, at every restart."""
    import io

    import datasets
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    rows = [{"prompt": f"q{i}", "image": {"bytes": png.getvalue() if i != 1 else b"not an image", "path": None}} for i in range(3)]
    features = datasets.Features({"prompt": datasets.Value("string"), "image": datasets.Image()})
    dataset = datasets.Dataset.from_list(rows, features=features)
    dataset.to_parquet(tmp_path / "images.parquet")
    dataset.save_to_disk(str(tmp_path / "saved"))
    for source in (tmp_path / "images.parquet", tmp_path / "saved"):
        read = _rows(source)
        assert [row["prompt"] for _, row in read] == ["q0", "q1", "q2"]
        assert read[1][1]["image"]["bytes"] == b"not an image"
