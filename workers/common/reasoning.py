"""Completions of reasoning models: `<think> ... </think> answer`. Rewards judge the answer; the output keeps both.

A reward model was trained on answers, not on thousands of tokens of thinking (which would also overflow its
context), and a verifier must read the final answer, not a number the reasoning tried on the way. With
`--reasoning-end MARKER` the answer is what follows the marker's last occurrence, as Qwen3's and DeepSeek-R1's own
chat templates split a message. A template that opens the reasoning itself (`...assistant\\n<think>\\n`) leaves only
the closing marker in the completion: the sample is what the template opened followed by the completion
(`templates.opened_thinking`), so that the output holds whole traces.
"""

from __future__ import annotations

THINKING_END = "</think>"
"""How most reasoning models (Qwen3, DeepSeek-R1 and their distillations, QwQ) end their thinking before they answer."""


def answer_part(text: str, reasoning_end: str | None) -> str:
    """What the rewards read: the text after the reasoning, or the whole text when there is no marker in it (no
    reasoning was asked for, or it never ended and the candidate is judged as it stands, as a cut-off one is)."""
    if not reasoning_end:
        return text
    _, found, answer = text.rpartition(reasoning_end)
    return answer.strip() if found else text



def opening_marker(reasoning_end: str | None) -> str | None:
    """The marker that opens the thinking a `reasoning_end` closes: `<think>` for `</think>`; None for another form."""
    if reasoning_end and reasoning_end.startswith("</") and reasoning_end.endswith(">") and len(reasoning_end) > 3:
        return "<" + reasoning_end[2:]
    return None
