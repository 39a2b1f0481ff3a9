"""Output rows in open-instruct's rejection-sampling shape, and the JSONL files they go to."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from workers.messages import GeneratedPrompt
from workers.selection import Selection


def _by_model(model_names: tuple[str, ...], scores_by_model: list[list[float]], candidate: int) -> dict[str, float]:
    return {name: scores[candidate] for name, scores in zip(model_names, scores_by_model)}


def pair_row(prompt: GeneratedPrompt, selection: Selection, scores_by_model: list[list[float]], model_names: tuple[str, ...]) -> dict[str, Any]:
    messages = prompt.prompt.messages
    chosen = prompt.candidates[selection.chosen]
    rejected = prompt.candidates[selection.rejected]
    reference_index = next((i for i, c in enumerate(prompt.candidates) if c.is_reference), None)
    return {
        "prompt_id": prompt.prompt.prompt_id,
        "messages": messages,
        "chosen": [*messages, {"role": "assistant", "content": chosen.text}],
        "rejected": [*messages, {"role": "assistant", "content": rejected.text}],
        "chosen_score": _by_model(model_names, scores_by_model, selection.chosen),
        "rejected_score": _by_model(model_names, scores_by_model, selection.rejected),
        "reference_completion": prompt.prompt.reference_completion,
        "reference_completion_score": (
            _by_model(model_names, scores_by_model, reference_index) if reference_index is not None else None
        ),
        "num_candidates": prompt.num_candidates,
        "num_unique": len(prompt.candidates),
    }


def score_rows(prompt: GeneratedPrompt, scores_by_model: list[list[float]], model_names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {
            "prompt_id": prompt.prompt.prompt_id,
            "completion_index": candidate.completion_indices[0],
            "completion": candidate.text,
            "scores": _by_model(model_names, scores_by_model, index),
            "is_reference": candidate.is_reference,
        }
        for index, candidate in enumerate(prompt.candidates)
    ]


class JsonlWriter:
    """Appends rows and makes them durable batch by batch, so a crash never leaves half a batch unflushed."""

    def __init__(self, path: str | Path | None, append: bool):
        self.path = Path(path) if path else None
        self._handle: IO[str] | None = None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a" if append else "w", encoding="utf-8")

    def write(self, rows: list[dict[str, Any]]) -> None:
        if self._handle and rows:
            self._handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

    def sync(self) -> None:
        if self._handle:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle:
            self._handle.close()
            self._handle = None
