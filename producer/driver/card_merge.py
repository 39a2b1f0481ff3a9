"""A push into a repository that already has a dataset card keeps what the card's owner wrote.

rsample's part of a card (its configs, their features, its tags, and the prose between two marker lines) is replaced
at each push; everything else in the card (a license, a language, the user's own configs and prose) stays, as
`datasets`' own `push_to_hub` leaves a card's other parts as they were. What cannot be kept is refused before any
upload: a config of the user's under a name rsample's configs take, or data files that rsample's configs would hide.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

from rsample.workers.common.errors import RsampleError, first_line

BEGIN = "<!-- rsample:begin -->"
END = "<!-- rsample:end -->"
TAG = "rsample"
CONFIGS = ("pairs", "scores", "sft")
"""rsample's configs, each of the one file `<name>.jsonl`."""


def existing_card(api, repo_id: str, repo_files: set[str]):
    """The repository's card, or None where it has none; a card that cannot be read is refused rather than replaced."""
    from huggingface_hub import DatasetCard

    if "README.md" not in repo_files:
        return None
    try:
        return DatasetCard(open(api.hf_hub_download(repo_id, "README.md", repo_type="dataset"), encoding="utf-8").read())
    except Exception as exc:
        raise RsampleError(f"the Hub dataset {repo_id} has a README.md that is no readable dataset card ({first_line(exc)}), and "
                           "rsample would replace it: mend it on the Hub, or push to another repository (the JSONL files are kept "
                           "locally)") from None


def tags(metadata: dict) -> list[str]:
    """A card's tags: YAML lets one tag be written as a plain string."""
    value = metadata.get("tags") or []
    return [value] if isinstance(value, str) else list(value)


def configs(metadata: dict) -> list[dict]:
    return [config for config in metadata.get("configs") or [] if isinstance(config, dict)]


def is_rsamples(card) -> bool:
    return card is not None and TAG in tags(card.data.to_dict())


def is_rsamples_config(config: dict) -> bool:
    name = config.get("config_name")
    return name in CONFIGS and config_paths(config) == {f"{name}.jsonl"}


def marked_span(text: str) -> tuple[int, int] | None:
    """Where rsample's part of the prose lies: from a BEGIN line to the next END line, neither in a fenced code block
    (a README that shows the markers as an example keeps its example), the last BEGIN before that END (one the user
    mentions on a line of its own keeps the prose after it)."""
    offset, fence, start = 0, None, None
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if fence is not None:
            fence = None if stripped.startswith(fence) else fence
        elif stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
        elif stripped == BEGIN:
            start = offset
        elif stripped == END and start is not None:
            return start, offset + len(line)
        offset += len(line)
    return None


def rsamples_text(card) -> str:
    """The prose rsample wrote: between its markers, or the whole text of a card it wrote before it had them."""
    span = marked_span(card.text)
    if span is not None:
        return card.text[span[0]:span[1]]
    return card.text if is_rsamples(card) else ""


def config_paths(config: dict) -> set[str]:
    """Every path a config's `data_files` names, in any of the shapes the Hub accepts (a string, a list, split entries)."""
    found: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            walk(value.get("path"))

    walk(config.get("data_files"))
    return found


def data_files_detected(repo_files: set[str]) -> list[str]:
    """The files `datasets` would read as data in a repository whose card declares no configs (by their extensions)."""
    try:
        from datasets.packaged_modules import _EXTENSION_TO_MODULE as readable
    except ImportError:  # a `datasets` that moved it: the usual ones
        readable = dict.fromkeys((".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".txt", ".png", ".jpg"))
    return sorted(path for path in repo_files if path != "README.md" and "".join(PurePosixPath(path).suffixes[-1:]) in readable)


def check_mergeable(repo_id: str, card, ours: str, repo_files: set[str]) -> None:
    """Refuses a merge that would lose the user's data from view: their config under a name of rsample's, or (a card
    that declares no configs) their files, which `datasets` would no longer read once the card declares rsample's."""
    from huggingface_hub import DatasetCard

    if card is None or is_rsamples(card):
        return
    names = {config["config_name"] for config in configs(DatasetCard(ours).data.to_dict())}
    theirs = configs(card.data.to_dict())
    for config in theirs:
        if config.get("config_name") in names and not is_rsamples_config(config):
            raise RsampleError(f"the Hub dataset {repo_id}'s card declares a config {config['config_name']!r} of its own "
                               f"({', '.join(sorted(config_paths(config))) or 'no files'}), the name of one of rsample's: push to "
                               "another repository, or rename that config (the JSONL files are kept locally)")
    hidden = data_files_detected(repo_files) if not theirs else []
    if hidden:
        raise RsampleError(f"the Hub dataset {repo_id} holds data files its card declares no configs for ({', '.join(hidden[:3])}"
                           f"{', ...' if len(hidden) > 3 else ''}): once the card declares rsample's, `datasets` would no longer "
                           "read them; declare their config in the card, or push to another repository (the JSONL files are kept "
                           "locally)")


def merged_card(ours: str, card, removed: set[str]) -> str:
    """`ours` (a whole card as rsample writes it) merged into the repository's `card`: rsample's configs, features and
    prose replace those of an earlier push; the user's stay, less a config whose files this push deletes (`removed`)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    if card is None:
        return ours
    new = DatasetCard(ours)
    mine, theirs = new.data.to_dict(), card.data.to_dict()
    names = {config["config_name"] for config in configs(mine)}
    kept = [config for config in configs(theirs) if config.get("config_name") not in names and not config_paths(config) & removed]
    if any(config.get("default") or config.get("config_name") == "default" for config in kept):  # the user's: `datasets` says so
        mine["configs"] = [{key: value for key, value in config.items() if key != "default"} for config in configs(mine)]
    info = theirs.get("dataset_info") or []
    info = [info] if isinstance(info, dict) else info
    kept_names = {config.get("config_name") for config in kept}
    kept_info = [entry for entry in info if isinstance(entry, dict) and entry.get("config_name", "default") in kept_names]
    own = tags(theirs)
    metadata = {**theirs, "tags": own + [tag for tag in tags(mine) if tag not in own],
                "configs": kept + mine["configs"], "dataset_info": kept_info + mine["dataset_info"]}
    metadata = json.loads(json.dumps(metadata))  # no object twice: YAML would write an alias, which `datasets` cannot read
    text, span = card.text, marked_span(card.text)
    if span is not None:
        text = text[:span[0]] + new.text.strip() + "\n" + text[span[1]:]
    elif is_rsamples(card):  # written before the markers: all of it was rsample's
        text = new.text
    else:
        text = text.rstrip() + "\n\n" + new.text.lstrip()
    return f"---\n{DatasetCardData(**metadata).to_yaml()}\n---\n{text}"


def declared_outputs(card, output_files: tuple[str, ...]) -> set[str]:
    """The files an earlier push of rsample made, as its card declares them: its own configs' files (a config of the
    user's naming the same file is theirs) and the figures its prose shows (not a path its command names)."""
    if not is_rsamples(card):
        return set()
    declared = {path for config in configs(card.data.to_dict()) if is_rsamples_config(config)
                for path in config_paths(config) if path in output_files}
    return declared | set(re.findall(r"!\[[^\]]*\]\((report/[^)\s]+)\)", rsamples_text(card)))
