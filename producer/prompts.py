"""Turning one dataset row into a prompt, or into a counted skip with its reason."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from rsample.workers.common import defaults
from rsample.workers.common.messages import Conversation, PromptRecord

ROLES = ("system", "user", "assistant")


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


def _check_messages(value: Any, row_index: int) -> Conversation | RowSkip:
    if not isinstance(value, list) or not value:
        return RowSkip(row_index, "messages is not a non-empty list", f"row {row_index}: 'messages' is {type(value).__name__}")
    conversation: Conversation = []
    for turn, message in enumerate(value):
        where = f"row {row_index}, message {turn}"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return RowSkip(row_index, "message without role/content", f"{where}: {str(message)[:80]!r}")
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
        if not content.strip():
            return RowSkip(row_index, "empty content", f"{where}: {role} content is empty")
        conversation.append({"role": role, "content": content})
    return conversation


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
    if isinstance(messages, list) and len(messages) > 1 and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        content = messages[-1].get("content")
        if content is None or (isinstance(content, str) and not content.strip()):
            return messages[:-1]
    return messages


def _with_system_prompt(messages: Conversation, system_prompt: str | None) -> Conversation:
    """Prepends a steering system prompt; an existing system message keeps its text after it."""
    if not system_prompt:
        return messages
    if messages[0]["role"] == "system":
        merged = f"{system_prompt}\n\n{messages[0]['content']}"
        return [{"role": "system", "content": merged}, *messages[1:]]
    return [{"role": "system", "content": system_prompt}, *messages]


def extract_prompt(row: Any, row_index: int, system_prompt: str | None = None, columns: tuple[str, ...] = ()) -> PromptRecord | RowSkip:
    """Reads the open-instruct `messages` shape or a plain `prompt` string.

    With `messages`, a final assistant turn is the dataset's reference completion and the prompt is
    everything before it; the prompt must end with a user turn. `columns`: the row's columns its rewards read
    (a ground truth, say), kept with the prompt as they are; a row without one is no skip here (the reward that
    needs it says so), one whose columns would make too large a message is.
    """
    if not isinstance(row, dict):
        return RowSkip(row_index, "row is not an object", f"row {row_index}: {type(row).__name__}")
    reference = None
    if row.get("messages") is not None:
        checked = _check_messages(_without_empty_reply(row["messages"]), row_index)
        if isinstance(checked, RowSkip):
            return checked
        if checked[-1]["role"] == "assistant":
            reference = checked[-1]["content"]
            checked = checked[:-1]
        messages = checked
    elif row.get("prompt") is not None:
        prompt = row["prompt"]
        if isinstance(prompt, list):
            checked = _check_messages(prompt, row_index)
            if isinstance(checked, RowSkip):
                return checked
            messages = checked
        elif not isinstance(prompt, str):
            return RowSkip(row_index, "non-string content", f"row {row_index}: 'prompt' is {type(prompt).__name__}")
        elif not prompt.strip():
            return RowSkip(row_index, "empty content", f"row {row_index}: 'prompt' is empty")
        else:
            messages = [{"role": "user", "content": prompt}]
    else:
        fields = ", ".join(f"{name}{' (null)' if row[name] is None else ''}" for name in map(str, row)) or "none"
        return RowSkip(row_index, "no messages or prompt field", f"row {row_index}: fields are {fields}")
    if not messages or messages[-1]["role"] != "user":
        return RowSkip(row_index, "prompt does not end with a user turn", f"row {row_index}: last prompt role is {messages[-1]['role'] if messages else 'none'}")
    messages = _with_system_prompt(messages, system_prompt)
    kept = {name: row[name] for name in columns if row.get(name) is not None} or None
    try:  # JSON may escape half of a UTF-16 pair (a cut emoji): such text can be neither hashed, sent nor written
        json.dumps([messages, reference, kept], ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError as exc:
        return RowSkip(row_index, "invalid text", f"row {row_index}: a lone UTF-16 surrogate {exc.object[exc.start]!r} (half of an emoji?)")
    if kept is not None:
        size = len(json.dumps(kept, ensure_ascii=False, default=str).encode("utf-8"))
        if size > defaults.MAX_ROW_COLUMNS_BYTES:
            return RowSkip(row_index, "reward columns too large",
                           f"row {row_index}: columns {', '.join(kept)} take {size} bytes (at most {defaults.MAX_ROW_COLUMNS_BYTES})")
        kept = json.loads(json.dumps(kept, ensure_ascii=False, default=str))  # plain JSON values, as on the wire
    return PromptRecord(prompt_id_of(messages), messages, reference, row_index, kept)
