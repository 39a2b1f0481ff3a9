"""Reading dataset rows from a local file or the Hugging Face Hub.

Local text files (JSON Lines, a JSON array, CSV and TSV; gzipped or not), alone or as a folder's files (picked by their
names, or by the JSON or CSV configurations the folder's README declares), are read here row by row, as written: one
malformed row (bad JSON, invalid UTF-8, a CSV line of too many fields) becomes a counted skip with its line number
instead of failing the whole file, and no value is retyped. `datasets` would infer one Arrow type per column (a
CSV's `007` read as 7, `NA` as null, its 10,001st row cast to the first 10,000's types; a JSON array whose column
mixes text and lists had its texts decoded as JSON). Parquet, Arrow, saved datasets and the Hub go through
`datasets`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rsample.producer.prompts import RowSkip
from rsample.workers.common.config import DataSelection
from rsample.workers.common.errors import RsampleError, first_line
from rsample.workers.common.paths import missing_here, surely_local

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
"""The dataset files rsample reads, by suffix."""
GZIPPED = (".json.gz", ".jsonl.gz", ".csv.gz")
"""The dataset files that may also come gzipped (Parquet compresses inside)."""


def _suffix(path: Path) -> str:
    """A file's format suffix, under its compression: `.jsonl` for `rows.jsonl.gz`."""
    return Path(path.name.removesuffix(".gz")).suffix if path.name.endswith(".gz") else path.suffix


TABLE_FORMATS = (".json", ".parquet", ".csv", ".tsv", ".arrow")
"""The formats of rows `datasets` reads from a folder besides rsample's own (`.jsonl` is `.json`): a folder of two is
read in part. Text beside them (notes, a LICENSE) is no second format: `datasets` reads the rows' format."""


def _format(path: Path) -> str | None:
    suffix = _suffix(path).lower()
    suffix = ".json" if suffix in (".jsonl", ".ndjson") else suffix
    return suffix if suffix in TABLE_FORMATS else None


def _opened(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def _head(path: Path, size: int = 4096) -> bytes:
    """A file's first bytes, decompressed."""
    try:
        with _opened(path) as handle:
            return handle.read(size)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise _not_gzip(path, exc) from None


def _not_gzip(path: Path, exc: Exception) -> RsampleError:
    return RsampleError(f"dataset file {path} cannot be decompressed ({first_line(exc, with_type=True)}): a gzip file cut short, or "
                        "not gzip at all?")


def _looks_like_path(source: str) -> bool:
    return surely_local(source) or _suffix(Path(source)) in FILE_BUILDERS


BOM = b"\xef\xbb\xbf"
BLANK = BOM + b" \t\r\n"
"""What may come before a file's first row: a byte-order mark and whitespace."""


def _files(source: Path | list[Path]) -> list[Path]:
    return [source] if isinstance(source, Path) else source


def _read_here(path: Path) -> bool:
    """Whether rsample reads the file itself, row by row: every text format (JSON Lines, a JSON array, CSV, TSV)."""
    return _format(path) in (".json", ".csv", ".tsv")


def _own_rows(paths: Path | list[Path]) -> Iterator[tuple[int, Any, str]]:
    """Rows of files read here, one file after the other, numbered on across them, each with its file and place (a
    line, or an array's element); a bad row is a skip of its own."""
    row_index = 0
    for path in _files(paths):
        for place, row in _rows_in(path):
            if isinstance(row, RowSkip):  # numbered as every other skip (row N, from 0), with the file's own place
                row = RowSkip(row_index, row.reason, f"row {row_index} ({row.detail.replace(': ', '): ', 1)}")
            yield row_index, row, f"{path.name} {place}"
            row_index += 1


def _rows_in(path: Path) -> Iterator[tuple[str, Any]]:
    """(place, row or RowSkip) of one file read here."""
    if _format(path) in (".csv", ".tsv"):
        return _csv_rows(path)
    if _head(path).lstrip(BLANK).startswith(b"["):
        rows = _json_array(path)
        if rows is not None:
            return ((f"element {number}", row) for number, row in enumerate(rows, start=1))
    if _one_json_object(path):
        raise RsampleError(f"dataset file {path} holds one JSON object over several lines, not rows: give a JSON array of "
                           "rows, or JSON Lines (one row per line)")
    return _json_line_rows(path)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a JSON Lines file's rows: its lines that are not blank, without a byte-order mark (which
    may stand on a first line of its own, and begin a later row of files joined by `cat`; a later line of nothing else
    stays a row, a bad one, as rsample has always numbered it)."""
    try:
        with _opened(path) as handle:
            for line_number, raw in enumerate(handle, start=1):
                if line_number == 1 or raw[len(BOM):].strip():
                    raw = raw.removeprefix(BOM)
                if raw.strip():
                    yield line_number, raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # click would take an EOFError for Ctrl-D ("Aborted!")
        raise _not_gzip(path, exc) from None


def _json_line_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """("line N", row or RowSkip) of a JSON Lines file."""
    for line_number, raw in _lines(path):
        where = f"{path.name} line {line_number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield f"line {line_number}", RowSkip(0, "invalid UTF-8", f"{where}: {exc.reason} at byte {exc.start}")
            continue
        try:
            row = json.loads(text.rstrip("\r\n"))  # without its line break, which JSON would read as text
        except json.JSONDecodeError as exc:
            row = RowSkip(0, "invalid JSON", f"{where}: {exc.msg.removesuffix(' at')} at column {exc.colno}")
        except (ValueError, RecursionError) as exc:  # valid JSON Python will not read: a 5,000-digit number, 1,000 levels deep
            row = RowSkip(0, "invalid JSON", f"{where}: {_unreadable(exc)}")
        yield f"line {line_number}", row


def _json_array(path: Path) -> list | None:
    """The rows of a file that holds one JSON array, in any layout (read whole: its rows have no lines of their own);
    None for JSON Lines whose first row is a list (a bad row, one skip) or whose first line is a whole array."""
    try:
        with _opened(path) as handle:
            data = handle.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise _not_gzip(path, exc) from None
    try:
        rows = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RsampleError(f"dataset file {path} line {line}: invalid UTF-8, byte {data[exc.start]:#04x}: save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        if _first_line_is_a_value(data):  # JSON Lines: read line by line, a bad line one skip
            return None
        raise RsampleError(f"dataset file {path} is no valid JSON array: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise RsampleError(f"dataset file {path} cannot be read: {_unreadable(exc)}") from None
    return rows if isinstance(rows, list) else None


def _first_line_is_a_value(data: bytes) -> bool:
    """Whether a file's first line that is not blank is a JSON value of its own (a row of JSON Lines)."""
    first = next((line.strip(BLANK) for line in io.BytesIO(data) if line.strip(BLANK)), b"")
    try:
        json.loads(first)
    except (ValueError, RecursionError):
        return False
    return True


CSV_FIELD_LIMIT = 1 << 30
"""The longest CSV cell read, in characters (Python's csv module stops at 131,072 by default: a long document)."""
ESCAPED_BYTES = re.compile("[\udc80-\udcff]")
"""What `surrogateescape` makes of bytes that are no UTF-8: a row holding one is a skip, not a wrong text."""


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """("line N", row or RowSkip) of a CSV or TSV file: its header names the columns, every cell is text as written
    (`007`, `NA`, `1e3`), an empty cell is null, a row of fewer cells has nulls for the rest (as pandas reads it), a
    row of more cells, or with bytes that are no UTF-8, is a skip; blank lines and lines of spaces are no rows (as pandas
    numbers them); a quote never closed refuses the file."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    delimiter = "\t" if _format(path) == ".tsv" else ","
    try:
        with _opened(path) as handle:
            text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="surrogateescape", newline="")
            reader = csv.reader(text, delimiter=delimiter, strict=True)
            header: list[str] | None = None
            ended = 0
            while True:
                try:
                    cells = next(reader, None)
                except csv.Error as exc:
                    if str(exc) == "unexpected end of data":  # a reader not strict gives the rest of the file as that cell
                        raise RsampleError(f"dataset file {path} line {ended + 1}: a quoted cell opens here and is never closed (a stray "
                                           "'\"'?): the rest of the file would be that cell") from None
                    yield f"line {ended + 1}", RowSkip(0, "malformed CSV row", f"{path.name} line {ended + 1}: {exc}")
                    ended = reader.line_num
                    continue
                if cells is None:
                    return
                line, ended = ended + 1, reader.line_num
                if not cells or (len(cells) == 1 and not cells[0].strip() and ended == line):  # a blank line, as pandas skips
                    continue
                if header is None:
                    header = _csv_header(path, cells)
                    continue
                where = f"{path.name} line {line}"
                if any(ESCAPED_BYTES.search(cell) for cell in cells):
                    yield f"line {line}", RowSkip(0, "invalid UTF-8", f"{where}: bytes that are no UTF-8")
                elif len(cells) > len(header):
                    yield f"line {line}", RowSkip(0, "malformed CSV row", f"{where}: {len(cells)} cells, but the header names "
                                                  f"{len(header)} columns (a cell with {delimiter!r} in it needs quotes)")
                else:
                    yield f"line {line}", {name: (cells[i] if i < len(cells) and cells[i] != "" else None) for i, name in enumerate(header)}
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise _not_gzip(path, exc) from None


def _csv_header(path: Path, cells: list[str]) -> list[str]:
    """A CSV's column names, as pandas names them: an unnamed one (the index column pandas writes) is `Unnamed: N`,
    one given twice gets `.1`."""
    if any(ESCAPED_BYTES.search(cell) for cell in cells):
        raise RsampleError(f"dataset file {path}: its header holds bytes that are no UTF-8: save it as UTF-8")
    given = [cell if cell != "" else f"Unnamed: {number}" for number, cell in enumerate(cells)]
    names: list[str] = []
    for name in given:  # a name given twice: `answer`, `answer.1` (or `.2` where the header names `answer.1` too)
        again = 0
        while (name if not again else f"{name}.{again}") in names or (again and f"{name}.{again}" in given):
            again += 1
        names.append(name if not again else f"{name}.{again}")
    return names


def _unreadable(exc: ValueError | RecursionError) -> str:
    return "nested too deeply to read" if isinstance(exc, RecursionError) else first_line(exc)


def _split_files(folder: Path, split: str) -> list[Path] | None:
    """The files of `split` in a local folder, in order, as datasets names splits by file names (`test.jsonl` is the
    split 'test'; with such names, a file that matches no split is read by none); None where datasets will decide."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        files = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    except Exception:  # an empty folder, say: datasets' own error will name it
        return None
    by_name = {str(name): names for name, names in files.items()}
    if split not in by_name:
        raise RsampleError(f"dataset folder {folder} has no split {split!r} (its splits, by file names: {', '.join(sorted(by_name))})")
    return [Path(name) for name in by_name[split]]


def _folder_files(folder: Path, selection: DataSelection) -> list[Path] | None:
    """The files of the selected split, in the order their rows are read; None where datasets decides. A folder whose
    README declares its configs (a Hub repository's copy) is read by them, as `datasets` reads it."""
    if selection.subset is None and not _declares_configs(folder):
        return _split_files(folder, selection.split)
    return _config_files(folder, selection.subset, selection.split)


def _config_files(folder: Path, subset: str | None, split: str) -> list[Path] | None:
    """The files of `split` in the folder's configuration `subset` (or its default), as `datasets` resolves a card's
    `configs`, where rsample reads them itself (JSON, and CSV with pandas' defaults); None where datasets must read them
    (other formats, a JSON `field`, declared features, CSV options). Parquet files are checked for column types."""
    import dataclasses

    import datasets
    from datasets.packaged_modules.csv.csv import Csv, CsvConfig
    from datasets.packaged_modules.json.json import Json
    from datasets.packaged_modules.parquet.parquet import Parquet

    try:
        builder = datasets.load_dataset_builder(str(folder), subset)
    except Exception:  # an unknown subset, say: datasets' own load says why
        return None
    read_here = isinstance(builder, Json) and builder.config.field is None and builder.config.features is None
    if isinstance(builder, Csv):  # every option at its default: what rsample's reader does (a `sep`, `names`: datasets')
        defaults = CsvConfig()
        read_here = all(getattr(builder.config, field.name) == getattr(defaults, field.name) for field in dataclasses.fields(CsvConfig)
                        if field.name not in ("name", "version", "data_dir", "data_files", "description"))
    if not read_here and not isinstance(builder, Parquet):
        return None
    by_split = {str(name): files for name, files in (builder.config.data_files or {}).items()}
    if split not in by_split:
        raise RsampleError(f"dataset folder {folder} has no split {split!r} in its {builder.config.name!r} configuration "
                           f"(its splits: {', '.join(sorted(by_split))})")
    files = [Path(name) for name in by_split[split]]
    if isinstance(builder, Parquet):
        _same_kinds_of_values(folder, files)
        return None
    wanted = ".csv" if isinstance(builder, Csv) else ".json"
    return files if all(_format(file) == wanted for file in files) else None


def _declares_configs(folder: Path) -> bool:
    """Whether the folder's README.md declares `configs` in its YAML header, as a Hub dataset repository's does."""
    import yaml
    from huggingface_hub.repocard import metadata_load

    readme = folder / "README.md"
    if not readme.is_file():
        return False
    try:
        metadata = metadata_load(readme)
    except (yaml.YAMLError, ValueError):  # a README that is no dataset card (UnicodeDecodeError is a ValueError)
        return False
    return bool(metadata and metadata.get("configs"))


def _one_json_object(path: Path) -> bool:
    """Whether a file holds one JSON object pretty-printed over several lines (a first line of `{` alone), which no
    JSON Lines file begins with."""
    first = next((line.strip(BLANK) for line in _head(path).splitlines() if line.strip(BLANK)), b"")
    return first == b"{"


def _folder_cache(folder: Path) -> str:
    """A `datasets` cache of the folder's own, named by its absolute path and every file's size and time of change.
    `datasets` caches a folder whose card declares `configs` by the folder's name alone: another folder of the same
    name, or this one with a file edited, gave the rows cached before, without a word. The copies made of this folder
    before an edit are removed: they would never be read again, and each is as large as the folder's rows."""
    import datasets

    place = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    contents = hashlib.sha256()
    for name in sorted(_visible_files(folder)):  # not `.git`'s: its housekeeping changes no row
        stat = (folder / name).stat()
        contents.update(f"\0{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    caches = Path(datasets.config.HF_DATASETS_CACHE) / "rsample-folders"
    cache = caches / f"{place}-{contents.hexdigest()[:16]}"
    for earlier in caches.glob(f"{place}-*"):
        if earlier != cache:
            shutil.rmtree(earlier, ignore_errors=True)
    return str(cache)


def _load_with_datasets(source: str, split: str, data_files: str | None = None, subset: str | None = None,
                        cache_dir: str | None = None):
    import datasets

    try:
        if data_files:
            dataset = datasets.load_dataset(FILE_BUILDERS[_suffix(Path(data_files))], data_files=data_files, split="train")
        else:
            dataset = datasets.load_dataset(source, subset, split=split, cache_dir=cache_dir)
    except Exception as exc:  # datasets raises many types; the user needs the message, not the type
        cause = exc
        while cause.__cause__ is not None or cause.__context__ is not None:  # "An error occurred while generating ...": why
            cause = cause.__cause__ or cause.__context__
        why = "" if cause is exc or " at 0x" in str(cause) else f" ({first_line(cause, with_type=True)})"  # no object reprs
        if hasattr(cause, "table_column_names"):  # datasets' CastError: "Couldn't cast", then a schema over many lines
            why = f" ({type(cause).__name__}: {_other_columns(cause.table_column_names, cause.requested_column_names)})"
        which = f"subset {subset!r}, split {split!r}" if subset else f"split {split!r}"
        configs = re.search(r"available configs: (\[.*?\])", str(exc))
        if configs:  # "Config name is missing": a dataset of several subsets
            names = re.findall(r"'([^']*)'", configs.group(1))
            why = f" (name one with --subset: {', '.join(names)})"
        decoding = "utf" in f"{exc} {cause}".lower()
        undecodable = decoding and _first_undecodable(Path(data_files or source).expanduser())
        if undecodable:  # Arrow says "Invalid UTF8 sequence at string index 1", of no file nor line
            why = f" ({undecodable}: save it as UTF-8)"
        raise RsampleError(f"cannot load dataset {source!r} ({which}): {first_line(exc)}{why}{missing_here(source)}") from None
    return _undecoded(dataset)


def _other_columns(found: list[str], expected: list[str]) -> str:
    added, lacking = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
    differences = ([f"columns {', '.join(added)} that the first has not"] if added else []) + (
        [f"not the first's columns {', '.join(lacking)}"] if lacking else [])
    return f"one of its files has {' and '.join(differences)}: give every file the same columns"


def _first_undecodable(path: Path) -> str | None:
    """Where a local dataset read by `datasets` first holds bytes that are no UTF-8 (a CSV saved by a spreadsheet in
    Windows-1252, say): `name line N: invalid UTF-8 ...`; None when it has none, or is no local file or folder."""
    text = (".csv", ".tsv", ".json")  # not Parquet nor Arrow: no bytes of theirs are text
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and _format(p) in text) if path.is_dir() else []
    for file in files:
        try:
            with _opened(file) as handle:
                for line_number, raw in enumerate(handle, start=1):
                    try:
                        raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        return f"{file.name} line {line_number}: invalid UTF-8, byte {raw[exc.start]:#04x} at {exc.start}"
        except (OSError, EOFError, gzip.BadGzipFile, zlib.error):
            continue
    return None


def _open(selection: DataSelection):
    """A local JSON Lines file, or a folder's JSON Lines files (read line by line), or a `datasets.Dataset`."""
    source, split = selection.dataset, selection.split
    path = Path(source).expanduser()
    saved = path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    if path.is_file() or saved:
        if path.is_file() and not (path.suffix in FILE_BUILDERS or path.name.endswith(GZIPPED)):
            raise RsampleError(f"unsupported dataset file type {path.suffix!r} for {source} (use {', '.join((*FILE_BUILDERS, *GZIPPED))})")
        kind = "file" if path.is_file() else "saved dataset (`Dataset.save_to_disk`)"
        if split != "train":
            raise RsampleError(f"--split {split} applies to Hub datasets and folders; the {kind} {source} is one split (leave --split out)")
        if selection.subset is not None:
            raise RsampleError(f"--subset applies to Hub datasets and folders; the {kind} {source} is one (leave --subset out)")
        if saved:
            return _load_saved(path)
        if not _head(path).strip(BLANK):
            raise RsampleError(f"dataset file {source} is empty")
        if _read_here(path):
            return path  # row by row: one bad row is one skipped row, not a failed file
        return _load_with_datasets(source, split, data_files=str(path))
    if path.is_dir() and (path / "dataset_dict.json").is_file():  # `DatasetDict.save_to_disk`, as `load_dataset(...)` gives
        if selection.subset is not None:
            raise RsampleError(f"--subset applies to Hub datasets and folders of files; the saved dataset {source} has splits only "
                               "(leave --subset out)")
        return _load_saved(path, split)
    if path.is_dir():
        files = _folder_files(path, selection)
        formats = {_format(file) for file in files or ()} - {None}  # a LICENSE is none
        if len(formats) > 1:  # datasets would read the commonest format only, the others' rows lost without a word
            raise RsampleError(f"dataset folder {path} mixes file formats in split {split!r} ({', '.join(sorted(formats))}): "
                               "datasets reads only its commonest; keep one format per split (or name one file)")
        if files and all(_read_here(file) for file in files):
            return files  # the files and order datasets would read, row by row
        if files and formats == {".parquet"}:
            _same_kinds_of_values(path, files)
        return _load_with_datasets(str(path), split, subset=selection.subset, cache_dir=_folder_cache(path))
    if _looks_like_path(source):
        raise RsampleError(f"dataset file not found: {source}")
    return _load_with_datasets(source, split, subset=selection.subset)


def _value_kind(kind) -> str | None:
    """A Parquet column's type as text, number or boolean (None: another type, whose differences `datasets` reports)."""
    import pyarrow as pa

    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return "text"
    if pa.types.is_boolean(kind):  # a cast to it makes any number true
        return "true or false"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return "number"
    return None


def _same_kinds_of_values(folder: Path, files: list[Path]) -> None:
    """Parquet files of one split whose column holds text in one and numbers in another: `datasets` casts every file to
    the first one's types, and an answer `007` of a later file became 7 without a word (or one that is no number failed
    the load, naming no file)."""
    import pyarrow.parquet as pq

    first: dict[str, tuple[str, Any]] = {}
    for file in files:
        try:
            schema = pq.read_schema(file)
        except Exception:  # a damaged file: datasets' own load says why
            return
        for field in schema:
            kind = _value_kind(field.type)
            if kind is None:
                continue
            seen = first.setdefault(field.name, (file.name, field.type))
            if _value_kind(seen[1]) != kind:
                raise RsampleError(f"dataset folder {folder}: column {field.name!r} holds {field.type} in {file.name} but {seen[1]} in "
                                   f"{seen[0]}, and datasets would cast every file to its first one's types: give it one type in every file")


def _undecoded(dataset):
    """The dataset with its images, audio and video left as bytes: rsample reads no media (a prompt with an image part
    is skipped), and `datasets` decoded every row's anyway, where one file that was no image killed the coordinator
    at that row, at every restart."""
    import dataclasses

    for name, feature in dataset.features.items():
        if dataclasses.is_dataclass(feature) and getattr(feature, "decode", False):
            dataset = dataset.cast_column(name, dataclasses.replace(feature, decode=False))
    return dataset


def _load_saved(path: Path, split: str | None = None):
    """A `Dataset.save_to_disk` folder (one split), or a `DatasetDict.save_to_disk` folder's `split`."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as exc:  # a damaged folder: datasets says what it lacks
        raise RsampleError(f"cannot load the saved dataset {path}: {first_line(exc)}") from None
    if split is None:
        if not isinstance(dataset, datasets.Dataset):
            raise RsampleError(f"the saved dataset {path} is not one split")
        return _undecoded(dataset)
    if split not in dataset:
        raise RsampleError(f"the saved dataset {path} has no split {split!r} (its splits: {', '.join(dataset)})")
    return _undecoded(dataset[split])


def _stop(selection: DataSelection, total: int | None) -> int | None:
    stop = selection.end
    if selection.num_prompts is not None:
        limit = selection.start + selection.num_prompts
        stop = limit if stop is None else min(stop, limit)
    if total is not None:
        stop = total if stop is None else min(stop, total)
    return stop


def iter_rows(selection: DataSelection) -> Iterator[tuple[int, Any]]:
    """Yields (row index, row or RowSkip) for the selected slice of the dataset."""
    for index, row, _ in iter_located_rows(selection):
        yield index, row


def iter_located_rows(selection: DataSelection) -> Iterator[tuple[int, Any, str | None]]:
    """`iter_rows`, each row with where it stands in a file read line by line (`shard-2.jsonl line 7`), for a skip's
    message: a folder's row numbers run on across its files, past blank lines. None where `datasets` reads the rows."""
    source = _open(selection)
    if isinstance(source, (Path, list)):
        yield from itertools.islice(_own_rows(source), selection.start, _stop(selection, None))
        return
    for index in range(selection.start, _stop(selection, len(source))):
        yield index, source[index], None


def count_rows(selection: DataSelection) -> int:
    """Rows in the selected slice, counted without parsing them; also proves the dataset can be opened."""
    source = _open(selection)
    if isinstance(source, (Path, list)):
        total = 0
        for path in _files(source):  # JSON Lines by their lines, unparsed
            plain = _format(path) == ".json" and not _head(path).lstrip(BLANK).startswith(b"[") and not _one_json_object(path)
            rows = _lines(path) if plain else _rows_in(path)
            total += sum(1 for _ in rows)
    else:
        total = len(source)
    return max(0, _stop(selection, total) - selection.start)


def missing_columns(selection: DataSelection, columns: tuple[str, ...], sample: int = 1000) -> tuple[list[str], list[str]]:
    """(columns none of the dataset's rows has, the columns it has): a local JSONL file by its first `sample` rows,
    any other dataset by its schema."""
    source = _open(selection)
    if isinstance(source, (Path, list)):
        present: set[str] = set()
        for _, row, _ in itertools.islice(_own_rows(source), sample):
            if isinstance(row, dict):
                present |= set(row)
    else:
        present = set(source.column_names)
    return [column for column in columns if column not in present], sorted(present)


FINGERPRINT_HEAD = 1 << 16
"""Bytes of each file hashed for its fingerprint: a row added, removed or moved near the start changes them."""


def fingerprint(selection: DataSelection) -> dict[str, list] | None:
    """A local dataset's files by name: [size, hash of its first bytes]. Output rows are matched to dataset rows by
    number, so a resume must read the same rows; None for a Hub dataset (its revision is the Hub's business)."""
    path = Path(selection.dataset).expanduser()
    if path.is_dir():  # every file by name, the card's too (it may say which files are read); what is read: `read_order`
        files = {name: path / name for name in sorted(_visible_files(path))}
    else:
        files = {path.name: path} if path.is_file() else {}
    return {name: [file.stat().st_size, _head_hash(file, FINGERPRINT_HEAD)] for name, file in files.items()} or None


def read_order(selection: DataSelection) -> list[str] | None:
    """A local folder's files that the selection reads, in the order their rows come (datasets orders them by its split
    patterns, not by name); None where that is not known here (a single file, a folder `datasets` reads itself)."""
    path = Path(selection.dataset).expanduser()
    return (_read_names(path, selection) or None) if path.is_dir() else None


def _visible_files(folder: Path) -> list[str]:
    """A folder's files, relative, but those under a hidden folder (`.git`, `.cache`): no dataset's rows are there."""
    names = (str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return [name for name in names if not _in_hidden_folder(name)]


def _read_names(folder: Path, selection: DataSelection) -> list[str]:
    """The files of the selection that rsample reads, relative to `folder`, in the order their rows come; [] where
    `datasets` decides. Paths are compared without following a file's link (a snapshot's files link to blobs)."""
    if (folder / "dataset_dict.json").is_file():  # a saved DatasetDict: its split's rows, not the other splits' nor its state
        return sorted(str(file.relative_to(folder)) for file in (folder / selection.split).glob("*.arrow"))
    try:
        files = _folder_files(folder, selection) or ()
    except RsampleError:  # no such split: the run's own load says so
        return []
    bases = dict.fromkeys((os.path.abspath(folder), os.path.realpath(folder)))
    names = []
    for file in files:
        relative = next((name for base in bases if not (name := os.path.relpath(os.path.abspath(file), base)).startswith("..")), None)
        if relative is None:
            return []
        names.append(relative)
    return names


def _head_hash(path: Path, size: int) -> str:
    with path.open("rb") as handle:
        return hashlib.sha256(handle.read(size)).hexdigest()[:16]


def dataset_change(stored: dict[str, list], path: str, read: list[str] | None = None) -> str | None:
    """How the local dataset differs from its fingerprint (None: the same rows, perhaps with rows appended after the
    last ones, which leaves every other row's number alone).

    In a folder, `read` (`read_order` now) says which files give rows and in what order: a file read that grows or
    appears before the last one read shifts the rows after it; the card (README.md, which may declare what is read)
    must not change; other files do not count. Where `read` is not known, every file counts, in their names' order.
    Files under a hidden folder (`.git`) never do: no rows are read there."""
    root = Path(path).expanduser()
    names = [name for name in stored if not _in_hidden_folder(name)]
    position = {name: index for index, name in enumerate(read or ())}
    stored_read = [name for name in read or () if name in stored]
    next_read = dict(zip(stored_read, stored_read[1:]))  # each file read, and the next one whose rows were recorded
    for index, name in enumerate(names):
        size, head = stored[name]
        file = root / name if root.is_dir() else root
        if not file.is_file():
            return f"{name} is gone"
        if read and name not in position and name != "README.md":
            continue  # not read: its bytes move no row
        now = file.stat().st_size
        if now < size:
            return f"{name} shrank from {size} to {now} bytes"
        if _head_hash(file, min(size, FINGERPRINT_HEAD)) != head:
            return f"{name} has other rows at its start"
        if now > size:
            later = next_read.get(name) if name in position else "the files it declares" if read else \
                (names[index + 1] if index + 1 < len(names) else None)
            if later:
                return f"{name} grew, which moves the rows of {later} and after"
    if root.is_dir():
        order = read if read else sorted(_visible_files(root))
        known = [name for name in order if name in stored]
        if known:
            early = [name for name in order[:order.index(known[-1])] if name not in stored]
            if early:
                return f"{early[0]} is new and comes before {known[-1]}"
    return None


def _in_hidden_folder(name: str) -> bool:
    return any(part.startswith(".") for part in Path(name).parts[:-1])
