"""The output files and their commit record: what became of every row of the dataset, written once.

`pairs.jsonl`, `scores.jsonl` and the SFT file hold the data; `pairs.outcomes.jsonl` holds one line per dataset row
(pair, dropped, skipped with its reason, or duplicate of an earlier row). A row's outcome line is written
after its data, so it is the commit: on start-up, data rows whose outcome never made it to disk are
removed, half-written lines are cut, and every row with an outcome is never produced again. This is what
makes a run resumable from its files alone, even when Redis lost everything.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rsample.producer.dataset import dataset_change
from rsample.workers.common.errors import RsampleError
from rsample.workers.common.messages import DUPLICATE, SKIPPED, Outcome, is_failure_reason

log = logging.getLogger(__name__)


class FilesChanged(RsampleError):
    """The run's files or dataset changed since it wrote them: resuming would be wrong; --overwrite starts over."""


OUTPUT_FLAGS = {"pairs": "--out", "scores": "--scores-out", "sft": "--sft-out"}


def outcomes_path_for(out: Path) -> Path:
    return out.with_name(f"{out.stem}.outcomes.jsonl")


def output_header(out: Path) -> dict:
    """The header of `out`'s outcomes file (the run whose output these files are, its outputs and settings), if any."""
    path = outcomes_path_for(out)
    if not path.is_file():
        return {}
    with path.open("rb") as handle:
        first = handle.readline()
    try:
        header = json.loads(first) if first.endswith(b"\n") else {}
    except ValueError:
        return {}
    return header if isinstance(header, dict) else {}


def output_owner(out: Path) -> str | None:
    """The run id in the header of `out`'s outcomes file: the run whose output these files are, if any."""
    return output_header(out).get("rsample_run")


FLAG_NAMES = {"generation_backend": "backend", "prompts_per_job": "batch-size", "reward_models": "reward-model",
              "reward_micro_batch": "reward-batch-size", "extra_columns": "extra-column", "prompt_columns": "prompt-column"}


def first_difference(before: dict, now: dict) -> str | None:
    """The first setting that differs between two runs' settings, as its flag with both values."""
    for name in sorted(set(before) | set(now)):
        old, new = before.get(name), now.get(name)
        if isinstance(old, dict) and isinstance(new, dict) and name != "chat_template_kwargs":
            found = first_difference(old, new)
            if found:
                return found
        elif old != new and name == "reward_names":  # the NAME= of `--reward-model NAME=MODEL`, not the models
            return f"the reward models' names (--reward-model NAME=...) were {_names(old)}, now {_names(new)}"
        elif old != new:
            flag = f"--{FLAG_NAMES.get(name, name.replace('_', '-'))}"
            if max(len(repr(old)), len(repr(new))) > 80:  # a judge's rubric, a system prompt: not printed whole
                return f"{flag} changed"
            return f"{flag} was {old!r}, now {new!r}"
    return None


def _names(names) -> str:
    return ", ".join(str(name) if name else "(none)" for name in names) if names else "none"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_outputs(run_id: str, out: Path, scores_out: Path | None, inputs: tuple[Path, ...] = (), overwrite: bool = False,
                  sft_out: Path | None = None, settings: dict | None = None, parquet: bool = False, drop_copies: bool = False) -> None:
    """Refuses, before any work and in one line, outputs that would destroy a file that is not this run's output.

    The files may be this run's (a resume); anything else that exists and holds data is kept unless `overwrite`.
    An input (the dataset) may never be an output, with or without `overwrite`, nor (`parquet`) the Parquet copy of one.
    With `drop_copies` (where `inputs` are known), the outputs' Parquet copies that no longer match go (`drop_stale_copies`).
    """
    from rsample.producer.parquet import drop_stale_copies, parquet_path

    outputs = {"--out": out, "--scores-out": scores_out, "--sft-out": sft_out, "the outcomes file": outcomes_path_for(out)}
    copies = {f"the Parquet copy of {flag}": parquet_path(Path(path)) for flag, path in (("--out", out), ("--scores-out", scores_out),
                                                                                      ("--sft-out", sft_out)) if parquet and path}
    outputs = {name: Path(path) for name, path in {**outputs, **copies}.items() if path is not None}
    for name, path in outputs.items():
        for source in inputs:
            if source.is_dir() and path.resolve().is_relative_to(source.resolve()):
                raise RsampleError(f"{name} {path} is inside the dataset folder {source}, which would read it as data: "
                                   "write the output elsewhere")
            if _same_file(path, source):
                raise RsampleError(f"{name} {path} is the dataset itself: write the output to another file")
    for name, path in outputs.items():
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise RsampleError(f"{name} {path}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise RsampleError(f"{name} {path}: cannot write in {folder} (no permission, or a read-only file system)")
        if path.exists() and not path.is_file():
            raise RsampleError(f"{name} {path} is not a regular file: give a file path (rsample replaces and truncates its outputs)")
    names = list(outputs)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            if _same_file(outputs[first], outputs[second]):
                raise RsampleError(f"{first} and {second} are the same file ({outputs[first]}): give each its own")
    owner = output_owner(Path(out))
    if owner == run_id or overwrite:
        if drop_copies:  # where the run's inputs are known: a dataset may be a copy of an output (a second round's prompts)
            drop_stale_copies((out, scores_out, sft_out), inputs, replaced=overwrite and owner != run_id)
        return
    existing = [path for path in outputs.values() if path.exists() and path.stat().st_size > 0]
    if owner is not None and existing == [outcomes_path_for(Path(out))] and _header_alone(existing[0]):
        # a run that failed before its first row (a reward function mistyped, found when the worker started): the
        # corrected command was refused for files that held nothing but the header
        log.info("%s holds no row (its run %s stopped before any): replaced", existing[0], owner)
        return
    if existing:
        before = output_header(Path(out)).get("settings")
        difference = first_difference(before, json.loads(json.dumps(settings))) if before and settings else None  # as stored
        whose = (f"run {owner}'s output, made with other settings{f' ({difference})' if difference else ''}" if owner
                 else "not the output of this run")
        raise RsampleError(f"{existing[0]} exists and is {whose}: pass --overwrite to replace it, or choose another --out")


def _header_alone(outcomes: Path) -> bool:
    """Whether an outcomes file holds its header line and nothing after it."""
    with outcomes.open("rb") as handle:
        handle.readline()
        return not handle.read(1)


def output_lock_path(outcomes: Path) -> Path:
    """Hidden, beside the outcomes file: a glob of the data files never takes it in. Never deleted: a lock file
    removed while another process waits on it would let a third lock a new file of the same name."""
    return outcomes.with_name(f".{outcomes.name}.lock")


def hold_output_lock(out: Path, run_id: str) -> int | None:
    """An exclusive lock on the run's output for the holder's life: a coordinator paused within a commit (a stopped
    process, a machine asleep) keeps it, so that a second one, which the Redis lock let in once the first stopped
    refreshing it, cannot cut back or write on the files under it. The kernel lets it go with the process, however
    it ends. Returns the descriptor that holds it; None where the file system has no such locks (Lustre mounted
    noflock, NFSv3 without lockd): the ledger's size checks are then all there is, as where a lock lapses."""
    import errno
    import fcntl

    path = output_lock_path(outcomes_path_for(out))
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RsampleError(f"cannot create {path}, the lock of run {run_id}'s output: {exc.strerror or exc}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(descriptor)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise RsampleError(f"another process is writing run {run_id}'s output {out} "
                               "(a coordinator still running, or one stopped or paused: end it or let it go on first)") from None
        log.warning("the file system of %s takes no file locks (%s): a second coordinator of run %s on these files is told "
                    "only by their sizes", out, exc.strerror or exc, run_id)
        return None
    return descriptor


def _fsync_directory(path: Path) -> None:
    """Makes a rename or a new file in `path`'s folder survive a power cut, as the file's own fsync does not."""
    handle = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _truncate(path: Path, size: int) -> None:
    with path.open("r+b") as handle:
        handle.truncate(size)
        handle.flush()
        os.fsync(handle.fileno())


def _keep_committed(path: Path | None, committed: set[str], key) -> None:
    """Rewrites `path` without rows of uncommitted prompts and without repeats: for outcome files written before
    commits recorded where the data ends (`data_end`), which must be parsed row by row. Atomic: a crash leaves
    either the old file or the new one."""
    if path is None or not path.exists():
        return
    data = path.read_bytes()
    lines = data[:data.rfind(b"\n") + 1].decode("utf-8").split("\n")[:-1]  # not splitlines(): \x85 or \u2028 may be in a text
    kept = _first_of_each([row for row in map(json.loads, lines) if row.get("prompt_id") in committed], key)
    if len(kept) != len(lines) or len(data) != sum(len(line.encode()) + 1 for line in lines):
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("wb") as handle:
            handle.write(_jsonl(kept).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _fsync_directory(path)


def _count_lines(path: Path, chunk: int = 1 << 24) -> int:
    """Newlines in a file, read in 16 MiB chunks: a resumed SFT file of millions of rows is counted, never parsed."""
    count = 0
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            count += block.count(b"\n")
    return count


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _first_of_each(rows: list[dict], key) -> list[dict]:
    seen, kept = set(), []
    for row in rows:
        if key(row) not in seen:
            seen.add(key(row))
            kept.append(row)
    return kept


@dataclass
class OutcomesReplay:
    """What an outcomes file says once its commits are replayed, as a resume reads it."""

    settled: dict[int, Outcome] = field(default_factory=dict)
    """Each settled row's outcome: the first committed one, unless `--retry-failed` opened its row again since."""
    data_end: dict | None = None
    """Where the data files end, as the last commit recorded it (None: no commit recorded it)."""
    committed: int = 0
    """Bytes of the outcomes file that are committed; a commit cut short lies beyond."""
    legacy: bool = False
    """An older file, whose every line is a commit of its own (none records where the data ends)."""
    known_outputs: set[str] = field(default_factory=set)
    known_paths: dict[str, str] = field(default_factory=dict)
    dataset_seen: dict | None = None

    def settle(self, outcome: Outcome) -> None:
        self.settled.setdefault(outcome.row_index, outcome)

    def reopen(self, row_index: int) -> None:
        """A failed row that `--retry-failed` opened again: only a skip whose work failed ever is."""
        outcome = self.settled.get(row_index)
        if outcome is not None and outcome.outcome == SKIPPED and is_failure_reason(outcome.reason):
            del self.settled[row_index]


def replay_outcomes(path: Path) -> OutcomesReplay:
    """Replays `path`'s lines: outcomes count once their commit's last line (the one with `data_end`) is there."""
    replay, pending, outcome_lines = OutcomesReplay(), [], 0
    with path.open("rb") as handle:
        header = handle.readline()
        if not header.endswith(b"\n"):  # cut by a crash before the first commit: nothing is settled
            return replay
        position = replay.committed = len(header)
        header = json.loads(header)
        replay.known_outputs = set(header.get("outputs", ("pairs", "scores", "sft")))  # older headers: trusted
        replay.known_paths = dict(header.get("paths", {}))
        replay.dataset_seen = header.get("dataset")
        for line in handle:
            if not line.endswith(b"\n"):
                break  # cut by a crash
            position += len(line)
            raw = json.loads(line)
            if "rsample_retry" in raw:  # rows a resume opened again (written between commits; older files: after lines
                for outcome in pending:  # that were each a commit of their own)
                    replay.settle(outcome)
                pending, replay.committed = [], position
                for row in raw["rsample_retry"]:
                    replay.reopen(row)
                continue
            if "rsample_outputs" in raw or "rsample_dataset" in raw or "paths" in raw:  # a resume's, between commits
                replay.known_outputs |= set(raw.get("rsample_outputs", ()))
                replay.known_paths.update(raw.get("paths", {}))
                replay.dataset_seen = raw.get("rsample_dataset", replay.dataset_seen)
                if not pending:
                    replay.committed = position
                continue
            pending.append(Outcome.from_dict(raw))
            outcome_lines += 1
            if "data_end" in raw:  # the last line of a commit: everything up to here is committed
                replay.data_end, replay.committed = raw["data_end"], position
                for outcome in pending:
                    replay.settle(outcome)
                pending = []
    replay.legacy = replay.data_end is None and outcome_lines > 0  # no commit recorded where the data ends
    if replay.legacy:  # every line is a commit of its own
        for outcome in pending:
            replay.settle(outcome)
        replay.committed = position
    return replay


class Ledger:
    """What is written, kept as an index: the settled row numbers and prompt ids (not the rows themselves), so that
    resuming a run of a million pairs reads the small outcomes file alone. Each commit's last outcome line records
    where the data files end (`data_end`); on resume, whatever lies beyond (data whose outcomes never made it) is
    cut off, without parsing a single data row."""

    def __init__(self, out: str | Path, scores_out: str | Path | None, run_id: str, overwrite: bool = False,
                 sft_out: str | Path | None = None, dataset: tuple | None = None, settings: dict | None = None,
                 start_over: bool = False, created_at: float | None = None):
        """`overwrite`: files of another run (or none) at these paths are replaced; else they make this refuse.
        `dataset`: the local dataset's path and fingerprint, kept in the header, and the files it reads in their order
        (`read_order`, optional); a resume refuses a dataset whose rows changed (output rows are matched to dataset
        rows by number)."""
        self.out = Path(out)
        self.scores_out = Path(scores_out) if scores_out else None
        self.sft_out = Path(sft_out) if sft_out else None
        self.outcomes_path = outcomes_path_for(self.out)
        self.run_id = run_id
        self.rows: set[int] = set()
        """Row numbers of the dataset that have their outcome."""
        self.prompt_ids: set[str] = set()
        self._row_prompts: dict[int, str | None] = {}
        """Each settled row's prompt id (None: a row skipped as unreadable), to tell a row that changed since."""
        self.sft_written = 0
        """Rows in the SFT file (committed ones: counted on resume, kept up as commits add more)."""
        self._outcome_counts: Counter = Counter()
        self._skip_reasons: Counter = Counter()
        self._failed: dict[int, Outcome] = {}
        """The settled rows skipped because their work failed (see `retry_failed`)."""
        check_outputs(run_id, self.out, self.scores_out, overwrite=overwrite, sft_out=self.sft_out)
        self.overwrite = overwrite
        self.dataset = dataset
        self.created_at = created_at
        """When the run was first made: kept in the header, for a session that registers the run again."""
        self._known_outputs: set[str] = set()
        self._known_paths: dict[str, str] = {}
        """Each output's path, relative to the outcomes file's folder, as the run last gave it (older files: none)."""
        self._data_end: dict[str, int] = {"pairs": 0, "scores": 0, "sft": 0}
        """Where each data file's committed rows end, as the last commit recorded it: an output this session does not
        write keeps its end, so that a later session that gives it again keeps its rows."""
        self._dataset_seen: dict | None = None
        """The dataset's fingerprint as the run last read it (header, or a later line when rows were appended)."""
        for path in (self.out, self.scores_out, self.sft_out):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = hold_output_lock(self.out, run_id)  # before `_load`, which cuts files back
        self._sizes: dict = {}
        """Each open file's size as this ledger's last write left it: another writer shows as a difference."""
        self._pairs = self._scores = self._sft = self._outcomes = None
        try:
            self._open_all(start_over, settings)
        except BaseException:
            self.close()  # the lock too: a caller that tries again in this process must not find it held
            raise

    def _open_all(self, start_over: bool, settings: dict | None) -> None:
        dataset, run_id = self.dataset, self.run_id
        self._load(start_over)
        self._pairs = self._open(self.out)
        self._scores = self._open(self.scores_out) if self.scores_out else None
        self._sft = self._open(self.sft_out) if self.sft_out else None
        if self._sft is not None and self._sizes[self._sft]:
            self.sft_written = _count_lines(self.sft_out)
        self._outcomes = self._open(self.outcomes_path)
        fingerprint = dataset[1] if dataset is not None else None
        if self._sizes[self._outcomes] == 0:
            header = {"rsample_run": run_id, "outputs": list(self._outputs()), "paths": self._relative_paths()}
            if fingerprint:
                header["dataset"] = fingerprint
            if settings:
                header["settings"] = settings  # so that a re-run with other settings is told which one differs
            if self.created_at:
                header["created_at"] = self.created_at
            self._append(self._outcomes, [header])
            _fsync_directory(self.outcomes_path)
            return
        added = [kind for kind in self._outputs() if kind not in self._known_outputs]
        for kind in added:
            if self.rows:
                log.warning("%s %s is new to run %s: it gets the rows written from now on, not the %d written before",
                            OUTPUT_FLAGS[kind], self._outputs()[kind], run_id, len(self.rows))
        grown = {"rsample_dataset": fingerprint} if fingerprint and fingerprint != self._dataset_seen else {}
        moved = {kind: path for kind, path in self._relative_paths().items() if self._known_paths.get(kind) != path}
        if added or grown or moved:  # before any row of theirs: these files are this run's now, and this is the dataset it reads
            self._append(self._outcomes, [{**({"rsample_outputs": added} if added else {}), **grown, **({"paths": moved} if moved else {})}])

    def _outputs(self) -> dict[str, Path]:
        """The data files this command gives, by kind (the header and `rsample_outputs` lines name the kinds)."""
        files = {"pairs": self.out, "scores": self.scores_out, "sft": self.sft_out}
        return {kind: path for kind, path in files.items() if path is not None}

    def _relative_paths(self) -> dict[str, str]:
        """The outputs' paths from the outcomes file's folder: the same if the whole folder moves."""
        folder = self.outcomes_path.parent.resolve()
        return {kind: os.path.relpath(path.resolve(), folder) for kind, path in self._outputs().items()}

    def _load(self, start_over: bool = False) -> None:
        """`start_over`: the run's own files are replaced too (`--overwrite` where a row of the dataset changed)."""
        if start_over or output_owner(self.out) != self.run_id:  # a fresh run: `check_outputs` allowed replacing what is there
            self._start_over()
            return
        try:
            self._resume()
        except FilesChanged as exc:
            if not self.overwrite:
                raise
            log.warning("%s; --overwrite: run %s starts over", exc, self.run_id)
            self._start_over()

    def _start_over(self) -> None:
        for path in (self.out, self.scores_out, self.sft_out, self.outcomes_path):
            if path is not None and path.exists():
                path.unlink()
        self.rows, self.prompt_ids, self._row_prompts = set(), set(), {}
        self._outcome_counts, self._skip_reasons, self._failed = Counter(), Counter(), {}
        self._known_outputs, self._dataset_seen, self._known_paths = set(), None, {}
        self._data_end = {"pairs": 0, "scores": 0, "sft": 0}

    def _resume(self) -> None:
        replay = replay_outcomes(self.outcomes_path)
        self._known_outputs, self._known_paths, self._dataset_seen = replay.known_outputs, replay.known_paths, replay.dataset_seen
        for outcome in replay.settled.values():
            self._record(outcome)
        data_end, committed, legacy = replay.data_end, replay.committed, replay.legacy
        if self.dataset is not None and self._dataset_seen:
            change = dataset_change(self._dataset_seen, self.dataset[0], self.dataset[2] if len(self.dataset) > 2 else None)
            if change:
                raise FilesChanged(f"the dataset changed since run {self.run_id} last read it ({change}): its output rows are "
                                   "matched to dataset rows by number; restore the dataset, or start over with --overwrite")
        ends = {"pairs": 0, "scores": 0, "sft": 0, **(data_end or {})}
        # an end no commit recorded (a kind an older file's session left out while its end was unknown) is never cut to
        self._data_end = {} if legacy else dict(ends) if data_end is None else dict(data_end)
        unknown = {kind for kind in ends if data_end is not None and kind not in data_end}
        here = self._relative_paths()
        for kind, path in self._outputs().items():
            recorded = self._known_paths.get(kind)
            if recorded is not None and recorded != here[kind] and path.exists() and path.stat().st_size > 0:
                raise FilesChanged(f"{path} is not the {OUTPUT_FLAGS[kind]} file of run {self.run_id}, which is "
                                   f"{self.outcomes_path.parent / recorded}: give that path, or start over with --overwrite")
            if kind in unknown:
                continue
            if not legacy and kind in self._known_outputs and ends[kind] and not path.exists():
                raise FilesChanged(f"{path} is missing, but its run committed {ends[kind]} bytes to it: restore it, or start over "
                                   "with --overwrite")
            if not legacy and path.exists() and path.stat().st_size < ends[kind]:
                raise FilesChanged(f"{path} holds {path.stat().st_size} bytes but its run committed {ends[kind]}: it was changed "
                                   "since; restore it, or start over with --overwrite")
            if kind not in self._known_outputs and path.exists() and path.stat().st_size > 0:
                if not self.overwrite:
                    raise RsampleError(f"{path} exists and is not the output of this run (run {self.run_id} wrote no {OUTPUT_FLAGS[kind]} "
                                       "before): pass --overwrite to replace it, or choose another path")
                path.unlink()
        if committed < self.outcomes_path.stat().st_size:  # a commit cut short: its lines and its data go
            _truncate(self.outcomes_path, committed)
        if legacy:  # written before commits recorded `data_end`
            _keep_committed(self.out, self.prompt_ids, key=lambda row: row["prompt_id"])
            _keep_committed(self.scores_out, self.prompt_ids, key=lambda row: (row["prompt_id"], row["completion_index"]))
            _keep_committed(self.sft_out, self.prompt_ids, key=lambda row: row["prompt_id"])
            return
        for kind, path in self._outputs().items():
            if kind not in unknown and path.exists() and path.stat().st_size > ends[kind]:  # data of a commit that never finished
                _truncate(path, ends[kind])

    def changed(self, row_index: int, prompt_id: str | None) -> bool:
        """Whether a settled row read again gives another prompt than it gave. A row read as a skip one time and as a
        prompt the other is not counted: rsample reads some rows otherwise since (tool use, Arrow's null keys), and its
        recorded outcome stands; a row that moved (an edit before it) changes the prompts of the rows after it."""
        if row_index not in self._row_prompts:
            return False
        stored = self._row_prompts[row_index]
        return stored is not None and prompt_id is not None and stored != prompt_id

    def recorded_prompt(self, row_index: int) -> str | None:
        """The prompt id a settled row's outcome records (None for a row skipped unread): what later rows are duplicates
        of, whatever the row reads as now (see `changed`)."""
        return self._row_prompts.get(row_index)

    def check_row(self, row_index: int, prompt_id: str | None) -> None:
        """A settled row read again must give the prompt it gave: a dataset edited where its fingerprint does not look
        (past its first 64 KiB, its size unchanged) would otherwise leave rows matched to other prompts' outcomes."""
        if self.changed(row_index, prompt_id):
            raise FilesChanged(f"row {row_index} of the dataset is not the row run {self.run_id} wrote an outcome for (it was "
                               "edited since, or the rsample that wrote the run read it otherwise): output rows are matched to "
                               "dataset rows by number; restore the dataset, or start over with --overwrite")

    def is_settled(self, outcome: Outcome) -> bool:
        if outcome.row_index in self.rows:
            return True
        return outcome.outcome != DUPLICATE and outcome.prompt_id in self.prompt_ids

    def _record(self, outcome: Outcome) -> None:
        if outcome.row_index in self.rows:
            return
        self.rows.add(outcome.row_index)
        self._row_prompts[outcome.row_index] = outcome.prompt_id
        if outcome.prompt_id and outcome.outcome != DUPLICATE:
            self.prompt_ids.add(outcome.prompt_id)
        self._outcome_counts[outcome.outcome] += 1
        if outcome.outcome == SKIPPED:
            self._skip_reasons[outcome.reason] += 1
            if is_failure_reason(outcome.reason):
                self._failed[outcome.row_index] = outcome

    def _unrecord(self, row_index: int) -> None:
        """Forgets a failed row's outcome: it is open again."""
        outcome = self._failed.pop(row_index, None)
        if outcome is None:
            return
        self.rows.discard(row_index)
        self._row_prompts.pop(row_index, None)
        self.prompt_ids.discard(outcome.prompt_id)
        self._outcome_counts[SKIPPED] -= 1
        self._skip_reasons[outcome.reason] -= 1

    def retry_failed(self) -> list[Outcome]:
        """Opens again the rows skipped because their work failed (an error, a timeout, a worker that kept dying: see
        `is_failure_reason`), so that the run produces them again; returns the outcomes they had. Their skips wrote no
        data rows, so nothing is written twice. A `rsample_retry` line in the outcomes file keeps this for later resumes."""
        self._check_still_ours()
        failed = [self._failed[row] for row in sorted(self._failed)]
        if failed:
            self._append(self._outcomes, [{"rsample_retry": [outcome.row_index for outcome in failed]}])
            for outcome in failed:
                self._unrecord(outcome.row_index)
        return failed

    def commit(self, outcomes: list[Outcome], pairs: list[dict], scores: list[dict], sft: list[dict] = ()) -> list[Outcome]:
        """Writes what is new, data first and outcomes last, each made durable; returns the new outcomes.

        The same prompt may come twice in one call (a batch delivered twice): its first rows win. The last outcome
        line records where the data files now end: the commit point a resume cuts back to.
        """
        self._check_still_ours()
        fresh = []
        for outcome in outcomes:
            if not self.is_settled(outcome):
                fresh.append(outcome)
                self._record(outcome)
        if not fresh:
            return fresh
        new_ids = {o.prompt_id for o in fresh if o.outcome != DUPLICATE}  # a duplicate's id is its earlier row's, written already
        self._append(self._scores, _first_of_each([r for r in scores if r["prompt_id"] in new_ids], lambda r: (r["prompt_id"], r["completion_index"])))
        self._append(self._pairs, _first_of_each([r for r in pairs if r["prompt_id"] in new_ids], lambda r: r["prompt_id"]))
        sft_rows = _first_of_each([r for r in sft if r["prompt_id"] in new_ids], lambda r: r["prompt_id"])
        self._append(self._sft, sft_rows)
        self.sft_written += len(sft_rows) if self._sft is not None else 0
        lines = [asdict(o) for o in fresh]
        handles = {"pairs": self._pairs, "scores": self._scores, "sft": self._sft}
        for handle in handles.values():  # the commit point below must record ends that are this ledger's data
            self._check_unchanged(handle)
        self._data_end = {kind: self._sizes[handle] if handle is not None else self._data_end[kind] for kind, handle in handles.items()
                          if handle is not None or kind in self._data_end}  # an unknown end stays unknown, never 0
        lines[-1]["data_end"] = dict(self._data_end)
        self._append(self._outcomes, lines)
        return fresh

    def _check_still_ours(self) -> None:
        """The files end where this ledger last wrote them. The output lock (`hold_output_lock`) keeps a second
        coordinator out while this one lives, paused or not; where the file system lets a lock go (an NFS lease of a
        machine asleep), a coordinator paused past it finds another's commits after its own: its index is stale, and
        writing on would write rows twice, or record data ends below the other's rows."""
        for handle in (self._outcomes, self._pairs, self._scores, self._sft):
            self._check_unchanged(handle)

    def _check_unchanged(self, handle) -> None:
        if handle is None:
            return
        size = os.fstat(handle.fileno()).st_size
        if size != self._sizes[handle]:
            raise RsampleError(f"{handle.name} changed since this coordinator last wrote it ({size - self._sizes[handle]:+d} bytes): "
                               f"another coordinator of run {self.run_id} wrote to it meanwhile (was this one paused?); this one "
                               "stops without writing, and the same command resumes from the files")

    def _open(self, path: Path):
        handle = path.open("ab")
        self._sizes[handle] = os.fstat(handle.fileno()).st_size
        return handle

    def _append(self, handle, rows: list[dict]) -> None:
        """Checked against another writer first (every file of a commit, not only the first: a pause may fall within one)."""
        if handle is None or not rows:
            return
        self._check_unchanged(handle)
        data = _jsonl(rows).encode("utf-8")
        try:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:  # a full disk, a quota: what is committed stays, this commit is cut back on resume
            raise RsampleError(f"cannot write {handle.name}: {exc.strerror or exc}; the rows committed so far are kept, and "
                               "the same command resumes once it can write") from None
        self._sizes[handle] += len(data)

    @property
    def failed_rows(self) -> int:
        """Settled rows skipped because their work failed: what `retry_failed` would open again."""
        return len(self._failed)

    def counts(self) -> tuple[Counter, Counter]:
        """(outcome -> rows, skip reason -> rows) over the whole ledger, kept as rows are settled."""
        return +self._outcome_counts, +self._skip_reasons  # copies, without the zeros retried rows leave

    def close(self) -> None:
        for handle in (self._pairs, self._scores, self._sft, self._outcomes):
            if handle is not None:
                try:
                    handle.close()
                except OSError:  # what a failed write left in its buffer was never committed: a resume cuts it anyway
                    pass
        if self._lock is not None:
            os.close(self._lock)  # and with it the lock
            self._lock = None
