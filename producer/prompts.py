"""Turning one dataset row into a prompt, or into a counted skip with its reason."""

from __future__ import annotations

import ast
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from rsample.workers.backends.reward_specs import is_verifier
from rsample.workers.backends.verifiers import ground_truth_problem
from rsample.workers.common import defaults
from rsample.workers.common.config import RunConfig
from rsample.workers.common.errors import first_line
from rsample.workers.common.messages import Conversation, PromptRecord

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "assistant": "assistant"}
"""ShareGPT's `from` values (`{"from": "human", "value": ...}` turns, as in OpenHermes and many SFT sets) as chat roles."""
TOOL_ROLES = ("tool", "ipython", "function")
"""Roles of tool results (OpenAI's, Llama 3's, the older OpenAI one): tool use, which rsample does not render."""
TOOL_USE = "tool use (not supported)"
"""Why a row of tool use is skipped: sent without its calls, results or schemas, its prompt would not be the one meant."""
AUTO_PROMPT_COLUMNS = ("messages", "prompt", "conversations")
"""Where a row's prompt is looked for without --prompt-column, in this order: open-instruct's and TRL's columns, ShareGPT's."""


@dataclass(frozen=True)
class RowSkip:
    """A row that yields no prompt: `reason` is the counted category, `detail` says where and what."""

    row_index: int
    reason: str
    detail: str


def prompt_id_of(messages: Conversation) -> str:
    """A stable id from the prompt's text alone, so the same prompt gets the same id in every run."""
    canonical = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:20]


def _check_messages(value: Any, row_index: int, column: str = "messages") -> Conversation | RowSkip:
    if not isinstance(value, list) or not value:
        kind = "an empty list" if isinstance(value, list) else "text, not a JSON list of chat turns" if isinstance(value, str) else type(value).__name__
        return RowSkip(row_index, "messages is not a non-empty list", f"row {row_index}: {column!r} is {kind}")
    conversation: Conversation = []
    for turn, message in enumerate(value):
        where = f"row {row_index}, message {turn}"
        present = _present(message) if isinstance(message, dict) else {}
        speaker = present.get("role", present.get("from"))
        if _calls_tools(present):
            return RowSkip(row_index, TOOL_USE, f"{where}: the {speaker}'s turn calls tools")
        if speaker in TOOL_ROLES:
            return RowSkip(row_index, TOOL_USE, f"{where}: a tool's result (role {speaker!r})")
        if "role" not in present and "content" not in present and {"from", "value"} <= set(present):
            role, content = present["from"], present["value"]  # ShareGPT
            if not isinstance(role, str) or role not in SHAREGPT_ROLES:
                return RowSkip(row_index, "unknown role", f"{where}: from {role!r} is not one of {', '.join(SHAREGPT_ROLES)}")
            role = SHAREGPT_ROLES[role]
        elif not isinstance(message, dict) or "role" not in message or "content" not in message:
            return RowSkip(row_index, "message without role/content", f"{where}: {str(message)[:80]!r}")
        else:
            role, content = message["role"], message["content"]
        if role not in ROLES:
            return RowSkip(row_index, "unknown role", f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        if isinstance(content, list):  # OpenAI-style parts: their text, one after the other, as chat templates render them
            problem = _non_text_part(content)
            if problem:
                return RowSkip(row_index, "non-text content", f"{where}: {problem}")
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            return RowSkip(row_index, "non-string content", f"{where}: content is {type(content).__name__}")
        if not content.strip() and role != "system":  # an empty system turn is rendered as written (templates differ without one)
            return RowSkip(row_index, "empty content", f"{where}: {role} content is empty")
        conversation.append({"role": role, "content": content})
    return conversation


def _present(turn: dict) -> dict:
    """A turn without its keys that hold null: Arrow gives each turn of a Parquet file the keys of every turn in it."""
    return {key: item for key, item in turn.items() if item is not None}


def _calls_tools(turn: dict) -> bool:
    return _holds(turn.get("tool_calls")) or _holds(turn.get("function_call"))


def _holds(value: Any) -> bool:
    """Whether a tool field holds something: datasets store none as null, NaN (pandas), [] or text ("[]", "None")."""
    if isinstance(value, str):
        if value.strip().lower() in ("", "none", "nan", "null"):
            return False
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return True
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(value)


def _non_text_part(parts: list) -> str | None:
    """What makes content given as parts (`[{"type": "text", "text": "..."}]`) unreadable here: its first part that
    is not text (an image, audio), described; None when every part is text."""
    for number, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            return f"content part {number} is {kind!r}, not text"
    return None


def _without_empty_reply(messages: Any) -> Any:
    """A final assistant turn left empty (or null), as prompt-only datasets in the `messages` shape leave the slot for
    the reply: no reference, and no reason to skip the prompt."""
    last = _present(messages[-1]) if isinstance(messages, list) and len(messages) > 1 and isinstance(messages[-1], dict) else {}
    if _calls_tools(last):
        return messages  # a reply that calls a tool: skipped as tool use, not read as an empty reply
    speaker = last.get("from")
    if last.get("role") == "assistant" or ("role" not in last and isinstance(speaker, str) and SHAREGPT_ROLES.get(speaker) == "assistant"):
        content = last.get("content", last.get("value"))
        if isinstance(content, list) and _non_text_part(content) is None:  # parts: empty when their text is
            content = "".join(part["text"] for part in content)
        if content is None or (isinstance(content, str) and not content.strip()):
            return messages[:-1]
    return messages


def _with_system_prompt(messages: Conversation, system_prompt: str | None) -> Conversation:
    """Prepends a steering system prompt; an existing system message keeps its text after it."""
    if not system_prompt:
        return messages
    if messages[0]["role"] == "system":
        merged = f"{system_prompt}\n\n{messages[0]['content']}" if messages[0]["content"].strip() else system_prompt
        return [{"role": "system", "content": merged}, *messages[1:]]
    return [{"role": "system", "content": system_prompt}, *messages]


def _prompt(row: dict, row_index: int, prompt_columns: tuple[str, ...]) -> tuple[Conversation, str | None] | RowSkip:
    """(prompt messages, reference) from the columns named, else from the first of `AUTO_PROMPT_COLUMNS` the row has."""
    if len(prompt_columns) > 1:
        return _joined(row, row_index, prompt_columns)
    if prompt_columns:
        column = prompt_columns[0]
        if row.get(column) is None:
            return _null_or_missing(row, row_index, column) or RowSkip(row_index, f"no {column} field", f"row {row_index}: {_describe_fields(row)}")
    else:
        column = _auto_column(row)
        if column is None:
            held = next((name for name in AUTO_PROMPT_COLUMNS if name in row), None)
            return (held and _null_or_missing(row, row_index, held)) or RowSkip(
                row_index, "no messages, prompt or conversations field", f"row {row_index}: {_describe_fields(row)} (--prompt-column names another)")
    return _conversation(row[column], row_index, column)


def _null_or_missing(row: dict, row_index: int, column: str) -> RowSkip | None:
    """A column the row has, left null (an empty CSV cell, a JSON null): an empty prompt, not a missing column."""
    if column in row and row[column] is None:
        return RowSkip(row_index, "empty content", f"row {row_index}: {column!r} is null")
    return None


def _auto_column(row: dict) -> str | None:
    """The first of `AUTO_PROMPT_COLUMNS` that holds a prompt (a dataset merged from two schemas leaves the other's
    column empty), else the first the row has (its skip then says why), else None."""
    present = [name for name in AUTO_PROMPT_COLUMNS if row.get(name) is not None]
    return next((name for name in present if not _is_empty(row[name])), present[0] if present else None)


def _is_empty(value: Any) -> bool:
    return value == [] or (isinstance(value, str) and (not value.strip() or _json_turns(value) == []))


def _joined(row: dict, row_index: int, prompt_columns: tuple[str, ...]) -> tuple[Conversation, None] | RowSkip:
    """Several string columns as one user turn, a blank line between them. The first holds the prompt itself (Alpaca's
    `instruction`): a row without it is skipped; a later one null or empty (an `input` the instruction needs none of)
    is left out."""
    texts = []
    for position, column in enumerate(prompt_columns):
        value = row.get(column)
        if value is not None and not isinstance(value, str):
            return RowSkip(row_index, "non-string content", f"row {row_index}: {column!r} is {type(value).__name__}, and joined columns must be strings")
        if position == 0 and value is None:
            return _null_or_missing(row, row_index, column) or RowSkip(row_index, f"no {column} field", f"row {row_index}: {_describe_fields(row)}")
        if position == 0 and not value.strip():
            return RowSkip(row_index, "empty content", f"row {row_index}: {column!r} is empty")
        if value and value.strip():
            texts.append(value)
    return [{"role": "user", "content": "\n\n".join(texts)}], None


def _describe_fields(row: dict) -> str:
    return "fields are " + (", ".join(f"{name}{' (null)' if row[name] is None else ''}" for name in map(str, row)) or "none")


def _conversation(value: Any, row_index: int, column: str) -> tuple[Conversation, str | None] | RowSkip:
    """A prompt column's value as (prompt messages, reference): a string is one user turn; a list of chat turns is a
    conversation whose final assistant turn, if any, is the dataset's reference."""
    if isinstance(value, str):  # a CSV (or any text-only format) holds chat turns as JSON text
        value = _json_turns(value, strict=column not in ("messages", "conversations"))
    if isinstance(value, str) and column not in ("messages", "conversations"):
        if not value.strip():
            return RowSkip(row_index, "empty content", f"row {row_index}: {column!r} is empty")
        return [{"role": "user", "content": value}], None
    if not isinstance(value, list) and column not in ("messages", "conversations"):
        return RowSkip(row_index, "non-string content", f"row {row_index}: {column!r} is {type(value).__name__}")
    checked = _check_messages(_without_empty_reply(value), row_index, column)
    if isinstance(checked, RowSkip):
        return checked
    if checked[-1]["role"] == "assistant":
        return checked[:-1], checked[-1]["content"]
    return checked, None


def _json_turns(text: str, strict: bool = False) -> Any:
    """Chat turns written as JSON text, decoded; else `text` itself. In a column that may hold a prompt's text, only a
    list of turns (each with role and content, or ShareGPT's from and value) is decoded: other text is the prompt.
    Turns written as Python's repr (`[{'role': 'user', ...}]`, what `Dataset.to_csv` and pandas write of a list) are
    read as turns too: taken as text, the repr became the prompt."""
    if not text.lstrip().startswith("["):
        return text
    try:
        decoded = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or JSON Python will not read (nested 1,000 deep)
        decoded = _python_turns(text)
    if not isinstance(decoded, list):
        return text
    if strict and not _are_turns(decoded):
        return text
    return decoded


def _are_turns(value: list) -> bool:
    return bool(value) and all(isinstance(turn, dict) and ({"role", "content"} <= set(turn) or {"from", "value"} <= set(turn))
                               for turn in value)


def _python_turns(text: str) -> list | None:
    """Chat turns in Python's repr, or numpy's (what `Dataset.to_csv` writes of a list: its elements apart by
    whitespace alone), read as literals (no code runs); None for any other text."""
    text = text.strip()
    if not text[1:].lstrip().startswith("{"):
        return None
    for literal in (text, _with_commas(text)):
        try:
            value = ast.literal_eval(literal)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(value, list) and _are_turns(value):
            return value
    return None


def _with_commas(text: str) -> str:
    """A list's repr with a comma put between two of its dicts that only whitespace parts (numpy's repr of an array of
    objects), found by Python's tokenizer, so that no text inside a string is touched."""
    import io
    import tokenize

    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except Exception:  # noqa: BLE001 - no Python at all: nothing to mend
        return text
    line_starts = [0]  # the tokenizer's lines end at "\n" alone (`splitlines` also ends them at U+2028, inside a text)
    for line in text.split("\n"):
        line_starts.append(line_starts[-1] + len(line) + 1)
    depth, closed, commas = 0, None, []
    for token in tokens:
        if token.type in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
            continue
        if token.type == tokenize.OP and token.string in "([{":
            if depth == 1 and token.string == "{" and closed is not None:
                commas.append(closed)
            depth += 1
            closed = None
        elif token.type == tokenize.OP and token.string in ")]}":
            depth -= 1
            row, column = token.end
            closed = line_starts[row - 1] + column if depth == 1 and token.string == "}" else None
        else:
            closed = None
    for offset in reversed(commas):
        text = text[:offset] + "," + text[offset:]
    return text


def _reference(value: Any, row_index: int, column: str) -> str | None | RowSkip:
    """--reference-column's value: a string, or chat turns ending with the assistant's (TRL's `completion`)."""
    if value is None or value == [] or (isinstance(value, str) and value.strip() in ("", "[]")):  # TRL's `completion: []` too,
        return None  # as a CSV holds it
    if isinstance(value, float) and math.isnan(value):  # pandas' and polars' missing value
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # an answer stored as a number (AIME's)
        return str(value)
    if isinstance(value, str):  # turns written as JSON text (TRL's conversational completion in a CSV), else the text
        value = _json_turns(value, strict=True)
        if isinstance(value, str):
            return value
    if not isinstance(value, list):
        return RowSkip(row_index, "non-string reference", f"row {row_index}: {column!r} is {type(value).__name__}")
    checked = _check_messages(value, row_index, column)
    if isinstance(checked, RowSkip):
        return checked
    if checked[-1]["role"] != "assistant":
        return RowSkip(row_index, "reference is not an assistant turn", f"row {row_index}: {column!r} ends with a {checked[-1]['role']} turn")
    return checked[-1]["content"]


def _reference_thinking(row: dict, prompt_columns: tuple[str, ...], reference_column: str | None) -> str | None:
    """The `thinking` of the turn the reference came from (gpt-oss's format: HuggingFaceH4/Multilingual-Thinking), when
    it is text; not part of the prompt, so prompt ids stay as they were."""
    if reference_column is not None:
        turns = row.get(reference_column)
    else:
        column = prompt_columns[0] if len(prompt_columns) == 1 else _auto_column(row)
        turns = row.get(column) if column is not None and not prompt_columns[1:] else None
    if isinstance(turns, str):
        turns = _json_turns(turns)
    last = turns[-1] if isinstance(turns, list) and turns and isinstance(turns[-1], dict) else {}
    thinking = last.get("thinking")
    return thinking if isinstance(thinking, str) and thinking.strip() else None


def row_prompt_id(record: PromptRecord | RowSkip) -> str | None:
    """A row's prompt id; None for a row that gives no prompt."""
    return record.prompt_id if isinstance(record, PromptRecord) else None


def record_of(config: RunConfig, row_index: int, row: Any, check_ground_truth: bool = True) -> PromptRecord | RowSkip:
    """A dataset row as the run reads it (its prompt and reference columns, its system prompt, the columns its rewards
    read); a row that could not be read (`RowSkip`, bad JSON say) stays one.

    `check_ground_truth`: a row without a ground truth for the run's verifier is a skip here, as its scoring would skip
    it: its samples are never generated, and a later row with the same prompt and an answer is no duplicate of it."""
    if isinstance(row, RowSkip):
        return row
    data = config.data
    record = extract_prompt(row, row_index, data.system_prompt, config.row_columns, data.prompt_columns, data.reference_column,
                            reference_thinking=config.include_reference)
    if check_ground_truth and isinstance(record, PromptRecord):
        verifier = next((spec for spec in config.reward_models if is_verifier(spec)), None)
        problem = verifier and ground_truth_problem(config.answer_column, (record.columns or {}).get(config.answer_column))
        if problem:
            return RowSkip(row_index, f"{verifier}: the row {problem}", f"row {row_index}: it {problem}")
    return record


def extract_prompt(row: Any, row_index: int, system_prompt: str | None = None, columns: tuple[str, ...] = (),
                   prompt_columns: tuple[str, ...] = (), reference_column: str | None = None,
                   reference_thinking: bool = False) -> PromptRecord | RowSkip:
    """`_extract_prompt`, where a row of a shape no check foresaw (values nested too deeply to serialise, say) is a
    counted skip that names the row, not a coordinator that dies at it on every restart."""
    try:
        return _extract_prompt(row, row_index, system_prompt, columns, prompt_columns, reference_column, reference_thinking)
    except RecursionError:
        return RowSkip(row_index, "unreadable row", f"row {row_index}: nested too deeply to read")
    except Exception as exc:  # noqa: BLE001 - one row's shape, never the run's
        return RowSkip(row_index, "unreadable row", f"row {row_index}: {first_line(exc, with_type=True)}")


def _extract_prompt(row: Any, row_index: int, system_prompt: str | None, columns: tuple[str, ...], prompt_columns: tuple[str, ...],
                    reference_column: str | None, reference_thinking: bool) -> PromptRecord | RowSkip:
    """Reads a row's prompt from `prompt_columns` (default: `messages`, else `prompt`, else ShareGPT's `conversations`).

    A string is one user turn, as are several string columns joined by a blank line. Chat turns (`{role, content}`, or ShareGPT's `{from, value}`) end the prompt at its
    last user turn: a final assistant turn is the dataset's reference completion, unless `reference_column` names
    the column that holds it. `columns`: the row's columns its rewards read (a ground truth, say), kept with the
    prompt as they are; a row without one is no skip here (the reward that needs it says so), one whose columns
    would make too large a message is. `reference_thinking`: keep the reference turn's own `thinking` (for a run that
    scores the reference: only a harmony policy's run writes it).
    """
    if not isinstance(row, dict):
        return RowSkip(row_index, "row is not an object", f"row {row_index}: {type(row).__name__}")
    if _holds(row.get("tools")):  # the schemas a chat template would render into the prompt (hidden, not a prompt column)
        return RowSkip(row_index, TOOL_USE, f"row {row_index}: its 'tools' column holds tool schemas")
    read = _prompt(row, row_index, tuple(prompt_columns))
    if isinstance(read, RowSkip):
        return read
    messages, reference = read
    if reference_column is not None:
        reference = _reference(row.get(reference_column), row_index, reference_column)
        if isinstance(reference, RowSkip):
            return reference
    if not messages or messages[-1]["role"] != "user":
        detail = f"its prompt ends with the {messages[-1]['role']}'s turn" if messages else "no user turn before the final assistant turn"
        return RowSkip(row_index, "prompt does not end with a user turn", f"row {row_index}: {detail}")
    messages = _with_system_prompt(messages, system_prompt)
    reference_reasoning = (_reference_thinking(row, prompt_columns, reference_column)
                           if reference is not None and reference_thinking else None)
    kept = {name: row[name] for name in columns if row.get(name) is not None} or None
    try:  # JSON may escape half of a UTF-16 pair (a cut emoji): such text can be neither hashed, sent nor written
        json.dumps([messages, reference, reference_reasoning, kept], ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError as exc:
        return RowSkip(row_index, "invalid text", f"row {row_index}: a lone UTF-16 surrogate {exc.object[exc.start]!r} (half of an emoji?)")
    if kept is not None:
        size = len(json.dumps(kept, ensure_ascii=False, default=str).encode("utf-8"))
        if size > defaults.MAX_ROW_COLUMNS_BYTES:
            return RowSkip(row_index, "reward columns too large",
                           f"row {row_index}: columns {', '.join(kept)} take {size} bytes (at most {defaults.MAX_ROW_COLUMNS_BYTES})")
        kept = json.loads(json.dumps(kept, ensure_ascii=False, default=str))  # plain JSON values, as on the wire
    return PromptRecord(prompt_id_of(messages), messages, reference, row_index, kept, reference_reasoning)
