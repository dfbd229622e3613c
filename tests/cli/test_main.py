"""The command line explains itself: its versions, and help that shows what the settings decide."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from lookalike.cli.main import app
from lookalike.core.names import TOP_K

WIDE = {"COLUMNS": "300"}  # rich wraps help to the terminal: one line per option here


def test_version_prints_lookalike_then_torch_prefect_and_faiss():
    import lookalike

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()
    assert first == f"lookalike {lookalike.__version__}"
    assert second == f"torch {version('torch')}, prefect {version('prefect')}, faiss {version('faiss-cpu')}"


def test_run_help_shows_the_settings_defaults_and_their_environment_variables():
    result = CliRunner().invoke(app, ["run", "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.lstrip("│ ").startswith("--")}
    # the options default to None (the settings decide); the help shows what that resolves to
    assert "[default: (simclr; env: LOOKALIKE_ENCODER__METHOD)]" in lines["--method"]
    assert "[default: (sample; env: LOOKALIKE_DATASET__SOURCE)]" in lines["--dataset"]
    assert "[default: (train; env: LOOKALIKE_DATASET__SPLIT)]" in lines["--split"]
    assert "[default: (auto; env: LOOKALIKE_ENCODER__STEPS)]" in lines["--steps"]
    assert "[default: (none: --steps decides; env: LOOKALIKE_ENCODER__EPOCHS)]" in lines["--epochs"]
    assert "[default: (flat-l2; env: LOOKALIKE_INDEX__TYPE)]" in lines["--index"]
    assert "[default: (artifacts; env: LOOKALIKE_ARTIFACTS_ROOT)]" in lines["--artifacts-root"]
    assert "[default: (off; env: LOOKALIKE_MIRROR__URL)]" in lines["--mirror"]
    assert "LOOKALIKE_SECTION__FIELD" in lines["--set"]


def test_help_defaults_follow_the_settings_model_not_the_environment(monkeypatch):
    """The help names the model's default; what the environment sets is still what a run uses."""
    monkeypatch.setenv("LOOKALIKE_ENCODER__METHOD", "dino")
    result = CliRunner().invoke(app, ["query", "--help"], env=WIDE)
    assert "[default: (simclr; env: LOOKALIKE_ENCODER__METHOD)]" in result.stdout
    (top_k,) = [line for line in result.stdout.splitlines() if "--top-k" in line]
    assert f"[default: {TOP_K}]" in top_k  # the one default of the CLI, the HTTP API and the UI


def test_duplicates_refuses_a_nan_or_negative_threshold_and_an_out_folder_that_is_not_there(tiny_chain, tmp_path):
    (manifest,) = (tiny_chain / "index").glob("*/manifest.json")
    given = ["duplicates", "--index", str(manifest.parent), "--artifacts-root", str(tmp_path / "artifacts")]
    for threshold, says in [("nan", "must be a finite number"), ("-1", "must be at least 0.0, not -1.0")]:
        result = CliRunner().invoke(app, [*given, "--threshold", threshold, "--json"])
        assert result.exit_code == 1 and result.stdout == "", result.output
        assert result.stderr.startswith("error: threshold (a squared L2 distance for this l2 index) ")
        assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1
    missing = tmp_path / "no" / "such" / "groups.png"
    result = CliRunner().invoke(app, [*given, "--threshold", "0", "--out", str(missing)])
    # the path itself may be cut in the middle in the error line (pytest's temporary paths are long)
    assert result.exit_code == 2 and "/no/such'" in result.stderr and "; create it first" in result.stderr
    assert not (tmp_path / "no").exists()
    result = CliRunner().invoke(app, [*given, "--threshold", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "is a folder; give the picture's file name" in result.stderr
