"""A local image folder read from its one listing, by `datasets`' own `imagefolder` conventions.

`datasets.load_dataset(folder)` resolves its split patterns by globbing the whole tree once per
candidate pattern: minutes per 10^5 files, before any image is read. Here the same decisions are
taken by `datasets`' own functions (its split patterns and their order, the module inferred from
file extensions, its ignored files and special folders) applied to the listing already in hand,
and the rows are those `imagefolder` would give: each split's files in the order its patterns
resolve them, the label from the parent folder's name when files sit at one depth under more than
one folder. Folders it does not cover this way (tables, metadata files, a dataset card, a named
config) return None and go through `datasets` as before.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from lookalike.core.errors import path_text
from lookalike.stages.dataset.listing import ListedFile, Listing


@dataclass(frozen=True)
class ImageFolder:
    """An image folder's splits (name -> its files, in row order) and its class names."""

    splits: dict[str, list[ListedFile]]
    label_names: list[str] | None  # None: no labels (one folder, or files at several depths)

    def label_of(self, file: ListedFile) -> str | None:
        return os.path.basename(os.path.dirname(file.path)) if self.label_names else None

    def labels_of(self, files: list[ListedFile]) -> list[str | None]:
        """`label_of` each file, worked out once per folder."""
        if not self.label_names:
            return [None] * len(files)
        by_folder: dict[str, str] = {}
        out: list[str | None] = []
        for file in files:
            head = file.path.rpartition("/")[0]  # a path's folder name follows from what precedes its last '/'
            if (label := by_folder.get(head)) is None:
                label = by_folder[head] = os.path.basename(os.path.dirname(file.path))
            out.append(label)
        return out


def read_image_folder(listing: Listing) -> ImageFolder | None:
    """The folder's splits and labels as `imagefolder` infers them, or None when `datasets` must read it."""
    from datasets.data_files import FILES_TO_IGNORE, _get_data_files_patterns
    from datasets.packaged_modules import (
        _ALL_ALLOWED_EXTENSIONS,
        _ALL_METADATA_FILENAMES,
        _MODULE_TO_EXTENSIONS,
    )
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder as Builder

    # every name once, "\0"-separated (no name holds one): a name present anywhere is one substring scan
    every_name = "\0" + "\0".join(file.rel for file in listing.files) + "\0"

    def named(name: str) -> bool:
        return f"/{name}\0" in every_name or f"\0{name}\0" in every_name

    if (
        any(named(name) for name in _ALL_METADATA_FILENAMES)
        or "\0README.md\0" in every_name
        or (".yaml\0" in every_name or ".yml\0" in every_name)
        and re.search("\0[^/\0]*\\.ya?ml\0", every_name)
    ):
        return None  # metadata columns or a dataset card: datasets' own builder reads those
    ignored = set(FILES_TO_IGNORE)
    any_ignored = any(named(name) for name in ignored)
    any_special = "__" in every_name
    # datasets tries ~70 split patterns; each can only match names holding its keyword, so a
    # substring scan (C speed) narrows a million names to the few worth a regex
    holding: dict[str, list[ListedFile]] = {}
    resolved: dict[str, list[ListedFile]] = {}

    def resolve(pattern: str) -> list[ListedFile]:
        if pattern not in resolved:
            resolved[pattern] = _resolve(pattern)
        return resolved[pattern]

    def _resolve(pattern: str) -> list[ListedFile]:
        regex = _regex(pattern)
        word = max(re.findall(r"[A-Za-z]{3,}", pattern), key=len, default="")
        if word and word not in holding:
            holding[word] = [f for f in listing.files if word in f.rel] if word in every_name else []
        files = holding[word] if word else listing.files
        if regex.pattern != _EVERYTHING.pattern:  # "**" matches every name: no regex per file
            files = [f for f in files if regex.match(f.rel)]
        if any_ignored:
            files = [f for f in files if f.rel.rpartition("/")[2] not in ignored]
        if any_special:
            files = [f for f in files if "__" not in f.rel or not _inside_unrequested_special_dir(f.rel, pattern)]
        return list(files)

    try:
        patterns = _get_data_files_patterns(resolve)
    except FileNotFoundError:
        return None  # nothing datasets would find: its own error message says so
    keep = re.compile(".*(" + "|".join(re.escape(ext) for ext in _MODULE_TO_EXTENSIONS["imagefolder"]) + ")(\\..+)?$")
    endings = tuple(_MODULE_TO_EXTENSIONS["imagefolder"])
    unstorable = _unstorable(listing.files)
    allowed_extensions = set(_ALL_ALLOWED_EXTENSIONS)
    plain: dict[str, list[ListedFile]] = {}
    odd: dict[str, list[ListedFile]] = {}
    modules = set()
    for split, split_patterns in patterns.items():
        matched = [f for pattern in split_patterns for f in resolve(pattern)]
        if unstorable:
            odd[str(split)] = [f for f in matched if f.path in unstorable]
            matched = [f for f in matched if f.path not in unstorable]
        else:
            odd[str(split)] = []
        # what follows each name's first dot ("", "" without one): the decisions below depend on nothing else
        # of a name, and a collection has few distinct ones
        suffixes = [f.rel.rpartition("/")[2].partition(".")[1:] for f in matched]
        counts = Counter(suffixes)
        allowed = {s: bool(s[0]) and any("." + e in allowed_extensions for e in s[1].split(".")) for s in counts}
        kept = {s: (s[0] + s[1]).endswith(endings) for s in counts}  # a name ending so is one `keep` matches
        plain[str(split)] = [f for f, s in zip(matched, suffixes) if allowed[s] and (kept[s] or keep.match(f.path))]
        if any(allowed[s] for s in counts):
            modules.add(_module_of({s: n for s, n in counts.items() if allowed[s]}))
    if modules != {"imagefolder"}:
        return None
    labels: set[str] = set()
    depths: set[int] = set()
    image_extensions = set(Builder.EXTENSIONS)
    seen: set[str] = set()  # folders already counted: a folder's label and depth are those of each file in it
    for files in plain.values():
        for f in files:
            head = f.path.rpartition("/")[0]
            if head not in seen and _extension(f.rel).lower() in image_extensions:
                seen.add(head)
                labels.add(os.path.basename(os.path.dirname(f.path)))
                depths.add(f.path.count("/"))
    # Names datasets cannot list or store (a newline, bytes that are not UTF-8) follow its rows,
    # as lookalike has always appended them; the snapshot reads them by path like any other.
    splits = {split: files + odd[split] for split, files in plain.items() if files or odd[split]}
    return ImageFolder(splits, sorted(labels) if len(labels) > 1 and len(depths) == 1 else None)


def _module_of(suffixes: dict[tuple[str, str], int]) -> str | None:
    """The packaged module datasets picks for files whose names' suffixes (what follows the first dot: `suffixes`
    counts each) are these: `datasets.load.infer_module_for_data_files_list`'s rule (the most common known
    extension; parquet, then other table formats, win a draw), counted here because its per-file `xbasename`
    costs ~35 us (seconds per 100k files)."""
    from datasets.packaged_modules import _EXTENSION_TO_MODULE

    counts: Counter[str] = Counter()
    for (dot, chain), n in suffixes.items():
        for suffix in chain.split(".") if dot else ():
            counts["." + suffix.lower()] += n
    preferred = (".parquet", ".lance", ".vortex", ".arrow", ".jsonl", ".json", ".csv")

    def rank(item: tuple[str, int]) -> tuple:
        ext, count = item
        return (count, *(ext == p for p in preferred), ext)

    for ext, _ in sorted(counts.items(), key=rank, reverse=True):
        if ext in _EXTENSION_TO_MODULE:
            return _EXTENSION_TO_MODULE[ext][0]
        if ext == ".zip":
            return None  # archives: datasets looks inside them
    return None


def _extension(rel: str) -> str:
    """`os.path.splitext(rel)[1]`: from the name's last dot, unless only dots precede it."""
    name = rel.rpartition("/")[2]
    return "." + name.rpartition(".")[2] if "." in name.lstrip(".") else ""


def _unstorable(files: tuple[ListedFile, ...]) -> set[str]:
    """The paths `datasets` cannot list and store (a newline, bytes that are not UTF-8); one scan of all of them
    when none is."""
    joined = "\0".join(f.path for f in files)
    if joined.isascii() and "\n" not in joined:
        return set()
    return {f.path for f in files if not _storable(f)}


def _storable(file: ListedFile) -> bool:
    """Whether `datasets` can list and store this file name."""
    return "\n" not in file.path and path_text(file.path) == file.path


_EVERYTHING = re.compile("(?s:.*)\\Z")  # what fsspec makes of "**"


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern:
    from fsspec.utils import glob_translate

    return re.compile(glob_translate(pattern))


def _inside_unrequested_special_dir(rel: str, pattern: str) -> bool:
    from datasets.data_files import _is_inside_unrequested_special_dir

    return "/__" in "/" + rel.rsplit("/", 1)[0] and _is_inside_unrequested_special_dir(rel, pattern)
