"""`lookalike` exactly as users run it: a subprocess with Prefect's temporary server."""

import json
import shutil
from pathlib import Path

import pytest
from helpers import TINY, run_cli, started_no_prefect

SETS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]


def lookalike(*args, env_extra=None, home):
    # no PREFECT_API_URL: the CLI must manage its own temporary server
    return run_cli(*args, home=home, env_extra=env_extra)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli")
    root = home / "artifacts"
    first = lookalike("run", "--json", "--artifacts-root", str(root), *SETS, home=home)
    return home, root, first


def test_run_prints_the_json_summary_and_no_traceback(built):
    _, _, first = built
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Traceback" not in first.stderr and "Traceback" not in first.stdout
    # Prefect's INFO lines only with -v (test_rerun_with_verbose_prints_prefects_info_lines)
    assert " | INFO " not in first.stderr
    summary = last_json(first.stdout)
    assert set(summary) >= {"stages", "metrics", "artifacts"}
    assert {s["status"] for s in summary["stages"].values()} == {"computed"}
    assert summary["metrics"]["self_retrieval_at_1"] == 1.0
    assert {"knn_accuracy", "precision_at_10", "n_images", "dim"} <= set(summary["metrics"])
    assert Path(summary["artifacts"]["index"]).is_file() and Path(summary["artifacts"]["encoder"]).is_file()
    assert Path(summary["artifacts"]["wandb_run_dir"]).is_dir()
    assert set(summary["baselines"]) == {"pixels", "init"} and set(summary["gain"]) == {"pixels", "init"}
    # how long the encoder trained and what the recipe chose from the data
    encoder = summary["encoder"]
    assert encoder["steps"] == 3 and encoder["steps_why"] == "encoder.epochs=1 x 3 steps per pass"
    assert encoder["recipe"]["width"] == {"value": 0.25, "why": "0.25 of the channels: the cheapest width that learned"}
    assert "input_size" not in encoder["recipe"]  # TINY sets it: explicit settings are not the recipe's
    # the index's whitening, and why a collection of 48 images is left unwhitened
    whitening = summary["index"]["whitening"]
    assert whitening["power"] == 0.5 and whitening["applied"] is False
    assert whitening["why"] == "skipped: 48 vectors are too few to estimate a covariance (< 100)"


def test_the_summary_table_shows_each_score_beside_its_baselines(built):
    from rich.console import Console

    from lookalike.cli.render import print_summary

    summary = last_json(built[2].stdout)
    console = Console(record=True, width=160)
    print_summary(console, summary)
    text = console.export_text()
    assert "against baselines" in text and "gain over pixels" in text and "gain over init" in text
    assert "encoder: 3 steps (encoder.epochs=1 x 3 steps per pass)" in text
    assert "width 0.25: 0.25 of the channels: the cheapest width that learned" in text
    assert "index whitening: skipped: 48 vectors are too few" in text
    precision = summary["baselines"]["pixels"]["precision_at_10"]
    assert f"{precision:.4f}" in text and summary["baselines"]["pixels"]["what"] in text


def test_rerun_with_verbose_reports_every_stage_cached_and_prefects_info_lines(built):
    home, root, _ = built
    again = lookalike("run", "-v", "--json", "--artifacts-root", str(root), *SETS, home=home)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    assert " | INFO    | Flow run " in again.stderr and " | INFO    | Task run " in again.stderr
    assert {s["status"] for s in last_json(again.stdout)["stages"].values()} == {"cached"}


def test_ls_lists_the_index_with_its_scores_baselines_aliases_and_history(built):
    from typer.testing import CliRunner

    from lookalike.cli.main import app

    _, root, first = built
    summary = last_json(first.stdout)
    result = CliRunner().invoke(app, ["ls", "--json", "--history", "--artifacts-root", str(root)])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert set(listing) == {"root", "indexes", "aliases", "history"}
    (entry,) = listing["indexes"]
    assert (
        entry["key"] == summary["stages"]["index"]["key"]
        and entry["evaluation"] == summary["stages"]["evaluation"]["key"]
    )
    assert set(entry["aliases"]) == {"latest", "production"} == set(listing["aliases"])
    assert entry["metrics"]["precision_at_10"] == summary["metrics"]["precision_at_10"]
    assert entry["baselines"] == summary["baselines"] and entry["gain"] == summary["gain"]
    assert entry["n_images"] == 48 and entry["type"] == "flat-l2"
    assert {(move["name"], move["stages"]["index"]) for move in listing["history"]} == {
        ("latest", entry["key"]),
        ("production", entry["key"]),
    }
    shown = CliRunner().invoke(app, ["ls", "--artifacts-root", str(root)], env={"COLUMNS": "200"}).stdout
    precision = summary["baselines"]["pixels"]["precision_at_10"]
    assert f"precision@10 {summary['metrics']['precision_at_10']:.3f} (pixels {precision:.3f}" in shown
    assert f"production -> index {entry['key']}" in shown


def test_ls_skips_a_damaged_evaluation_with_a_warning_and_lists_the_rest(built, tmp_path):
    from typer.testing import CliRunner

    from lookalike.cli.main import app

    _, root, first = built
    copy = tmp_path / "artifacts"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("wandb", ".*.lock"))
    damaged = copy / "evaluation" / "0123456789abcdef"
    damaged.mkdir()
    (damaged / "manifest.json").write_text("{not json")
    result = CliRunner().invoke(app, ["ls", "--json", "--artifacts-root", str(copy)])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["indexes"]
    assert entry["evaluation"] == last_json(first.stdout)["stages"]["evaluation"]["key"]
    assert "warning: skipped evaluation 0123456789abcdef" in result.stderr


def test_query_by_row_finds_the_row_first_and_writes_the_picture(built):
    home, root, first = built
    from lookalike.core.settings import load_settings
    from lookalike.serving.query import Searcher
    from lookalike.serving.refs import resolve_chain

    settings = load_settings({**TINY, "artifacts_root": str(root)})
    row = int(sorted(Searcher(root, resolve_chain(settings)).position)[0])
    picture = home / "q.png"
    result = lookalike(
        "query",
        "--row",
        str(row),
        "--top-k",
        "3",
        "--out",
        str(picture),
        "--json",
        "--artifacts-root",
        str(root),
        *SETS,
        home=home,
    )
    assert result.returncode == 0, result.stderr
    neighbours = last_json(result.stdout)["neighbours"]
    assert neighbours[0]["row"] == row and neighbours[0]["distance"] == pytest.approx(0.0, abs=1e-4)
    assert len(neighbours) == 3 and neighbours[0]["label"]
    assert picture.stat().st_size > 1000


def test_query_by_image_file_among_the_rows_a_filter_matches(built, tmp_path):
    home, root, _ = built
    from helpers import make_png

    from lookalike.core.filters import FilterError, parse_filter
    from lookalike.core.settings import load_settings
    from lookalike.serving.query import Searcher
    from lookalike.serving.refs import resolve_chain

    labels = Searcher(root, resolve_chain(load_settings({**TINY, "artifacts_root": str(root)}))).metadata.table
    label = labels.column("label")[0].as_py()
    image = make_png(tmp_path / "query.png", 3, size=28)
    where = ["--where", f'label="{label}"', "--where", "width=28"]
    result = lookalike(
        "query", str(image), *where, "--top-k", "3", "--json", "--artifacts-root", str(root), *SETS, home=home
    )
    assert result.returncode == 0, result.stderr
    found = last_json(result.stdout)
    assert len(found["neighbours"]) == 3 and {n["label"] for n in found["neighbours"]} == {label}
    assert parse_filter(found["where"]) == parse_filter([f'label="{label}"', "width=28"])  # what was searched
    # a bad filter takes query's one-line error path (a LookalikeError, like a missing index:
    # test_query_before_any_run_says_what_to_do); its message is checked in tests/stages/test_filtered_search.py
    from lookalike.core.errors import LookalikeError

    assert issubclass(FilterError, LookalikeError)


def test_query_answers_a_folder_of_200_images_in_one_process_one_json_line_each(built, tmp_path):
    from helpers import make_png
    from typer.testing import CliRunner

    from lookalike.cli.main import app
    from lookalike.serving.query import Searcher
    from lookalike.serving.refs import alias_chain
    from lookalike.stages.dataset.images import decode_rgb

    _, root, _ = built
    folder = tmp_path / "queries"
    images = [make_png(folder / f"{i:03d}.png", i, size=28) for i in range(199)]
    images.append(make_png(folder / "more" / "last.png", 199, size=28))  # folders are read recursively
    (folder / "notes.txt").write_text("not an image file name: left out")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    args = ["query", str(folder), str(broken), "--index", "production", "--top-k", "2", "--artifacts-root", str(root)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output  # one file could not be read; every other one was answered
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    searcher = Searcher(root, alias_chain(root, "production"))
    key = searcher.chain.index.key
    assert [line["query"] for line in lines] == [str(p) for p in sorted(images)] + [str(broken)]
    assert all(line["index"] == key and len(line["neighbours"]) == 2 for line in lines[:200])
    assert lines[200] == {"query": str(broken), "error": "not a recognised image format", "index": key}
    assert f"{broken}: not a recognised image format" in result.stderr
    # batched, each image is answered as a query of its own is: the same rows, and the same distances
    # up to float summation order (a batch of 200 and a batch of 1 take different BLAS paths)
    first = decode_rgb(sorted(images)[0].read_bytes(), 10**8)
    alone = searcher.neighbours(first, 2)
    without_distance = [
        [{k: v for k, v in hit.items() if k != "distance"} for hit in hits] for hits in (lines[0]["neighbours"], alone)
    ]
    assert without_distance[0] == without_distance[1]
    assert [hit["distance"] for hit in lines[0]["neighbours"]] == pytest.approx(
        [hit["distance"] for hit in alone], abs=1e-5
    )


def test_alias_is_the_old_spelling_of_index_and_says_so(built):
    from typer.testing import CliRunner

    from lookalike.artifacts.aliases import read_alias
    from lookalike.artifacts.shared_root import read_manifest
    from lookalike.cli.main import app
    from lookalike.stages.dataset.stage import open_snapshot, row_positions

    _, root, _ = built
    production = read_alias(root, "production")
    row = min(row_positions(open_snapshot(root, read_manifest(root, "dataset", production.stages["dataset"]))))
    by = {}
    for option in ("--alias", "--index"):
        args = [
            "query",
            "--row",
            str(row),
            "--top-k",
            "1",
            "--json",
            option,
            "production",
            "--artifacts-root",
            str(root),
        ]
        by[option] = CliRunner().invoke(app, args)
    assert "--alias is deprecated: give the alias to --index" in by["--alias"].stderr
    assert "deprecated" not in by["--index"].stderr
    assert by["--alias"].exit_code == by["--index"].exit_code == 0, by["--alias"].output
    assert by["--alias"].stdout == by["--index"].stdout
    assert json.loads(by["--index"].stdout)["index"] == production.stages["index"]


def test_invalid_setting_exits_2_with_one_line_per_field_and_starts_nothing(tmp_path):
    result = lookalike(
        "run",
        "--epochs",
        "-1",
        "--artifacts-root",
        str(tmp_path / "a"),
        home=tmp_path,
        env_extra={"LOOKALIKE_INDEX__TYPO": "x"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "encoder.epochs: Input should be greater than or equal to 0" in result.stderr
    assert "index.typo: unknown setting" in result.stderr
    assert not (tmp_path / "a").exists() and started_no_prefect(tmp_path)


def test_dataset_error_is_one_line_without_traceback(tmp_path):
    result = lookalike(
        "run", "--set", "dataset.image_column=img", "--artifacts-root", str(tmp_path / "a"), home=tmp_path
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error: sample" not in result.stderr
    assert "no image column 'img'; columns are: image, label" in result.stderr


def test_notify_without_a_prefect_server_says_how_to_configure_one(tmp_path):
    result = lookalike("notify", "--dataset", str(tmp_path), home=tmp_path)  # no PREFECT_API_URL, no profile
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: no Prefect server to notify: set PREFECT_API_URL")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_query_before_any_run_says_what_to_do(tmp_path):
    result = lookalike("query", "--row", "0", "--artifacts-root", str(tmp_path / "empty"), home=tmp_path)
    assert result.returncode == 1
    assert "run `lookalike run` with the same options first" in result.stderr


def test_temporary_servers_started_together_on_a_fresh_database_all_come_up(tmp_path):
    """They race on the database migrations; a loser restarts instead of failing the run."""
    from lookalike.flows.server import TemporaryServer

    servers = [TemporaryServer(env={"PREFECT_HOME": str(tmp_path / "prefect")}).start() for _ in range(4)]
    try:
        for server in servers:
            server.wait_until_healthy()
    finally:
        for server in servers:
            server.stop()
    assert len({s.port for s in servers}) == 4
