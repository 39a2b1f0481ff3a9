"""Typed Parquet copies of the JSONL outputs.

A JSONL reader types each column from what it sees first: `datasets` reads a file 10 MB at a time, so a column that is
null there (`reference_completion` of prompts with no reference; `reference_completion_score` of a run without
--include-reference) is typed null, and the file, or a list of files, fails at the first value. Readers that take
no declared types (open-instruct's local files, a glob of several runs) need the types in the file: Parquet keeps them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from rsample.workers.common.errors import RsampleError
from rsample.workers.stages.output import features, row_has_thinking

SCORE_COLUMN = {"pairs": "chosen_score", "scores": "scores", "sft": "score"}
KIND_OF_COLUMN = {"chosen": "pairs", "completion_index": "scores", "score": "sft"}
"""A column only that kind of file has."""
BLOCK_BYTES = 32 << 20
"""Read and parsed at a time: bounds memory on files of millions of rows."""


def parquet_path(jsonl: Path) -> Path:
    return jsonl.with_suffix(".parquet")


SOURCE_KEY = b"rsample_source"
"""A copy's Parquet metadata: the JSONL it copies (its name, size and last bytes' digest then), so that a stale copy is
told apart."""
TAIL_BYTES = 1 << 16


def fingerprint(jsonl: Path) -> dict:
    """What tells a JSONL output changed: rows are appended, cut or replaced, and its last rows change with them."""
    with jsonl.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - TAIL_BYTES))
        return {"file": jsonl.name, "bytes": size, "tail": hashlib.sha256(handle.read()).hexdigest()}


def copied_from(copy: Path) -> dict | None:
    """What `write_parquet` recorded of the JSONL a Parquet file copies; None for any other file."""
    import pyarrow.parquet as pq

    try:
        return json.loads(pq.read_schema(copy).metadata[SOURCE_KEY])
    except Exception:  # not Parquet, or not a copy rsample wrote
        return None


def drop_stale_copies(outputs: Iterable[Path | None], inputs: Iterable[Path] = (), replaced: bool = False) -> list[Path]:
    """Removes the Parquet copies rsample wrote of these JSONL files that they no longer match (a resume,
    `--retry-failed` or `--overwrite` without `--parquet` changed them since), and with `replaced` (`--overwrite`, as
    it starts) every copy of them: a reader pointed at `pairs.parquet` trained on an earlier state of the run without
    a word. A file rsample did not write as that copy, or an input, stays. Called as a session starts and as it ends;
    returns what went."""
    inputs = {Path(path).resolve() for path in inputs}
    dropped = []
    for jsonl in map(Path, filter(None, outputs)):
        copy = parquet_path(jsonl)
        if not copy.is_file() or not jsonl.is_file() or copy.resolve() in inputs:
            continue
        source = copied_from(copy)
        if source is not None and source.get("file") == jsonl.name and (replaced or source != fingerprint(jsonl)):
            copy.unlink()
            logging.getLogger(__name__).warning("removed %s: the Parquet copy of %s as it was before (give --parquet, or run "
                                                "`rsample parquet %s`, to write it again)", copy, jsonl, jsonl)
            dropped.append(copy)
    return dropped


def first_row(path: Path):
    """The first row of a JSONL file, or None for a file with none."""
    with path.open(encoding="utf-8") as lines:
        first = next((line for line in lines if line.strip()), None)
    if first is None:
        return None
    try:
        return json.loads(first)
    except json.JSONDecodeError as exc:
        raise RsampleError(f"{path}: the first row is not JSON ({exc})") from None


def has_thinking(path: Path) -> bool:
    """Whether a file's assistant turns carry their thinking apart (a harmony policy's run), read off its first row."""
    row = first_row(path) if path.exists() else None
    return isinstance(row, dict) and row_has_thinking(row)


def file_shape(path: Path) -> tuple[str, tuple[str, ...], bool]:
    """The kind of rsample file (pairs, scores, sft), its score columns' names, and whether its assistant turns carry
    their thinking apart (a harmony policy's run), read off its first row."""
    row = first_row(path)
    if row is None:
        raise RsampleError(f"{path}: no rows, so no columns to type")
    kind = next((KIND_OF_COLUMN[column] for column in KIND_OF_COLUMN if isinstance(row, dict) and column in row), None)
    if kind is None or not isinstance(row.get(SCORE_COLUMN[kind]), dict):
        raise RsampleError(f"{path}: not an rsample output file (pairs, scores or sft JSONL)")
    return kind, tuple(row[SCORE_COLUMN[kind]]), row_has_thinking(row)


def _line_blocks(path: Path, block_bytes: int):
    """The file's whole lines, about `block_bytes` at a time. pyarrow's own streaming reader (`open_json`) reads ahead
    of its consumer: it held most of a 435 MB file at once, and 1.1 GB for a 985 MB one."""
    with path.open("rb") as lines:
        block: list[bytes] = []
        size = 0
        for line in lines:
            block.append(line)
            size += len(line)
            if size >= block_bytes:
                yield b"".join(block)
                block, size = [], 0
        if size:
            yield b"".join(block)


def write_parquet(path: Path, kind: str | None = None, score_names: tuple[str, ...] | None = None,
                  block_bytes: int = BLOCK_BYTES) -> Path:
    """`path`'s rows as Parquet beside it (`pairs.jsonl` -> `pairs.parquet`), with the columns the dataset card declares.

    `kind` and `score_names` default to what the first row shows, as does whether the thinking is a column of its own.
    Written to a temporary name and renamed: an existing copy is replaced whole or not at all."""
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    if kind is None or score_names is None:
        kind, score_names, thinking = file_shape(path)
    else:
        thinking = has_thinking(path)
    schema = features(kind, score_names, thinking).arrow_schema  # with datasets' own metadata: `load_dataset` reads the features back
    schema = schema.with_metadata({**(schema.metadata or {}), SOURCE_KEY: json.dumps(fingerprint(path))})
    target = parquet_path(path)
    partial = target.with_name(f".{target.name}.partial")
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            for block in _line_blocks(path, block_bytes):  # parsed as one block, however long a row in it
                read = pa_json.ReadOptions(use_threads=False, block_size=len(block) + 1)
                writer.write_table(pa_json.read_json(io.BytesIO(block), read_options=read, parse_options=options))
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise RsampleError(f"{path}: a row does not have the columns of an rsample {kind} file scored by "
                           f"{', '.join(score_names)} ({str(exc).splitlines()[0]}); no Parquet copy written") from None
    os.replace(partial, target)
    return target
