"""Completions of policies that answer in OpenAI's harmony format (gpt-oss): channels, not text markers.

Such a policy writes `<|channel|>analysis<|message|>thinking<|end|><|start|>assistant<|channel|>final<|message|>answer`,
and every marker is a special token. Decoding with special tokens skipped runs the channels' names and texts together
(`analysisthinking...assistantfinalanswer`): the rewards would judge the thinking, and the output would hold text that the
policy's own chat template refuses to train on (it raises on channel markers in `content`). So the tokens are split
here, by channel: the final channel is the answer (`content`, what the rewards read), the others are the thinking
(`thinking`, where gpt-oss's template puts the analysis channel back when it renders a training example).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MARKERS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>")
_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")


@dataclass(frozen=True)
class Reply:
    """One completion split by channel. `answer` is None when no final channel began (the thinking never ended)."""

    thinking: str
    answer: str | None


@dataclass(frozen=True)
class HarmonyTokens:
    """The ids of the markers in one tokenizer's vocabulary."""

    start: int
    message: int
    closers: frozenset[int]
    """`<|end|>`, `<|return|>`, `<|call|>`: each ends a message."""

    @classmethod
    def of(cls, tokenizer) -> HarmonyTokens | None:
        """The markers of a tokenizer that has all of them as tokens of their own (gpt-oss's declares them special); None
        for any other tokenizer."""
        added = {str(token): token_id for token_id, token in tokenizer.added_tokens_decoder.items()}
        if not all(marker in added for marker in MARKERS):
            return None
        return cls(added["<|start|>"], added["<|message|>"], frozenset(added[m] for m in ("<|end|>", "<|return|>", "<|call|>")))

    def split(self, tokens: Iterable[int], decode: Callable[[list[int], bool], str], stop_ids: Iterable[int] = ()) -> Reply:
        """`tokens` as the policy generated them after a prompt that opened its turn (`...<|start|>assistant`).

        `decode(ids, keep_special)` is the tokenizer's. `stop_ids` (the policy's EOS ids) close a message too, whether or
        not the backend left them in. A message the length limit cut keeps what it has: a final channel cut short is an
        answer cut short, as `finish_reason` says."""
        closers = self.closers | set(stop_ids)
        messages: list[tuple[list[int], list[int]]] = []
        header: list[int] = []
        body: list[int] | None = None
        for token in tokens:
            if token == self.start or (token in closers and body is not None):
                if header or body is not None:
                    messages.append((header, body or []))
                header, body = [], None
            elif token in closers:  # a header that never reached its text: nothing to keep
                header = []
            elif token == self.message and body is None:
                body = []
            elif body is None:
                header.append(token)
            else:
                body.append(token)
        if header or body is not None:
            messages.append((header, body or []))
        thinking, answer = [], None
        for header, body in messages:
            found = _CHANNEL.search(decode(header, True))
            text = decode(body, False).rstrip("\ufffd").strip()
            if found is not None and found.group(1) == "final":
                answer = text if answer is None else f"{answer}\n\n{text}"
            elif text:
                thinking.append(text)
        return Reply("\n\n".join(thinking), answer)

    def split_with(self, tokenizer, tokens: Iterable[int], stop_ids: Iterable[int] = ()) -> Reply:
        return self.split(tokens, lambda ids, keep_special: tokenizer.decode(ids, skip_special_tokens=not keep_special), stop_ids)
