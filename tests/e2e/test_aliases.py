"""Aliases (`production`, `latest`), the reindex flow's use of them, flow parameter checks
and Secret blocks."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from helpers import TINY, flow_arguments

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A finished TINY run (not promoted): its summary and root."""
    from lookalike.flows.retrieval import retrieval_pipeline

    root = tmp_path_factory.mktemp("aliases") / "artifacts"
    summary = retrieval_pipeline(**flow_arguments({"artifacts_root": str(root), **TINY}), promote=False)
    return root, summary


def test_a_run_moves_latest_and_promotes_only_when_asked(built):
    from lookalike.artifacts.aliases import read_alias

    root, summary = built
    assert summary["aliases"] == ["latest"]
    latest = read_alias(root, "latest")
    assert latest.stages == {name: s["key"] for name, s in summary["stages"].items()}
    assert latest.source["flow"] == "retrieval-pipeline" and latest.source["flow_run_id"]
    assert not (root / "aliases" / "production.json").exists()


def test_reindex_without_a_production_alias_fails_saying_how_to_make_one(built):
    from lookalike.flows.reindex import reindex

    root, _ = built
    state = reindex(**flow_arguments({"artifacts_root": str(root), "dataset.limit": 16}), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="no 'production' alias under .*build and promote an index first"):
        state.result()


def test_set_alias_checks_folders_logs_history_and_rejects_bad_names(built):
    from lookalike.artifacts.aliases import AliasError, alias_manifest, read_alias, set_alias
    from lookalike.core.manifest import IntegrityError

    root, summary = built
    stages = {name: s["key"] for name, s in summary["stages"].items()}
    set_alias(root, "production", stages, {"command": "test"})
    assert alias_manifest(root, "production", "encoder").key == stages["encoder"]
    history = [json.loads(line) for line in (root / "aliases" / "history.jsonl").read_text().splitlines()]
    assert [h["name"] for h in history] == ["latest", "production"]
    with pytest.raises(AliasError, match="invalid alias name"):
        set_alias(root, "../evil", stages)
    with pytest.raises(IntegrityError, match="not finished"):
        set_alias(root, "broken", {**stages, "index": "0" * 16})
    assert not (root / "aliases" / "broken.json").exists()
    (root / "aliases" / "garbled.json").write_text("{not json")
    with pytest.raises(AliasError, match="not a valid alias file"):
        read_alias(root, "garbled")


def test_reindex_reuses_the_aliased_encoder_and_promotes_the_new_index(built, tmp_path):
    from lookalike.artifacts.aliases import read_alias, set_alias
    from lookalike.flows.reindex import reindex

    root, summary = built
    shutil.copytree(root, tmp_path / "artifacts")
    root = tmp_path / "artifacts"
    set_alias(root, "production", {name: s["key"] for name, s in summary["stages"].items()})
    # kNN accuracy on a 32-image subset is not comparable with 48 images': the gate has its own tests
    again = reindex(
        **flow_arguments(
            {
                "artifacts_root": str(root),
                "dataset.limit": 32,
                "evaluation.grid_queries": 2,
                "promotion.max_knn_drop": 1.0,
                "promotion.min_gain_over_pixels": -1.0,
                "promotion.min_gain_over_init": -1.0,
            }
        )
    )
    assert again["stages"]["encoder"] == {
        **summary["stages"]["encoder"],
        "status": "cached",
        "seconds": again["stages"]["encoder"]["seconds"],
    }
    assert {again["stages"][s]["status"] for s in ("dataset", "embeddings", "index")} == {"computed"}
    assert again["metrics"]["n_images"] == 32 and again["aliases"] == ["latest", "production"]
    assert read_alias(root, "production").stages["index"] == again["stages"]["index"]["key"]


def test_overrides_naming_a_parameter_are_rejected_naming_both(built):
    from lookalike.core.settings import SettingsError
    from lookalike.flows.retrieval import retrieval_pipeline

    root, _ = built
    with pytest.raises(SettingsError, match=r"overrides\['encoder.steps'\]: .* parameter `steps`"):
        retrieval_pipeline(artifacts_root=str(root), overrides={"encoder.steps": 2})


@pytest.fixture
def clean_secret_env(monkeypatch):
    for name in ("WANDB_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_secret_blocks_reach_wandb_and_boto3_through_their_own_variables(clean_secret_env, tiny):
    from prefect.blocks.system import Secret

    from lookalike.tasks.secrets import export_secret_blocks

    Secret(value="wandb-key-123").save("test-wandb-key", overwrite=True)
    Secret(value={"aws_access_key_id": "AKIATEST", "aws_secret_access_key": "s3cr3t"}).save("test-aws", overwrite=True)
    settings = tiny.model_copy(
        update={
            "tracking": tiny.tracking.model_copy(update={"api_key_secret": "test-wandb-key"}),
            "mirror": tiny.mirror.model_copy(update={"credentials_secret": "test-aws"}),
        }
    )
    exported = export_secret_blocks(settings)
    assert exported == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"]
    assert (os.environ["WANDB_API_KEY"], os.environ["AWS_ACCESS_KEY_ID"]) == ("wandb-key-123", "AKIATEST")

    import boto3

    assert boto3.Session().get_credentials().secret_key == "s3cr3t"


def test_a_missing_or_misshapen_secret_block_names_the_setting(clean_secret_env, tiny):
    from prefect.blocks.system import Secret

    from lookalike.tasks.secrets import SecretBlockError, export_secret_blocks

    missing = tiny.model_copy(update={"tracking": tiny.tracking.model_copy(update={"api_key_secret": "nope"})})
    with pytest.raises(SecretBlockError, match="tracking.api_key_secret: no Prefect Secret block named 'nope'"):
        export_secret_blocks(missing)
    Secret(value={"aws_access_key_id": "AKIATEST"}).save("test-half-aws", overwrite=True)
    half = tiny.model_copy(update={"mirror": tiny.mirror.model_copy(update={"credentials_secret": "test-half-aws"})})
    with pytest.raises(SecretBlockError, match="missing: aws_secret_access_key"):
        export_secret_blocks(half)
    assert "AWS_ACCESS_KEY_ID" not in os.environ


class Collapsed:
    """A deliberately degraded encoder: every image maps to the same vector."""

    def __new__(cls, dim: int):
        import torch

        class _Collapsed(torch.nn.Module):
            def forward(self, x):
                return x.new_zeros(x.shape[0], dim)

        return _Collapsed()


def test_the_gate_refuses_an_index_from_a_degraded_encoder_and_keeps_production(built, tmp_path, monkeypatch):
    import lookalike.stages.inference
    from lookalike.artifacts.aliases import read_alias, set_alias
    from lookalike.flows.retrieval import retrieval_pipeline

    root, summary = built
    shutil.copytree(root, tmp_path / "artifacts")
    root = tmp_path / "artifacts"
    good = {name: s["key"] for name, s in summary["stages"].items()}
    set_alias(root, "production", good)
    real = lookalike.stages.inference.load_encoder

    def collapsed(r, m):
        spec = real(r, m)[1]
        return Collapsed(spec.feature_dim), spec

    monkeypatch.setattr(lookalike.stages.inference, "load_encoder", collapsed)
    # another shard size: a new embeddings key, so the degraded vectors are really computed
    bad = retrieval_pipeline(**flow_arguments({"artifacts_root": str(root), **TINY, "embeddings.shard_size": 8}))
    assert bad["stages"]["embeddings"]["status"] == "computed"
    promotion = bad["promotion"]
    assert promotion["requested"] and not promotion["promoted"] and promotion["production"] == good["index"]
    assert any("self_retrieval_at_1" in r and "promotion.min_self_retrieval_at_1" in r for r in promotion["reasons"])
    assert bad["aliases"] == ["latest"]
    assert read_alias(root, "production").stages == good
    assert read_alias(root, "latest").stages["index"] == bad["stages"]["index"]["key"]


def production_copy(built, tmp_path):
    """A copy of the built root whose `production` is the built run; (root, its evaluation manifest)."""
    from lookalike.artifacts.aliases import set_alias
    from lookalike.artifacts.shared_root import read_manifest

    root, summary = built
    shutil.copytree(root, tmp_path / "artifacts")
    root = tmp_path / "artifacts"
    set_alias(root, "production", {name: s["key"] for name, s in summary["stages"].items()})
    return root, read_manifest(root, "evaluation", summary["stages"]["evaluation"]["key"])


def test_the_gate_compares_knn_accuracy_with_production(built, tmp_path):
    from types import SimpleNamespace

    from lookalike.artifacts.promotion import promotion_decision
    from lookalike.core.settings import PromotionSettings

    root, production = production_copy(built, tmp_path)
    knn = (production.stats.get("clean") or production.stats)["knn_accuracy"]  # what the gate compares

    def evaluated(**stats):  # another run's evaluation on the same queries as production's, raw and clean alike
        clean = {**(production.stats.get("clean") or {}), **stats}  # the gate compares clean numbers when any leak
        return production.model_copy(update={"stats": {**production.stats, **stats, "clean": clean}})

    index = SimpleNamespace(key="f" * 16, stats={"self_retrieval_at_1": 1.0, "recall_at_10": 0.95})
    gate = PromotionSettings(max_knn_drop=0.05, min_gain_over_pixels=-1, min_gain_over_init=-1)
    worse = promotion_decision(gate, root, index, evaluated(knn_accuracy=knn - 0.06))
    assert (
        not worse["promoted"] and "below production's" in worse["reasons"][0] and "max_knn_drop" in worse["reasons"][0]
    )
    assert promotion_decision(gate, root, index, evaluated(knn_accuracy=knn - 0.04))["promoted"]
    low_recall = promotion_decision(gate.model_copy(update={"min_recall_at_10": 0.99}), root, index, evaluated())
    assert low_recall["reasons"] == ["recall_at_10 0.9500 vs exact search < promotion.min_recall_at_10 0.99"]
    assert promotion_decision(gate, root, index, evaluated(), requested=False)["reasons"] == []


def test_the_gate_compares_knn_accuracy_only_on_the_same_queries(built, tmp_path):
    from types import SimpleNamespace

    from lookalike.artifacts.promotion import promotion_decision
    from lookalike.core.settings import PromotionSettings
    from lookalike.reporting.summary import summary_markdown

    root, production = production_copy(built, tmp_path)
    assert production.stats["protocol"] == "held-out:test"
    index = SimpleNamespace(key="f" * 16, stats={"self_retrieval_at_1": 1.0, "recall_at_10": 1.0})
    # far worse, but measured leave-one-out on another dataset: not a fall in quality
    other = production.model_copy(
        update={
            "inputs": {"dataset": "d" * 16, "index": index.key},
            "stats": {
                **production.stats,
                "protocol": "leave-one-out",
                "query_dataset": None,
                "n_queries": 32,
                "knn_accuracy": production.stats["knn_accuracy"] - 0.5,
            },
        }
    )
    decision = promotion_decision(
        PromotionSettings(max_knn_drop=0.02, min_gain_over_pixels=-1, min_gain_over_init=-1), root, index, other
    )
    assert decision["promoted"] and decision["reasons"] == []
    note = decision["checks"]["knn_accuracy"]
    assert note.startswith("not compared with production's: protocol held-out:test vs leave-one-out; queries ")
    assert "n_queries" in note
    assert f"kNN accuracy was {note}." in summary_markdown({**built[1], "promotion": decision})
    # the same held-out queries with another k are not comparable either
    other_k = production.model_copy(update={"stats": {**production.stats, "k": 5, "knn_accuracy": 0.0}})
    assert (
        promotion_decision(PromotionSettings(min_gain_over_pixels=-1, min_gain_over_init=-1), root, index, other_k)[
            "checks"
        ]["knn_accuracy"]
        == "not compared with production's: k 10 vs 5"
    )


def test_promote_and_rollback_commands_move_production_by_hand(built, tmp_path):
    from typer.testing import CliRunner

    from lookalike.artifacts.aliases import read_alias
    from lookalike.cli.main import app

    root, summary = built
    shutil.copytree(root, tmp_path / "artifacts")
    root = tmp_path / "artifacts"
    shutil.rmtree(root / "aliases")  # no history: the chain is followed back through the manifests
    key = summary["stages"]["index"]["key"]
    runner = CliRunner()
    result = runner.invoke(app, ["rollback", "--artifacts-root", str(root)])
    assert result.exit_code == 1 and "no 'production' alias" in result.output
    result = runner.invoke(app, ["promote", key, "--artifacts-root", str(root)])
    assert result.exit_code == 0, result.output
    assert read_alias(root, "production").stages == {name: s["key"] for name, s in summary["stages"].items()}
    result = runner.invoke(app, ["rollback", "--artifacts-root", str(root)])
    assert result.exit_code == 1 and "nothing to roll back to" in result.output

    from lookalike.artifacts.shared_root import read_manifest
    from lookalike.core.settings import IndexSettings
    from lookalike.stages.index.stage import run_index_stage

    embeddings = read_manifest(root, "embeddings", summary["stages"]["embeddings"]["key"])
    other = run_index_stage(IndexSettings(type="flat-ip"), embeddings, root).manifest.key
    assert runner.invoke(app, ["promote", other, "--artifacts-root", str(root)]).exit_code == 0
    moved = read_alias(root, "production")
    assert moved.stages["index"] == other and moved.stages["encoder"] == summary["stages"]["encoder"]["key"]
    result = runner.invoke(app, ["rollback", "--artifacts-root", str(root)])
    assert result.exit_code == 0 and f"was {other}" in result.output
    back = read_alias(root, "production")
    assert back.stages["index"] == key and back.source["rolled_back_from"] == other
    result = runner.invoke(app, ["promote", "0" * 16, "--artifacts-root", str(root)])
    assert result.exit_code == 1 and "error:" in result.output
    # any index reference names what to promote: an alias (its chain moves whole), a folder of this root
    result = runner.invoke(app, ["promote", "production", "--alias", "staging", "--artifacts-root", str(root)])
    assert result.exit_code == 0, result.output
    assert read_alias(root, "staging").stages == read_alias(root, "production").stages
    result = runner.invoke(
        app, ["promote", str(root / "index" / other), "--alias", "staging", "--artifacts-root", str(root)]
    )
    assert result.exit_code == 0, result.output
    staging = read_alias(root, "staging")
    assert staging.stages["index"] == other and "copied_from" not in staging.source
