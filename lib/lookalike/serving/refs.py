"""Index references: what a user types to name a built index, read once into an `IndexRef` and
resolved to the dataset → encoder → embeddings → index chain of manifests it names.

The CLI (`--index` of query, duplicates and serve; `promote`), `lookalike.load` and the server all
take the same spellings:

- an alias under the artifacts root (`production`, `latest`);
- an index stage key (a folder name under `<root>/index/`);
- an index folder of any root, `<root>/index/<key>` (written as a path: `./x`, `/x`, `~/x` or `a/b`);
- a mirrored `s3://bucket/prefix/index/<key>` or `s3://bucket/prefix/aliases/<name>`;
- a W&B artifact path `entity/project/<method>-embeddings:<alias>` (W&B online).

Remote ones are fetched, with everything they were built from, into `<root>/remote/` and
sha256-checked there first (`IndexRef.localize`); then a name under a local root (an index key
or an alias) is resolved to its chain (`resolve_name`). The index built for a set of settings,
the other way `query` and `duplicates` find one, is `resolve_chain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lookalike.artifacts.aliases import ALIASES, Alias, AliasError, alias_path, read_alias
from lookalike.artifacts.shared_root import read_manifest
from lookalike.core.errors import LookalikeError, brief
from lookalike.core.graph import CHAIN, check_inputs, walk_chain
from lookalike.core.manifest import MANIFEST, Manifest, find_manifest, is_stage_key
from lookalike.reporting.tracking import parse_wandb_ref

if TYPE_CHECKING:
    from lookalike.core.settings import Settings

# s3: a mirrored index or alias URL; wandb: a W&B artifact path; folder: an index folder path;
# key: an index stage key; alias: any other name, an alias under the artifacts root
RefKind = Literal["s3", "wandb", "folder", "key", "alias"]


class NotBuiltError(LookalikeError, LookupError):
    """No finished index exists for these settings."""


@dataclass(frozen=True)
class Chain:
    dataset: Manifest
    encoder: Manifest
    embeddings: Manifest
    index: Manifest


@dataclass(frozen=True)
class IndexRef:
    """A reference to a built index as typed (`text`) and what kind of reference it is."""

    text: str
    kind: RefKind

    @classmethod
    def parse(cls, text: str | Path) -> IndexRef:
        """The kind of reference `text` is. A folder is written as a path (`./x`, `/x`, `~/x`, `a/b`) and
        exists; a W&B path that is also an existing folder is the folder; a bare name is a key or an alias."""
        text = str(text)
        if text.startswith("s3://"):
            return cls(text, "s3")
        if text.startswith((".", "/", "~")) or "/" in text:
            if _is_dir(Path(text).expanduser()):
                return cls(text, "folder")
        if parse_wandb_ref(text):
            return cls(text, "wandb")
        return cls(text, "key" if is_stage_key(text) else "alias")

    def names_index(self, root: Path | str) -> bool:
        """Whether this names a built index rather than an index preset or FAISS factory string: an s3://
        or W&B reference, an index stage key, a folder holding a manifest, or an alias that exists under
        `root`. (Whether a remote one or a key exists is found out when it is resolved.)"""
        if self.kind in ("folder", "alias") and _is_file(Path(self.text).expanduser() / MANIFEST):
            return True
        if self.kind == "folder":
            return False
        if self.kind == "alias":
            try:
                return alias_path(root, self.text).is_file()
            except AliasError:  # not an alias name
                return False
        return True

    @property
    def remote_alias(self) -> bool:
        """An s3:// alias URL: the alias is re-read from S3 each time it is checked, so it can move."""
        if self.kind != "s3":
            return False
        from lookalike.artifacts.mirror import parse_ref_url

        return parse_ref_url(self.text)[1] == ALIASES

    def localize(self, root: Path | str, endpoint_url: str | None = None) -> tuple[Path, str]:
        """(artifacts root, name under it) to resolve. An s3:// or W&B reference is first fetched, with its
        embeddings, encoder and dataset, into `<root>/remote/` and verified there; an index folder
        `<other root>/index/<key>` is read from that root; an alias or a key is a name under `root`."""
        if self.kind == "s3":
            from lookalike.artifacts.mirror import fetch_index_chain

            return fetch_index_chain(self.text, Path(root) / "remote", endpoint_url)
        if self.kind == "wandb":
            from lookalike.reporting.wandb_chain import fetch_wandb_chain

            return fetch_wandb_chain(self.text, Path(root) / "remote")
        if self.kind == "folder":
            folder = Path(self.text).expanduser()
            if folder.parent.name != "index" or not (folder / MANIFEST).is_file():
                from lookalike.serving.queries import QueryError  # here: numpy and PIL stay out of `promote <key>`

                raise QueryError(
                    f"{folder} is not a finished index folder (<artifacts root>/index/<key>/ with a {MANIFEST})",
                    status=404,
                )
            return folder.resolve().parents[1], folder.name
        return Path(root), self.text

    def resolve(self, root: Path | str, endpoint_url: str | None = None) -> tuple[Path, Chain, Alias | None]:
        """(the artifacts root it is read from, its chain, the alias as read or None)."""
        where, name = self.localize(root, endpoint_url)
        return (where, *resolve_name(where, name))


def resolve_name(root: Path | str, name: str) -> tuple[Chain, Alias | None]:
    """(chain, the alias as read) for an alias name under `root`, or (chain, None) for an index stage key."""
    if is_stage_key(name) and find_manifest(root, "index", name) is not None:
        return index_chain(root, name), None
    try:
        path = alias_path(root, name)
    except LookalikeError:
        path = None
    if path is None or not path.is_file():
        from lookalike.serving.queries import QueryError

        raise QueryError(
            f"no index {brief(name)} under {root}: give an alias (production, latest) or an index "
            "stage key (a folder name under index/)",
            status=404,
        )
    alias = read_alias(root, name)
    return alias_chain(root, alias), alias


def index_chain(root: Path | str, key: str) -> Chain:
    """dataset → encoder → embeddings → index, followed backwards from an index stage key."""
    chain = walk_chain(lambda stage, k: read_manifest(root, stage, k), "index", key, root)
    return Chain(*(chain[stage] for stage in CHAIN))


def alias_chain(root: Path | str, alias: Alias | str) -> Chain:
    """The chain an alias points at: an alias as read (once, so a concurrent move cannot mix two
    chains), or one read now by name (a missing one says how to make it)."""
    if isinstance(alias, str):
        alias = read_alias(root, alias)
    return Chain(*(alias.manifest(root, stage) for stage in CHAIN))


def resolve_chain(settings: Settings) -> Chain:
    """The finished dataset → encoder → embeddings → index folders for these settings, found by
    recomputing their keys exactly as the pipeline does."""
    from lookalike.stages.dataset.stage import dataset_key
    from lookalike.stages.embeddings.stage import embeddings_key
    from lookalike.stages.encoder.stage import encoder_key
    from lookalike.stages.index.stage import index_key

    root = settings.artifacts_root

    def need(stage: str, key: str) -> Manifest:
        manifest = find_manifest(root, stage, key)
        if manifest is None:
            raise NotBuiltError(
                f"no finished {stage} stage for these settings in {root} (key {key}); "
                "run `lookalike run` with the same options first"
            )
        return manifest

    dataset = need("dataset", dataset_key(settings.dataset, root)[0])
    encoder = need("encoder", encoder_key(settings.encoder, dataset))
    embeddings = need("embeddings", embeddings_key(settings.embeddings, dataset, encoder))
    index = need("index", index_key(settings.index, embeddings))
    for manifest in (encoder, embeddings, index):  # the hash chain: no input manifest edited since
        check_inputs(root, manifest)
    return Chain(dataset, encoder, embeddings, index)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long to be a path (ENAMETOOLONG) is no folder; it is named as a reference
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False
