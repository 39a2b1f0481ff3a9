"""Completions of reasoning models: `<think> ... </think> answer`. Rewards judge the answer; the output keeps both.

A reward model was trained on answers, not on thousands of tokens of thinking (which would also overflow its
context), and a verifier must read the final answer, not a number the reasoning tried on the way. With
`--reasoning-end MARKER` the answer is what follows the marker's last occurrence, as Qwen3's and DeepSeek-R1's own
chat templates split a message: a template that opens the reasoning itself (`...assistant\\n<think>\\n`) leaves
only the closing marker in the completion, and that is enough.
"""

from __future__ import annotations


def answer_part(text: str, reasoning_end: str | None) -> str:
    """What the rewards read: the text after the reasoning, or the whole text when there is no marker in it (no
    reasoning was asked for, or it never ended and the candidate is judged as it stands, as a cut-off one is)."""
    if not reasoning_end:
        return text
    _, found, answer = text.rpartition(reasoning_end)
    return answer.strip() if found else text

