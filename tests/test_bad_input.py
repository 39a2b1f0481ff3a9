"""A dataset with good and malformed rows of every kind: all good pairs come out, every bad row is counted by reason."""

import json

from conftest import read_jsonl, rsample
from faults import assert_exactly_once, prompts_that_got_candidates

GOOD = [{"prompt": f"explain step {i} of the {word} test"} for i, word in enumerate(["river", "city", "music", "code"] * 10)]
BAD = {
    "invalid JSON": [b'{"prompt": "unterminated', b"[1, 2"],
    "invalid UTF-8": [b'{"prompt": "caf\xe9 au lait"}', b'{"prompt": "\xff\xfe"}'],
    "no messages or prompt field": [{"question": "where is the prompt"}, {"text": "x"}],
    "empty content": [{"prompt": "   "}, {"messages": [{"role": "user", "content": ""}]}],
    "non-string content": [{"prompt": 42}, {"messages": [{"role": "user", "content": {"text": "hi"}}]}],
    "non-text content": [{"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this"}, {"type": "image"}]}]}],
    "unknown role": [{"messages": [{"role": "robot", "content": "beep"}]}, {"messages": [{"role": "human", "content": "hi"}]}],
    "prompt does not end with a user turn": [{"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}],
    "policy chat template rejected the prompt: Conversation roles must alternate": [
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
        {"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}, {"role": "assistant", "content": "e"}, {"role": "user", "content": "f"}]},
    ],
    "prompt longer than the policy context": [{"prompt": "river " * 400}, {"messages": [{"role": "user", "content": "city " * 300}]}],
}
DUPLICATES = [GOOD[0], GOOD[7], GOOD[7]]


def test_mixed_dataset_gives_all_good_pairs_and_counts_every_bad_row(tiny_models, tmp_path):
    bad = [row for items in BAD.values() for row in items]
    rows = []
    for index, good in enumerate(GOOD):  # bad rows spread over every batch
        rows.append(good)
        if index < len(bad):
            rows.append(bad[index])
    rows[30:30] = DUPLICATES[:1]
    rows += DUPLICATES[1:]
    lines = [row if isinstance(row, bytes) else json.dumps(row).encode() for row in rows]
    dataset = tmp_path / "mixed.jsonl"
    dataset.write_bytes(b"\n".join(lines) + b"\n")

    out = tmp_path / "pairs.jsonl"
    result = rsample("run", "--dataset", str(dataset), "--policy", tiny_models["policy"], "--reward-model", tiny_models["reward"],
                     "--n", "2", "--temperature", "1.0", "--max-new-tokens", "6", "--batch-size", "8", "--out", str(out), "--no-progress")

    as_rows = [row.decode("latin-1") if isinstance(row, bytes) else row for row in rows]  # raw lines are not prompts
    counts = assert_exactly_once(out, None, as_rows)
    assert prompts_that_got_candidates(counts) == len(GOOD)
    assert counts["duplicate"] == 3
    skipped = {}
    for outcome in read_jsonl(out.with_name("pairs.outcomes.jsonl"))[1:]:
        if outcome["outcome"] == "skipped":
            skipped[outcome["reason"]] = skipped.get(outcome["reason"], 0) + 1
    assert skipped == {reason: len(items) for reason, items in BAD.items()}
    for reason, items in BAD.items():
        assert f"  {reason}: {len(items)}" in result.stdout
    assert f"rows                 {len(rows)}" in result.stdout
