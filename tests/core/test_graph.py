"""The stage graph: defined once, walked by one function, and keys that did not move with the code."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from helpers import SAMPLE_STATS, TINY

from lookalike.core.graph import CHAIN, STAGE_NAMES, STAGES, key_for, stage_of, walk_chain
from lookalike.core.manifest import Manifest, stage_key
from lookalike.core.settings import MirrorSettings, load_settings
from lookalike.stages.dataset.stage import dataset_key
from lookalike.stages.embeddings.stage import embeddings_key
from lookalike.stages.encoder.stage import encoder_key
from lookalike.stages.evaluation.stage import evaluation_key, query_dataset_section
from lookalike.stages.index.stage import index_key

DATA = Path(__file__).parent / "data"
# Every stage key of these runs, as they are now. A change that moves a key must be deliberate:
# regenerate the file and say in the commit which keys moved and why.
RECORDED = json.loads((DATA / "stage_keys.json").read_text())
# The keys before the package was reorganised into floors (issue 24), which moved none of them.
# Since then, on purpose (issue 25): every evaluation key (evaluation.baselines is keyed), and every
# encoder key with what depends on it (the encoder is keyed by its resolved recipe and step budget),
# and every index key (index.whitening is keyed); index code version 4: whitening epsilon on FAISS's
# eigenvalue scale (1% of the mean eigenvalue, as documented), so indexes whitened before are rebuilt;
# index code version 5 (issue 29): the index stage writes metadata.parquet beside index.faiss.
# evaluation code version 4 (issue 29): leak-aware scores (`leaks`, `clean`) and the map (map.png, map.json).
# encoder.pooling (issue 25): aligned collections such as the sample are read out on a 2x2 grid, which moves their
# encoder keys and everything after; an avg read-out is not keyed, so other encoders keep theirs. Then the grid
# became what training's head reads too, on encoder.grid_cells (keyed with a grid only): the sample's 3x3 grid
# (the TINY runs' 2x2) moved those keys again, nothing else. Encoder and embeddings code version 2 (issue 40): a
# JPEG decodes at the DCT scale its fit needs (draft), which moves large JPEGs' pixels: every encoder key and all
# after it moved (the sample's PNGs still give byte-identical files).
BEFORE_THE_MOVE = json.loads((DATA / "stage_keys_before_the_package_move.json").read_text())
MOVED_SINCE = {"encoder", "embeddings", "index", "evaluation"}

RUNS = {  # name -> (settings, whose encoder a reindex reuses)
    "default": ({}, None),
    "hnsw": ({"index.type": "hnsw"}, None),
    "reindex": ({"dataset.limit": 300}, "default"),  # new images, the default run's encoder
    "tiny": (TINY, None),
    "tiny-dino-ivf": ({**TINY, "encoder.method": "dino", "index.type": "ivf-flat", "dataset.limit": 300}, None),
}


def _manifest(stage: str, key: str, inputs: dict[str, str] | None = None, stats: dict | None = None) -> Manifest:
    return Manifest(
        stage=stage,
        key=key,
        code_version=STAGES[stage].code_version,
        created="",
        settings={},
        inputs=inputs or {},
        files=[],
        stats=stats or {},
    )


def planned_keys(overrides: dict, encoder: str | None = None) -> dict[str, str]:
    """Every stage key a run with these settings computes, without running it."""
    settings = load_settings({"artifacts_root": tempfile.mkdtemp(), **overrides})
    keys = {"dataset": dataset_key(settings.dataset)[0]}
    queries = query_dataset_section(settings.dataset, settings.evaluation, settings.artifacts_root)
    if queries is not None:
        keys["queries"] = dataset_key(queries)[0]
    limit = settings.dataset.limit
    stats = {**SAMPLE_STATS, "n_images": min(limit or 3000, 3000)}
    made = {name: _manifest(stage_of(name), key, stats=stats) for name, key in keys.items()}
    keys["encoder"] = encoder or encoder_key(settings.encoder, made["dataset"])
    keys["embeddings"] = embeddings_key(settings.embeddings, made["dataset"], _manifest("encoder", keys["encoder"]))
    keys["index"] = index_key(settings.index, _manifest("embeddings", keys["embeddings"]))
    keys["evaluation"] = evaluation_key(
        settings.evaluation, made["dataset"], _manifest("index", keys["index"]), made.get("queries")
    )
    return keys


@pytest.mark.parametrize("run", sorted(RUNS))
def test_stage_keys_are_the_recorded_ones(run):
    settings, reused = RUNS[run]
    encoder = RECORDED[reused]["encoder"] if reused else None
    assert planned_keys(settings, encoder) == RECORDED[run]


@pytest.mark.parametrize("run", sorted(RUNS))
def test_only_the_keys_changed_on_purpose_moved_since_the_package_move(run):
    kept = {stage: key for stage, key in RECORDED[run].items() if stage not in MOVED_SINCE}
    assert kept == {stage: key for stage, key in BEFORE_THE_MOVE[run].items() if stage not in MOVED_SINCE}


def test_key_for_is_stage_key_with_the_graphs_code_version():
    for name, spec in STAGES.items():
        inputs = {i: "0" * 16 for i in spec.inputs if i != "queries"}
        assert key_for(name, {"a": 1}, inputs) == stage_key(name, {"a": 1}, inputs, spec.code_version)


def test_a_stage_cannot_be_keyed_by_an_input_it_does_not_have():
    with pytest.raises(ValueError, match="not keyed by"):
        key_for("encoder", {}, {"index": "0" * 16})


def test_inputs_name_their_stages_and_the_chain_is_in_the_graph():
    assert stage_of("queries") == "dataset" and stage_of("index") == "index"
    assert set(CHAIN) < set(STAGE_NAMES)
    assert all(stage in STAGES for spec in STAGES.values() for stage in spec.inputs.values())
    assert MirrorSettings().stages == STAGE_NAMES  # the mirror's default is the whole graph


def test_the_walker_follows_recorded_inputs_once_each():
    folders = {
        ("index", "i"): _manifest("index", "i", {"embeddings": "m", "dataset": "d", "encoder": "e"}),
        ("embeddings", "m"): _manifest("embeddings", "m", {"dataset": "d", "encoder": "e"}),
        ("encoder", "e"): _manifest("encoder", "e", {"dataset": "d"}),
        ("dataset", "d"): _manifest("dataset", "d"),
    }
    reads = []

    def read(stage: str, key: str) -> Manifest:
        reads.append((stage, key))
        return folders[stage, key]

    chain = walk_chain(read, "index", "i")
    assert {stage: m.key for stage, m in chain.items()} == {
        "index": "i",
        "embeddings": "m",
        "dataset": "d",
        "encoder": "e",
    }
    assert sorted(reads) == sorted(folders)  # each folder read once
