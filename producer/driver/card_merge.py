"""A push into a repository that already has a dataset card keeps what the card's owner wrote.

rsample's part of a card (its configs, their features, its tags, and the prose between two markers) is replaced at
each push; everything else in the card (a license, a language, the user's own configs and prose) stays, as
`datasets`' own `push_to_hub` leaves a card's other parts as they were.
"""

from __future__ import annotations

import json
import re

from rsample.workers.common.errors import RsampleError, first_line

BEGIN = "<!-- rsample:begin -->"
END = "<!-- rsample:end -->"
TAG = "rsample"


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


def is_rsamples(card) -> bool:
    return card is not None and TAG in tags(card.data.to_dict())


def rsamples_text(card) -> str:
    """The prose rsample wrote: between its markers, or the whole text of a card it wrote before it had them."""
    text = card.text
    if BEGIN in text and END in text:
        return text[text.index(BEGIN):text.index(END)]
    return text if is_rsamples(card) else ""


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


def merged_card(ours: str, card, removed: set[str]) -> str:
    """`ours` (a whole card as rsample writes it) merged into the repository's `card`: rsample's configs, features and
    prose replace those of an earlier push; the user's stay, less a config whose files this push deletes (`removed`)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    if card is None:
        return ours
    new = DatasetCard(ours)
    mine, theirs = new.data.to_dict(), card.data.to_dict()
    names = {config["config_name"] for config in mine.get("configs", [])}
    kept = [config for config in theirs.get("configs") or []
            if isinstance(config, dict) and config.get("config_name") not in names and not config_paths(config) & removed]
    if any(config.get("default") for config in kept):  # the user chose what `load_dataset(repo)` gives
        mine["configs"] = [{key: value for key, value in config.items() if key != "default"} for config in mine["configs"]]
    info = theirs.get("dataset_info") or []
    info = [info] if isinstance(info, dict) else info
    kept_names = {config.get("config_name") for config in kept}
    kept_info = [entry for entry in info if isinstance(entry, dict) and entry.get("config_name", "default") in kept_names]
    own = tags(theirs)
    metadata = {**theirs, "tags": own + [tag for tag in tags(mine) if tag not in own],
                "configs": kept + mine["configs"], "dataset_info": kept_info + mine["dataset_info"]}
    metadata = json.loads(json.dumps(metadata))  # no object twice: YAML would write an alias, which `datasets` cannot read
    text = card.text
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + new.text.strip() + text[text.index(END) + len(END):]
    elif is_rsamples(card):  # written before the markers: all of it was rsample's
        text = new.text
    else:
        text = text.rstrip() + "\n\n" + new.text.lstrip()
    return f"---\n{DatasetCardData(**metadata).to_yaml()}\n---\n{text}"


def declared_outputs(card, output_files: tuple[str, ...]) -> set[str]:
    """The files an earlier push of rsample made, as its card declares them: its configs' files and the figures its prose
    shows (not a path its command names). A config a user added is theirs, and so is everything in a card not rsample's."""
    if not is_rsamples(card):
        return set()
    declared = {path for config in (card.data.to_dict().get("configs") or []) if isinstance(config, dict)
                for path in config_paths(config) if path in output_files}
    return declared | set(re.findall(r"!\[[^\]]*\]\((report/[^)\s]+)\)", rsamples_text(card)))
