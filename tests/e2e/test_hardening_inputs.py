"""Hardening (issue 27, rows 1, 5 and 7): odd names, odd numbers and odd roots through `lookalike`
itself: each is indexed, refused or reported in one line, never lost. Rows 2 and 8, the HTTP API's bad
bodies, are tests/app/test_http_api.py in process, and tests/e2e/test_app.py against a real `serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import LOOKALIKE, TINY, cli_env, free_port, make_png, run_cli

from lookalike.core.manifest import find_manifest

SETS = [arg for key, value in TINY.items() if key != "dataset.limit" for arg in ("--set", f"{key}={value}")]
SAMPLE = ["--set", "dataset.limit=48", *SETS]
SERVER: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def shared_server(prefect_api_url):
    """The session's Prefect server, so runs skip the ~8 s temporary one (the kill test below is
    the exception: it is about that server)."""
    SERVER["api_url"] = prefect_api_url
    yield
    SERVER.clear()


def lookalike(*args, home: Path, env_extra=None, faults=None, temporary_server: bool = False):
    api_url = None if temporary_server else SERVER["api_url"]
    return run_cli(*args, home=home, api_url=api_url, faults=faults, env_extra=env_extra)


def summary_of(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def error_lines(proc, code: int) -> list[str]:
    """The lines of a failure that exited with `code` without a traceback."""
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    return proc.stderr.strip().splitlines()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One finished TINY chain of the bundled sample, promoted to production."""
    home = tmp_path_factory.mktemp("built")
    root = home / "artifacts"
    return home, root, summary_of(lookalike("run", "--json", "--artifacts-root", str(root), *SAMPLE, home=home))


# --- row 1: file names are bytes, not text -----------------------------------------------------


def test_file_names_with_a_newline_or_undecodable_bytes_are_indexed_or_skipped_never_lost(tmp_path):
    from lookalike.stages.dataset.stage import open_snapshot

    folder = tmp_path / "photos"
    for i in range(12):
        make_png(folder / f"good-{i:02d}.png", i)
    make_png(folder / "new\nline.png", 50)
    make_png(Path(os.fsdecode(os.fsencode(folder) + b"/latin-\xe9.png")), 51)  # not UTF-8: a byte, not text
    (folder / "broken\nname.jpg").write_bytes(b"this is not an image")
    root = tmp_path / "artifacts"
    summary = summary_of(
        lookalike("run", "--json", "--dataset", str(folder), "--artifacts-root", str(root), *SETS, home=tmp_path)
    )

    assert (summary["metrics"]["n_images"], summary["metrics"]["n_skipped"]) == (14, 1)  # 15 files in, 15 accounted for
    [skipped] = summary["skipped"]
    assert skipped["path"] == str(folder / "broken\nname.jpg") and "not a recognised image" in skipped["reason"]
    manifest = find_manifest(root, "dataset", summary["stages"]["dataset"]["key"])
    assert manifest.stats["skipped"] == summary["skipped"]
    paths = {Path(image["path"]).name for image in open_snapshot(root, manifest)["image"]}
    assert {"new\nline.png", "latin-\\xe9.png"} <= paths and len(paths) == 14  # undecodable bytes as \xNN
    table = json.loads(next(Path(summary["artifacts"]["wandb_run_dir"]).rglob("*skipped*.table.json")).read_text())
    assert [row[1] for row in table["data"]] == [skipped["path"]]

    human = lookalike("run", "--dataset", str(folder), "--artifacts-root", str(root), *SETS, home=tmp_path)
    assert human.returncode == 0, human.stderr[-3000:]
    assert "broken\\nname.jpg: not a recognised image" in human.stdout  # the list stays one line per file


# --- row 5: an artifacts root that is a file ----------------------------------------------------


@pytest.mark.parametrize("command", [["run", *SAMPLE], ["query", "--row", "0"], ["promote", "0" * 16], ["serve"]])
@pytest.mark.parametrize("where", ["root.txt", "root.txt/below"])
def test_an_artifacts_root_that_is_a_file_is_refused_before_anything_runs(tmp_path, command, where):
    (tmp_path / "root.txt").write_text("not a folder")
    proc = lookalike(command[0], "--artifacts-root", str(tmp_path / where), *command[1:], home=tmp_path)
    text = "\n".join(error_lines(proc, 2))
    assert f"{tmp_path / 'root.txt'} is a file, not a folder" in text and "--artifacts-root" in text, text
    assert "run the same command again" not in text and not (tmp_path / "prefect").exists()
    assert (tmp_path / "root.txt").read_text() == "not a folder"


# --- row 7: every source is validated, even one a higher-precedence source overrides ------------


@pytest.mark.parametrize(
    "args, env, says",
    [
        (["--epochs", "1"], {"LOOKALIKE_ENCODER__EPOCHS": "abc"}, ["LOOKALIKE_ENCODER__EPOCHS", "'abc'"]),
        (["--set", "encoder.epochs=-1", "--epochs", "1"], {}, ["--set encoder.epochs", "-1", "--epochs"]),
        (["--index", "flat-l2"], {"LOOKALIKE_INDEX__TYPE": "NoSuchIndex"}, ["LOOKALIKE_INDEX__TYPE", "NoSuchIndex"]),
        (["--set", "encoder.lr=0.01"], {"LOOKALIKE_ENCODER__LR": "-5"}, ["LOOKALIKE_ENCODER__LR", "'-5'"]),
    ],
)
def test_an_invalid_value_is_reported_even_when_a_higher_precedence_source_overrides_it(tmp_path, args, env, says):
    # TINY, so that before the fix (when the bad value went unnoticed) the run was quick, not a full one
    proc = lookalike("run", "--artifacts-root", str(tmp_path / "a"), *SAMPLE, *args, home=tmp_path, env_extra=env)
    lines = error_lines(proc, 2)
    assert lines[0] == "error: invalid settings:" and len(lines) == 2, lines
    assert all(word in lines[1] for word in says) and "overridden" in lines[1], lines
    assert not (tmp_path / "a").exists() and not (tmp_path / "prefect").exists()


# --- row 8: polish --------------------------------------------------------------------------------


def test_the_temporary_prefect_server_is_gone_within_a_second_of_a_sigkilled_run(tmp_path):
    """Even while a client is mid-request: a graceful shutdown would wait for that request."""
    import socket

    root = tmp_path / "artifacts"
    proc = subprocess.Popen(
        [LOOKALIKE, "run", "--json", "--artifacts-root", str(root), *SAMPLE],
        env=cli_env(tmp_path, faults={"train_slow_seconds": 1.0}),  # no PREFECT_API_URL: its own server
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    held = None
    try:
        deadline = time.monotonic() + 120
        while not list(root.glob("encoder/*")):  # the flow is running, so its server is up
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-3000:]
            time.sleep(0.1)
        [server] = [pid for pid in _children(proc.pid) if "uvicorn" in Path(f"/proc/{pid}/cmdline").read_text()]
        args = Path(f"/proc/{server}/cmdline").read_text().split("\0")
        port = args[args.index("--port") + 1]
        held = socket.create_connection(("127.0.0.1", int(port)))
        held.sendall(b"POST /api/flows/filter HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # 99 to go
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)  # the run only, not its process group
        proc.wait(timeout=30)
        killed = time.monotonic()
        while _alive(server):
            assert time.monotonic() - killed < 1.0, "the temporary server outlived its run by over a second"
            time.sleep(0.02)
    finally:
        if held:
            held.close()
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group, server included


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "encoder.method=" + "m" * 5000],
        ["--index", "i" * 5000],
        ["--set", "s" * 5000],
        ["--epochs", "1"],  # with LOOKALIKE_ENCODER__LR set to the long value below
    ],
)
def test_a_5000_character_bad_value_is_cut_short_in_the_error_line(tmp_path, args):
    proc = lookalike(
        "run",
        "--artifacts-root",
        str(tmp_path / "a"),
        *args,
        home=tmp_path,
        env_extra={"LOOKALIKE_ENCODER__LR": "9" * 4999 + "x"},
    )
    lines = error_lines(proc, 2)
    assert all(len(line) < 400 for line in lines), [len(line) for line in lines]
    assert any("5000 characters" in line for line in lines), lines


def test_a_manifest_that_is_not_json_is_named_as_such_not_as_missing(built, tmp_path):
    import shutil

    home, root, summary = built
    shutil.copytree(root, tmp_path / "artifacts", ignore=shutil.ignore_patterns("wandb", "cache", ".*.lock"))
    manifest = tmp_path / "artifacts" / "encoder" / summary["stages"]["encoder"]["key"] / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])  # cut short, as a bad copy leaves it
    index = summary["stages"]["index"]["key"]
    for args in (
        ["query", "--row", "0", *SAMPLE],
        ["promote", index],
        ["serve", "--index", index, "--port", str(free_port())],
    ):
        proc = lookalike(*args, "--artifacts-root", str(tmp_path / "artifacts"), home=tmp_path)
        [line] = [line for line in error_lines(proc, 1) if line.startswith("error:")]
        assert f"{manifest} is not valid JSON:" in line and "no manifest" not in line, line
        assert "delete" in line, line
