"""The wheel is one `lookalike` package with the sample inside, and a plain (non-editable) install of it
runs the default `lookalike run` on that sample."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, cli_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel --no-deps .` of a copy of the checkout (the build writes build/ beside the sources)."""
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            str(source),
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("lookalike-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package_and_the_sample(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"lookalike", wheel.name.split("-py3")[0] + ".dist-info"}
    assert sorted(n for n in names if n.endswith(".parquet")) == [
        "lookalike/data/fashion-mnist-sample/data/test-00000-of-00001.parquet",
        "lookalike/data/fashion-mnist-sample/data/train-00000-of-00001.parquet",
    ]
    assert not [n for n in names if n.startswith(("lookalike/tests", "tests/", "lib/", "tasks/", "flows/", "cli/"))]


def test_a_plain_install_of_the_wheel_runs_the_default_pipeline_on_its_sample(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # the wheel installed for real (not editable), its dependencies borrowed from the test environment
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-compile",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run(
        [str(python), "-c", "import lookalike.stages.dataset.sources as s; print(s.SAMPLE_DIR)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.strip()
    assert Path(where).is_relative_to(site)  # the sample inside the installed package, not the checkout's
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [str(venv / "bin" / "lookalike"), "run", "--set", "dataset.limit=300", "--epochs", "1", "--json"],
        cwd=work,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["metrics"]["n_images"] == 300
    root = work / summary["artifacts"]["root"]  # relative to where it ran (an absolute one stays as it is)
    assert (root / "index" / summary["stages"]["index"]["key"] / "manifest.json").is_file()
