import json

from rsample.producer.prompts import TOOL_USE, RowSkip, extract_prompt, prompt_id_of
from rsample.workers.common.messages import PromptRecord


def test_messages_row_keeps_last_assistant_turn_as_reference():
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    record = extract_prompt(row, 3)
    assert record.messages == [{"role": "user", "content": "hi"}]
    assert record.reference_completion == "hello"
    assert record.row_index == 3


def test_multi_turn_prompt_is_everything_before_the_last_assistant_turn():
    turns = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    record = extract_prompt({"messages": turns}, 0)
    assert record.messages == turns[:3]
    assert record.reference_completion == "d"


def test_conversation_ending_with_user_has_no_reference():
    record = extract_prompt({"messages": [{"role": "user", "content": "q"}]}, 0)
    assert record.reference_completion is None


def test_plain_prompt_column():
    record = extract_prompt({"prompt": "tell me"}, 0)
    assert record.messages == [{"role": "user", "content": "tell me"}]


def test_system_prompt_is_prepended_or_merged():
    plain = extract_prompt({"prompt": "q"}, 0, system_prompt="steer")
    assert plain.messages[0] == {"role": "system", "content": "steer"}
    merged = extract_prompt({"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "q"}]}, 0, "steer")
    assert merged.messages[0] == {"role": "system", "content": "steer\n\nown"}
    assert len(merged.messages) == 2


def test_prompt_id_is_stable_and_depends_on_content_only():
    a = extract_prompt({"prompt": "same"}, 0)
    b = extract_prompt({"messages": [{"role": "user", "content": "same"}, {"role": "assistant", "content": "x"}]}, 9)
    assert a.prompt_id == b.prompt_id == prompt_id_of([{"role": "user", "content": "same"}])
    assert extract_prompt({"prompt": "other"}, 0).prompt_id != a.prompt_id


def test_content_given_as_text_parts_is_read_as_its_text():
    """OpenAI-style content parts: the text parts one after the other (as chat templates render them), the same
    prompt (and prompt id) as the plain string; a part that is not text skips the row and says which."""
    parts = {"messages": [{"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                          {"role": "user", "content": [{"type": "text", "text": "name a "}, {"type": "text", "text": "river"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "the Nile"}]}]}
    plain = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "name a river"}]}
    record = extract_prompt(parts, 3)
    assert record.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "name a river"}]
    assert record.reference_completion == "the Nile" and record.prompt_id == extract_prompt(plain, 0).prompt_id
    image = extract_prompt({"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this"}, {"type": "image"}]}]}, 5)
    assert image.reason == "non-text content" and image.detail == "row 5, message 0: content part 1 is 'image', not text"
    assert extract_prompt({"messages": [{"role": "user", "content": [{"type": "text", "text": "  "}]}]}, 6).reason == "empty content"
    assert extract_prompt({"messages": [{"role": "user", "content": ["bare"]}]}, 6).detail == "row 6, message 0: content part 0 is 'str', not text"


def test_bad_rows_become_skips_with_reason_and_location():
    cases = {
        "empty content": {"prompt": "   "},
        "non-string content": {"messages": [{"role": "user", "content": {"text": "a dict"}}]},
        "non-text content": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "unknown role": {"messages": [{"role": "robot", "content": "x"}]},
        "no messages, prompt or conversations field": {"text": "x"},
        "prompt does not end with a user turn": {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
        "messages is not a non-empty list": {"messages": []},
        "message without role/content": {"messages": [{"content": "x"}]},
        "row is not an object": ["a list"],
    }
    for reason, row in cases.items():
        skip = extract_prompt(row, 7)
        assert isinstance(skip, RowSkip), reason
        assert skip.reason == reason
        assert "row 7" in skip.detail
    # where the prompt's turns go wrong, in words ("last prompt role is none" said nothing of an assistant turn alone)
    assert extract_prompt({"messages": [{"role": "assistant", "content": "a"}]}, 7).detail == (
        "row 7: no user turn before the final assistant turn")
    assert extract_prompt(cases["prompt does not end with a user turn"], 7).detail == "row 7: its prompt ends with the system's turn"


def test_an_empty_reply_slot_is_no_reference_and_no_reason_to_skip():
    """Prompt-only datasets in the messages shape often end with an assistant turn left empty for the reply."""
    plain = extract_prompt({"messages": [{"role": "user", "content": "hi"}]}, 0)
    for empty in ("", "  \n", None):
        record = extract_prompt({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": empty}]}, 0)
        assert isinstance(record, PromptRecord) and record.reference_completion is None
        assert (record.messages, record.prompt_id) == (plain.messages, plain.prompt_id)
    only_reply = extract_prompt({"messages": [{"role": "assistant", "content": ""}]}, 3)  # nothing but the slot: still a skip
    assert isinstance(only_reply, RowSkip) and only_reply.reason == "empty content"


def test_the_reference_turns_own_thinking_is_read_only_for_a_run_that_scores_the_reference():
    """gpt-oss's data format keeps a reply's thinking beside its content. A run without --include-reference never writes
    it, so its payloads stay as a worker of the release before reads them."""
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "thinking": "because"}]
    assert extract_prompt({"messages": turns}, 0).reference_reasoning is None
    kept = extract_prompt({"messages": turns}, 0, reference_thinking=True)
    assert (kept.reference_completion, kept.reference_reasoning) == ("a", "because")
    assert kept.prompt_id == extract_prompt({"messages": turns[:1]}, 0).prompt_id  # the prompt is the same prompt
    by_column = extract_prompt({"prompt": "q", "completion": [turns[1]]}, 0, reference_column="completion", reference_thinking=True)
    assert by_column.reference_reasoning == "because"


def test_half_an_emoji_in_the_references_thinking_skips_the_row_like_one_in_its_content():
    """Text that cannot be UTF-8 can be neither sent nor written: it stopped the coordinator at every start."""
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "thinking": "half an emoji \ud83d here"}]
    skipped = extract_prompt({"messages": turns}, 4, reference_thinking=True)
    assert isinstance(skipped, RowSkip) and skipped.reason == "invalid text"


CALL = [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]


def test_tool_use_is_skipped_not_sent_without_its_calls_results_or_schemas():
    """A turn's tool calls, a tool's result and a row's tool schemas are what a chat template would render into the
    prompt: without them the policy would answer another prompt, and a calling reply would be scored as an answer."""
    ask = {"role": "user", "content": "Weather in Paris?"}
    calling = {"role": "assistant", "content": "Let me check.", "tool_calls": CALL}
    cases = {
        "an earlier turn's calls": ({"messages": [ask, calling, {"role": "user", "content": "And in Rome?"}]},
                                    "row 4, message 1: the assistant's turn calls tools"),
        "a reply that calls": ({"messages": [ask, calling]}, "row 4, message 1: the assistant's turn calls tools"),
        "a call with no text": ({"messages": [ask, {**calling, "content": None}]}, "row 4, message 1: the assistant's turn calls tools"),
        "the calls as JSON text": ({"messages": [ask, {**calling, "tool_calls": json.dumps(CALL)}, ask]},
                                   "row 4, message 1: the assistant's turn calls tools"),
        "a tool's result": ({"messages": [ask, {"role": "tool", "content": "18 C"}, ask]}, "row 4, message 1: a tool's result (role 'tool')"),
        "schemas": ({"messages": [ask], "tools": [{"type": "function", "function": {"name": "get_weather"}}]},
                    "row 4: its 'tools' column holds tool schemas"),
    }
    for case, (row, detail) in cases.items():
        skip = extract_prompt(row, 4)
        assert isinstance(skip, RowSkip) and (skip.reason, skip.detail) == ("tool use (not supported)", detail), case
    # no calls at all, however a dataset writes "none": the row is read
    for none in (None, [], "[]", ""):
        row = {"messages": [ask, {"role": "assistant", "content": "Sunny.", "tool_calls": none}], "tools": none}
        record = extract_prompt(row, 4)
        assert isinstance(record, PromptRecord) and record.messages == [ask] and record.reference_completion == "Sunny.", none


def test_turns_that_hold_null_for_the_other_shapes_keys_are_read_as_their_own_shape():
    """A Parquet file of role/content turns and ShareGPT turns gives every turn both shapes' keys, the other's null."""
    sharegpt = [{"role": None, "content": None, "from": "human", "value": "q"}, {"role": None, "content": None, "from": "gpt", "value": "a"}]
    record = extract_prompt({"messages": sharegpt}, 0)
    assert record.messages == [{"role": "user", "content": "q"}] and record.reference_completion == "a"
    role_content = [{"role": "user", "content": "q", "from": None, "value": None}, {"role": "assistant", "content": "", "from": None, "value": None}]
    record = extract_prompt({"messages": role_content}, 0)
    assert record.messages == [{"role": "user", "content": "q"}] and record.reference_completion is None


def test_an_empty_list_reference_is_no_reference_as_an_empty_string_is():
    """TRL's prompt-completion shape with an empty `completion`."""
    for empty in ([], "", None):
        record = extract_prompt({"prompt": [{"role": "user", "content": "q"}], "completion": empty}, 0, reference_column="completion")
        assert isinstance(record, PromptRecord) and record.reference_completion is None, empty


def test_a_tools_column_that_holds_none_in_any_spelling_is_no_tool_use():
    """A DataFrame exported with astype(str) writes "None" or "nan"; pandas reads an empty cell as NaN."""
    for none in ("None", "nan", "null", " ", float("nan")):
        record = extract_prompt({"prompt": "q", "tools": none}, 0)
        assert isinstance(record, PromptRecord), none


def test_a_row_whose_messages_are_empty_is_read_from_its_prompt_column():
    """A dataset merged from two schemas holds `messages: []` where its rows have a `prompt`: the prompt was skipped."""
    record = extract_prompt({"messages": [], "prompt": "Name a river.", "conversations": None}, 4)
    assert isinstance(record, PromptRecord) and record.messages == [{"role": "user", "content": "Name a river."}]
    assert record.prompt_id == extract_prompt({"prompt": "Name a river."}, 0).prompt_id
    nothing = extract_prompt({"messages": [], "prompt": "  "}, 4)  # neither holds a prompt: the first one's skip says why
    assert (nothing.reason, nothing.detail) == ("messages is not a non-empty list", "row 4: 'messages' is an empty list")
    as_text = extract_prompt({"messages": "[]", "prompt": "Name a river."}, 4)  # a CSV's empty list
    assert as_text.messages == record.messages


def test_an_empty_system_turn_is_kept_as_the_dataset_wrote_it():
    """Many chat exports open with `{"role": "system", "content": ""}`: those rows were skipped. Kept, not dropped: some
    templates render a conversation without a system turn differently (Qwen2.5's writes its default system prompt)."""
    turns = [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    record = extract_prompt({"messages": turns}, 0)
    assert isinstance(record, PromptRecord) and record.messages == turns[:2] and record.reference_completion == "hello"
    steered = extract_prompt({"messages": turns}, 0, system_prompt="Be brief.")  # --system-prompt takes the empty turn's place
    assert steered.messages == [{"role": "system", "content": "Be brief."}, turns[1]]
    assert extract_prompt({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": " "}]}, 2).reason == "empty content"


def test_chat_turns_written_as_json_text_are_read_as_turns(tmp_path):
    """A CSV file can only hold text: its `messages` cells are JSON. They were skipped as "'messages' is str"."""
    from rsample.producer.dataset import iter_rows
    from rsample.workers.common.config import DataSelection

    turns = [{"role": "user", "content": "Say \"hi\", then stop."}, {"role": "assistant", "content": "hi"}]
    path = tmp_path / "chats.csv"
    path.write_text('id,messages\n1,"' + json.dumps(turns).replace('"', '""') + '"\n2,not turns at all\n', encoding="utf-8")
    (_, first), (_, second) = iter_rows(DataSelection(str(path)))
    assert isinstance(first["messages"], str)  # as the file holds it
    record, skip = extract_prompt(first, 0), extract_prompt(second, 1)
    assert record.messages == turns[:1] and record.reference_completion == "hi"
    assert record.prompt_id == extract_prompt({"messages": turns}, 0).prompt_id
    assert (skip.reason, skip.detail) == ("messages is not a non-empty list", "row 1: 'messages' is text, not a JSON list of chat turns")
    # the reference turn's own thinking, as from the same turns given as a list
    thought = [turns[0], {"role": "assistant", "content": "hi", "thinking": "they asked for hi"}]
    assert extract_prompt({"messages": json.dumps(thought)}, 0, reference_thinking=True).reference_reasoning == "they asked for hi"
    # TRL's conversational prompt column, written to a CSV: turns; other text that merely looks like JSON stays the prompt
    trl = extract_prompt({"prompt": json.dumps(turns[:1]), "completion": json.dumps([thought[1]])}, 0, reference_column="completion",
                         reference_thinking=True)
    assert (trl.messages, trl.reference_completion, trl.reference_reasoning) == (turns[:1], "hi", "they asked for hi")
    assert extract_prompt({"prompt": "q", "answer": "[1, 2]"}, 0, reference_column="answer").reference_completion == "[1, 2]"
    for text in ('[1, 2, 3] is a list: what is its sum?', '["a", "b"]', '[{"x": 1}]', "[]"):
        assert extract_prompt({"prompt": text}, 0).messages == [{"role": "user", "content": text}]


def test_rows_of_shapes_no_check_foresaw_are_skips_not_a_dead_coordinator():
    """A ShareGPT turn whose `from` is a list raised TypeError (unhashable), JSON text nested too deeply in a prompt
    cell (a CSV) raised RecursionError, and a reward column nested too deeply to serialise too: each one killed the
    coordinator, at the same row on every restart."""
    sharegpt = extract_prompt({"conversations": [{"from": ["human"], "value": "hi"}]}, 3)
    assert (sharegpt.reason, sharegpt.detail) == ("unknown role", "row 3, message 0: from ['human'] is not one of system, human, user, gpt, chatgpt, assistant")
    reply = extract_prompt({"conversations": [{"from": "human", "value": "hi"}, {"from": {"who": "gpt"}, "value": ""}]}, 4)
    assert reply.reason == "unknown role"
    cell = extract_prompt({"prompt": "[" * 100_000}, 5)  # not turns: the text itself is the prompt
    assert isinstance(cell, PromptRecord) and cell.messages == [{"role": "user", "content": "[" * 100_000}]
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    column = extract_prompt({"prompt": "q", "answer": deep}, 6, columns=("answer",))
    assert (column.reason, column.detail) == ("unreadable row", "row 6: nested too deeply to read")
    assert extract_prompt({"prompt": "q", "tools": "[" * 100_000}, 7).reason == TOOL_USE  # text that is no JSON: it holds something
