"""What is built under an artifacts root: every finished index with its scores (beside their
baselines) and the aliases that point at it (`lookalike ls`).

An index's scores are its own (self-retrieval, recall against exact search, in its manifest) and
its evaluation's: the one an alias names with it, else the newest evaluation of that index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from lookalike.artifacts.aliases import Alias, evaluations_by_index, list_aliases
from lookalike.artifacts.shared_root import read_manifest
from lookalike.core.manifest import Manifest, find_manifest, is_stage_key


class IndexEntry(BaseModel):
    """One finished index as `lookalike ls --json` lists it (keys are a contract: extend, never rename)."""

    key: str
    created: str
    type: str | None = Field(description="the index type asked for (a preset, auto or a FAISS factory string)")
    chosen: str | None = Field(description="what was built (differs from type for auto)")
    metric: str | None
    n_images: int | None
    dim: int | None
    bytes: int | None
    dataset: str | None = Field(description="stage keys of the chain it was built from")
    encoder: str | None
    embeddings: str | None
    method: str | None = Field(description="the encoder's SSL method")
    evaluation: str | None = Field(description="the evaluation its scores come from (None: never evaluated)")
    metrics: dict[str, Any] = Field(description="as `lookalike run --json` names them")
    baselines: dict[str, Any] | None = Field(description="raw pixels and the starting point, on the same queries")
    gain: dict[str, Any] | None = Field(description="the index's gain over each baseline")
    aliases: list[str] = Field(description="the aliases pointing at it now")


def scores(index: Manifest, evaluation: Manifest | None) -> dict[str, Any]:
    """The quality numbers of an index, named as the run summary's `metrics` names them: the index's
    own, then its evaluation's (precision@k and mAP@k with the evaluation's k), when it has one."""
    stats = evaluation.stats if evaluation is not None else {}
    k = stats.get("k", 10)
    return {
        "self_retrieval_at_1": index.stats.get("self_retrieval_at_1"),
        "recall_at_10": index.stats.get("recall_at_10"),
        "knn_accuracy": stats.get("knn_accuracy"),
        f"precision_at_{k}": stats.get(f"precision_at_{k}"),
        f"map_at_{k}": stats.get(f"map_at_{k}"),
        # what the three above were measured on: "held-out:<split>" or "leave-one-out"
        "evaluation_protocol": stats.get("protocol"),
    }


def score_name(name: str) -> str:
    """A score as people read it: `precision_at_10` -> `precision@10`, `knn_accuracy` -> `kNN accuracy`."""
    return "kNN accuracy" if name == "knn_accuracy" else name.replace("_at_", "@")


def list_indexes(root: Path | str, aliases: dict[str, Alias] | None = None) -> list[IndexEntry]:
    """Every finished index under `root`, newest first. `aliases`: the root's aliases when the
    caller has read them already (`list_aliases`)."""
    aliases = list_aliases(root) if aliases is None else aliases
    newest_evaluation = evaluations_by_index(root)
    entries = []
    for path in (Path(root) / "index").glob("*/manifest.json"):
        if not is_stage_key(path.parent.name):
            continue
        index = read_manifest(root, "index", path.parent.name)
        naming = [name for name, alias in aliases.items() if alias.stages.get("index") == index.key]
        evaluation = _evaluation(root, index, [aliases[name] for name in naming]) or newest_evaluation.get(index.key)
        encoder = find_manifest(root, "encoder", index.inputs["encoder"]) if "encoder" in index.inputs else None
        stats = evaluation.stats if evaluation is not None else {}
        entries.append(
            IndexEntry(
                key=index.key,
                created=index.created,
                type=index.settings.get("type"),
                chosen=index.stats.get("chosen"),
                metric=index.stats.get("metric"),
                n_images=index.stats.get("ntotal"),
                dim=index.stats.get("dim"),
                bytes=index.stats.get("bytes"),
                dataset=index.inputs.get("dataset"),
                encoder=index.inputs.get("encoder"),
                embeddings=index.inputs.get("embeddings"),
                method=encoder.settings.get("method") if encoder is not None else None,
                evaluation=evaluation.key if evaluation is not None else None,
                metrics=scores(index, evaluation),
                baselines=stats.get("baselines"),
                gain=stats.get("gain"),
                aliases=naming,
            )
        )
    return sorted(entries, key=lambda entry: entry.created, reverse=True)


def _evaluation(root: Path | str, index: Manifest, naming: list[Alias]) -> Manifest | None:
    """The evaluation an alias recorded with this index (the one the promotion gate read)."""
    for alias in naming:
        key = alias.stages.get("evaluation")
        if key and find_manifest(root, "evaluation", key) is not None:
            return alias.manifest(root, "evaluation")
    return None
