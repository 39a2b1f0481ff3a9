"""Datasets of other shapes than open-instruct's: ShareGPT turns, GSM8K/MATH-style question columns, TRL's
prompt-completion rows. Each is read as the prompt a user means, or refused before any sampling with the flag to use."""

from __future__ import annotations

import json
import re

import pytest
from conftest import read_jsonl, rsample, write_jsonl

from rsample.producer.prompts import RowSkip, extract_prompt
from rsample.workers.common.config import DataSelection
from rsample.workers.common.errors import RsampleError

ZERO_COST = ["--policy", "p", "--reward-model", "r", "--backend", "echo", "--reward-backend", "length", "--no-progress"]
SHAREGPT = {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "name a river"},
                              {"from": "gpt", "value": "the Nile"}, {"from": "human", "value": "and a longer one?"},
                              {"from": "gpt", "value": "the Amazon"}]}


def test_sharegpt_turns_are_chat_messages_with_the_last_reply_as_reference():
    record = extract_prompt(SHAREGPT, 4)
    assert record.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "name a river"},
                               {"role": "assistant", "content": "the Nile"}, {"role": "user", "content": "and a longer one?"}]
    assert record.reference_completion == "the Amazon"
    same = {"messages": [{"role": r, "content": c} for r, c in (("system", "be brief"), ("user", "name a river"),
                                                              ("assistant", "the Nile"), ("user", "and a longer one?"))]}
    assert record.prompt_id == extract_prompt(same, 0).prompt_id  # the same prompt, whatever its dataset's shape
    for empty in ("", None):  # the reply's slot left empty, as in `messages`: a prompt without reference
        slot = extract_prompt({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": empty}]}, 0)
        assert (slot.messages, slot.reference_completion) == ([{"role": "user", "content": "Q"}], None)
    chatgpt = extract_prompt({"conversations": [{"from": "human", "value": "Q"}, {"from": "chatgpt", "value": "A"}]}, 0)
    assert chatgpt.reference_completion == "A"
    robot = extract_prompt({"conversations": [{"from": "robot", "value": "beep"}]}, 2)
    assert isinstance(robot, RowSkip) and robot.reason == "unknown role"
    assert robot.detail == "row 2, message 0: from 'robot' is not one of system, human, user, gpt, chatgpt, assistant"


def test_the_prompt_and_reference_columns_named_are_read_as_strings_or_turns():
    gsm8k = {"question": "How many legs have 3 cats?", "answer": "Each cat has 4 legs, so 3 * 4 = 12.\n#### 12"}
    record = extract_prompt(gsm8k, 0, prompt_columns=("question",), reference_column="answer")
    assert record.messages == [{"role": "user", "content": gsm8k["question"]}]
    assert record.reference_completion == gsm8k["answer"]
    trl = {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}]}
    assert extract_prompt(trl, 0, reference_column="completion").reference_completion == "hello"
    assert extract_prompt({**SHAREGPT, "best": "the Yangtze"}, 0, reference_column="best").reference_completion == "the Yangtze"
    assert extract_prompt({"question": "q", "answer": None}, 0, prompt_columns=("question",), reference_column="answer").reference_completion is None
    assert extract_prompt({"question": "q", "answer": 204}, 0, prompt_columns=("question",), reference_column="answer").reference_completion == "204"
    odd = extract_prompt({"question": "q", "answer": {"value": 1}}, 6, prompt_columns=("question",), reference_column="answer")
    assert (odd.reason, odd.detail) == ("non-string reference", "row 6: 'answer' is dict")

    cases = {
        "no question field": ({"prompt": "not this one"}, "row 3: fields are prompt"),
        "empty content": ({"question": "  "}, "row 3: 'question' is empty"),
        "non-string content": ({"question": 7}, "row 3: 'question' is int"),
    }
    null = extract_prompt({"question": None, "answer": "4"}, 3, prompt_columns=("question",))  # an empty CSV cell
    assert (null.reason, null.detail) == ("empty content", "row 3: 'question' is null")
    auto = extract_prompt({"prompt": None, "answer": "4"}, 3)  # the column is there: no hint to name another
    assert (auto.reason, auto.detail) == ("empty content", "row 3: 'prompt' is null")
    for reason, (row, detail) in cases.items():
        skip = extract_prompt(row, 3, prompt_columns=("question",))
        assert (skip.reason, skip.detail) == (reason, detail)
    wrong = extract_prompt({"prompt": "hi", "completion": [{"role": "user", "content": "x"}]}, 5, reference_column="completion")
    assert (wrong.reason, wrong.detail) == ("reference is not an assistant turn", "row 5: 'completion' ends with a user turn")
    nothing = extract_prompt({"question": "q", "answer": "a"}, 1)
    assert nothing.reason == "no messages, prompt or conversations field"
    assert nothing.detail == "row 1: fields are question, answer (--prompt-column names another)"


def test_alpaca_instruction_and_input_are_joined_into_one_user_turn():
    joined = extract_prompt({"instruction": "Translate to French.", "input": "the river", "output": "la rivière"}, 0,
                            prompt_columns=("instruction", "input"), reference_column="output")
    assert joined.messages == [{"role": "user", "content": "Translate to French.\n\nthe river"}]
    assert joined.reference_completion == "la rivière"
    alone = extract_prompt({"instruction": "Name a river.", "input": "", "output": "the Nile"}, 1, prompt_columns=("instruction", "input"))
    assert alone.messages == [{"role": "user", "content": "Name a river."}]  # an empty input adds no blank line
    assert alone.prompt_id == extract_prompt({"prompt": "Name a river."}, 0).prompt_id
    empty = extract_prompt({"instruction": " ", "input": "the river"}, 2, prompt_columns=("instruction", "input"))
    assert (empty.reason, empty.detail) == ("empty content", "row 2: 'instruction' is empty")  # the input alone is no prompt
    null = extract_prompt({"instruction": None, "input": "the river"}, 2, prompt_columns=("instruction", "input"))
    assert (null.reason, null.detail) == ("empty content", "row 2: 'instruction' is null")  # an empty CSV cell: not a missing column
    missing = extract_prompt({"input": "the river"}, 2, prompt_columns=("instruction", "input"))
    assert (missing.reason, missing.detail) == ("no instruction field", "row 2: fields are input")
    turns = extract_prompt({"instruction": "x", "input": [{"role": "user", "content": "y"}]}, 3, prompt_columns=("instruction", "input"))
    assert (turns.reason, turns.detail) == ("non-string content", "row 3: 'input' is list, and joined columns must be strings")


def test_a_column_named_twice_or_empty_is_refused():
    with pytest.raises(RsampleError, match="--prompt-column and --reference-column both name 'q'"):
        DataSelection("d.jsonl", prompt_columns=("p", "q"), reference_column="q")
    with pytest.raises(RsampleError, match="--prompt-column names a column twice: q, q"):
        DataSelection("d.jsonl", prompt_columns=("q", "q"))
    with pytest.raises(RsampleError, match="--reference-column must name a column"):
        DataSelection("d.jsonl", reference_column=" ")


def test_a_dataset_without_the_prompt_column_is_refused_before_any_sampling(redis_server, tmp_path):
    import datasets

    rows = [{"question": "what is 6 times 7", "answer": "42"}]
    jsonl = write_jsonl(tmp_path / "gsm8k.jsonl", rows)
    parquet = tmp_path / "gsm8k.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    for dataset in (jsonl, parquet):  # read line by line, and through datasets
        base = ["enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), *ZERO_COST[:-1]]
        cases = [
            ([], f"error: dataset {str(dataset)!r} has no messages, prompt or conversations column (its columns: answer, question): "
                 "name the prompt's column with --prompt-column (--prompt-column question?)"),
            (["--prompt-column", "questoin"], f"error: --prompt-column 'questoin' is not a column of dataset {str(dataset)!r} "
                                              "(its columns: answer, question)"),
            (["--prompt-column", "question", "--reference-column", "solution"],
             f"error: --reference-column 'solution' is not a column of dataset {str(dataset)!r} (its columns: answer, question)"),
        ]
        for args, message in cases:
            result = rsample(*base, *args, check=False)
            assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == message, result.stderr  # after datasets' progress
    typed = write_jsonl(tmp_path / "numbers.jsonl", [{"question": i, "answer": "1"} for i in range(3)])
    wrong = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(typed), *ZERO_COST[:-1], "--prompt-column", "question",
                    check=False)
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines()[-1] == (
        f"error: none of the first 3 rows of dataset {str(typed)!r} gives a prompt: row 0: 'question' is int (non-string content)")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"\n{"prompt": "b"\n')  # no row parses: not a question of columns
    unreadable = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(broken), *ZERO_COST[:-1], check=False)
    assert unreadable.returncode == 2 and unreadable.stderr.strip().splitlines()[-1] == (
        f"error: none of the first 2 rows of dataset {str(broken)!r} gives a prompt: row 0 (broken.jsonl line 1): Expecting ',' "
        "delimiter at column 15 (invalid JSON)")
    no_reference = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(jsonl), *ZERO_COST[:-1], "--prompt-column",
                           "question", "--include-reference", check=False)
    assert no_reference.returncode == 2 and no_reference.stderr.strip().splitlines()[-1] == (
        f"error: --include-reference: none of the first 1 rows of dataset {str(jsonl)!r} has a reference answer in a final assistant "
        "turn (name its column with --reference-column)")
    assert rsample("status", "--redis-url", redis_server.url, "--json").stdout.strip() == "[]"  # nothing was registered


def test_a_question_column_run_writes_each_rows_question_and_reference(tmp_path):
    """GSM8K's shape through datasets (Parquet), end to end: the pairs' prompts and references are the file's own
    columns, read back here with pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    questions = [f"how many legs have {i} cats and {i + 1} birds?" for i in range(6)]
    answers = [f"{i} cats have {4 * i} legs, {i + 1} birds {2 * (i + 1)}.\n#### {6 * i + 2}" for i in range(6)]
    dataset = tmp_path / "gsm8k.parquet"
    pq.write_table(pa.table({"question": questions, "answer": answers}), dataset)
    out = tmp_path / "pairs.jsonl"
    rsample("run", "--dataset", str(dataset), *ZERO_COST, "--prompt-column", "question", "--reference-column", "answer",
            "--include-reference", "--out", str(out))

    table = pq.read_table(dataset).to_pylist()
    expected = {row["question"]: row["answer"] for row in table}
    pairs = read_jsonl(out)
    assert sorted(pair["messages"][0]["content"] for pair in pairs) == sorted(expected)
    for pair in pairs:
        assert pair["messages"] == [{"role": "user", "content": pair["messages"][0]["content"]}]
        assert pair["reference_completion"] == expected[pair["messages"][0]["content"]]
        assert pair["num_candidates"] == 5  # 4 samples and the reference, scored as one more candidate


def test_an_alpaca_file_runs_with_its_two_prompt_columns(tmp_path):
    rows = [{"instruction": f"Describe river {i}.", "input": "" if i % 2 else f"It flows through city {i}.", "output": f"River {i} is wide."}
            for i in range(4)]
    dataset = write_jsonl(tmp_path / "alpaca.jsonl", rows)
    out = tmp_path / "pairs.jsonl"
    rsample("run", "--dataset", str(dataset), *ZERO_COST, "--prompt-column", "instruction", "--prompt-column", "input",
            "--reference-column", "output", "--out", str(out))
    expected = {"\n\n".join(text for text in (row["instruction"], row["input"]) if text): row["output"] for row in rows}
    assert {pair["messages"][0]["content"]: pair["reference_completion"] for pair in read_jsonl(out)} == expected


def test_a_sharegpt_file_runs_without_flags(tmp_path):
    rows = [{"id": i, "conversations": [{"from": "human", "value": f"tell me about river {i}"}, {"from": "gpt", "value": f"river {i} is long"}]}
            for i in range(5)]
    dataset = write_jsonl(tmp_path / "sharegpt.jsonl", rows)
    out = tmp_path / "pairs.jsonl"
    result = rsample("run", "--dataset", str(dataset), *ZERO_COST, "--out", str(out))
    assert re.search(r"embedded Redis at redis://127\.0\.0\.1:\d+/0: `rsample status --redis-url", result.stderr), result.stderr[-2000:]
    by_prompt = {pair["messages"][0]["content"]: pair for pair in read_jsonl(out)}
    assert len(by_prompt) == 5
    for row in (json.loads(line) for line in dataset.read_text().splitlines()):
        human, gpt = row["conversations"]
        pair = by_prompt[human["value"]]
        assert pair["messages"] == [{"role": "user", "content": human["value"]}]
        assert pair["reference_completion"] == gpt["value"]
        assert pair["chosen"][:-1] == pair["messages"] and pair["chosen"][-1]["role"] == "assistant"


def test_turns_written_as_pythons_repr_are_read_as_turns_not_as_the_prompts_text():
    """`Dataset.to_csv` and pandas write a list of turns as Python's repr: the repr became the user's prompt (TRL's
    `prompt`/`completion` columns), its system turn folded into the text, without a word."""
    prompt = str([{"role": "system", "content": "be brief"}, {"role": "user", "content": "What's 2+2?\nSay it."}])
    completion = str([{"role": "assistant", "content": "4"}])
    record = extract_prompt({"prompt": prompt, "completion": completion}, 0, reference_column="completion")
    assert record.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What's 2+2?\nSay it."}]
    assert record.reference_completion == "4"
    for text in ("[{'a': 1}] is a list", "[1, 2, 3]", "[{'role': 'user'}]"):  # no turns: the prompt's own text
        assert extract_prompt({"prompt": text}, 0).messages == [{"role": "user", "content": text}]


def test_turns_that_dataset_to_csv_writes_are_read_from_the_csv_as_turns(tmp_path):
    """`Dataset.to_csv` writes a list of several turns as numpy's repr, the turns apart by whitespace alone: no Python
    literal, so the repr was the prompt (or, in `messages`, the row a skip)."""
    import datasets

    from rsample.producer.dataset import iter_rows

    prompt = [{"role": "system", "content": "be brief }\n {'role': 'user'}"}, {"role": "user", "content": "q0"}]
    rows = [{"prompt": prompt, "completion": [{"role": "assistant", "content": "a0"}]},
            {"prompt": [*prompt, {"role": "assistant", "content": "x"}, {"role": "user", "content": "q1"}], "completion": []}]
    datasets.Dataset.from_list(rows).to_csv(tmp_path / "trl.csv", index=False)
    assert "}\n {" in (tmp_path / "trl.csv").read_text()  # numpy's repr, as written
    records = [extract_prompt(row, index, reference_column="completion") for index, row in iter_rows(DataSelection(str(tmp_path / "trl.csv")))]
    assert [(r.messages, r.reference_completion) for r in records] == [(prompt, "a0"), (rows[1]["prompt"], None)]
    # a line break of Unicode's own inside a text (written by hand: repr escapes it) ends no line of Python's
    turns = "[{'role': 'system', 'content': 'a\u2028b'}\n {'role': 'user', 'content': 'q\u2028, x'}\n {'role': 'user', 'content': 'z'}]"
    assert extract_prompt({"prompt": turns}, 0).messages == [
        {"role": "system", "content": "a\u2028b"}, {"role": "user", "content": "q\u2028, x"}, {"role": "user", "content": "z"}]


def test_a_reference_of_nan_is_no_reference_and_an_empty_reply_in_parts_keeps_the_prompt():
    """A float NaN (pandas', polars' missing value) was the reference "nan", scored as a candidate; a final assistant
    turn of empty parts skipped its row, where an empty string left the prompt without reference."""
    record = extract_prompt({"prompt": "q", "answer": float("nan")}, 0, reference_column="answer")
    assert record.reference_completion is None
    assert extract_prompt({"prompt": "q", "answer": 1.5}, 0, reference_column="answer").reference_completion == "1.5"
    user = {"role": "user", "content": [{"type": "text", "text": "parts prompt"}]}
    for empty in ([{"type": "text", "text": ""}], [], [{"type": "text", "text": "  "}, {"type": "text", "text": "\n"}]):
        record = extract_prompt({"messages": [user, {"role": "assistant", "content": empty}]}, 0)
        assert (record.messages, record.reference_completion) == ([{"role": "user", "content": "parts prompt"}], None)
