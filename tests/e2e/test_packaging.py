"""The wheel is one `lookalike` package with the sample inside, and a plain (non-editable) install of it
runs the default `lookalike run` on that sample. Installs take the locked versions (constraints.txt),
and the versions named elsewhere (prefect.yaml, pyproject's ranges, the Makefile) agree with it."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib
import yaml
from helpers import REPO, cli_env
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel --no-deps .` of a copy of the checkout (the build writes build/ beside the sources)."""
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in tracked:
        if (REPO / name).is_symlink() or (REPO / name).is_file():  # lib/lookalike/{flows,tasks} stay links
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name, follow_symlinks=False)
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
    # flows/ and tasks/, linked into lib/lookalike/, travel as the files themselves
    linked = [
        info
        for info in zipfile.ZipFile(wheel).infolist()
        if info.filename.startswith(("lookalike/flows/", "lookalike/tasks/"))
    ]
    assert {"lookalike/flows/retrieval.py", "lookalike/tasks/index.py"} <= {info.filename for info in linked}
    assert all(stat.S_ISREG(info.external_attr >> 16) for info in linked)


def test_the_editable_install_puts_lib_on_the_path_for_every_tool():
    """The Makefile's `pip install -e` is setuptools' static .pth naming lib/, not an import hook: pyright, mypy
    and jedi follow a path entry, and lookalike.flows.retrieval is then lib/lookalike/flows/retrieval.py."""
    pths = list(Path(sysconfig.get_paths()["purelib"]).glob("__editable__*lookalike*.pth"))
    if not pths:
        pytest.skip("lookalike is not installed editable here (`make test` installs it so)")
    (pth,) = pths
    assert pth.read_text().split() == [str(REPO / "lib")]


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


LOCK = REPO / "constraints.txt"
NOT_LOCKED = {"pip", "setuptools", "wheel", "lookalike"}  # the installer's own tools, and the package itself


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (pin,) = requirement.specifier
            assert pin.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(requirement.name)] = pin.version
    return pins


def test_the_installed_versions_are_exactly_the_locked_ones():
    pins = locked()
    installed: dict[str, str] = {}
    for dist in importlib.metadata.distributions():  # in sys.path order: the one Python imports wins
        installed.setdefault(canonicalize_name(dist.metadata["Name"]), dist.version)
    differ = {name: f"{version} (locked: {pins.get(name, 'not in the lock')})" for name, version in installed.items()}
    differ = {
        name: text for name, text in differ.items() if name not in NOT_LOCKED and pins.get(name) != installed[name]
    }
    absent = sorted(set(pins) - set(installed))
    assert not differ and not absent, (
        f"installed versions drifted from constraints.txt: {differ}; locked but not installed: {absent}. "
        "Rebuild .venv with `make test`, or after a deliberate upgrade that passes the tests, `make lock`."
    )


def test_prefect_yaml_pyproject_and_makefile_agree_with_the_lock():
    pins = locked()
    assert str(yaml.safe_load((REPO / "prefect.yaml").read_text())["prefect-version"]) == pins["prefect"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    refused = [
        f"{r} (locked: {pins.get(canonicalize_name(r.name), 'not in the lock')})"
        for r in requirements
        if not r.specifier.contains(pins.get(canonicalize_name(r.name), "0.dev0"), prereleases=True)
        or canonicalize_name(r.name) not in pins
    ]
    assert not refused, f"pyproject.toml's ranges refuse the locked versions: {refused}"
    (torch_line,) = re.findall(r"^TORCH\s*=(.*)$", (REPO / "Makefile").read_text(), flags=re.M)
    for pin in torch_line.split():
        name, version = pin.split("==")
        assert pins[name] == version, f"Makefile pins {pin}, constraints.txt {name}=={pins[name]}"


def _install_lines(target: str) -> list[str]:
    """The pip install lines `make TARGET` would run on a fresh checkout (make -n in an empty venv dir)."""
    dry = subprocess.run(
        ["make", "-n", "-B", "-f", str(REPO / "Makefile"), target, "VENV=/nonexistent/venv", "CHROMIUM=/bin/sh"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [line for line in dry.splitlines() if " pip install " in line and "--upgrade pip" not in line]


def _extras(lines: list[str]) -> set[str]:
    found = set()
    for line in lines:
        for word in shlex.split(line):
            if word.startswith(".["):
                found |= set(word[2:-1].split(","))
    return found


def test_make_run_installs_no_test_tool_and_every_install_takes_the_lock():
    run, test = _install_lines("run"), _install_lines("test")
    assert run and test
    assert all("-c constraints.txt" in line for line in run + test), run + test
    test_tools = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert "test" not in _extras(run)
    assert not [t for t in test_tools if any(Requirement(t).name in shlex.split(line) for line in run)]
    assert _extras(run) == {"serve", "dask", "s3", "pretrained"}
    assert _extras(test) == _extras(run) | {"test"}


def test_serve_without_the_serve_extra_fails_in_one_line_naming_it(tmp_path):
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("lookalike")), "serve", "--artifacts-root", str(tmp_path / "none")],
        env=cli_env(tmp_path, faults={"missing_modules": ["gradio"]}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: lookalike serve (its UI) needs the serve extra (gradio is not installed): "
        "pip install 'lookalike[serve]'"
    )
