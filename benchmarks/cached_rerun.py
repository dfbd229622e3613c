"""What a fully cached re-run costs beyond starting Prefect: the orchestration overhead.

All runs share one working folder: a temporary artifacts root and PREFECT_HOME, W&B offline (the
default when wandb finds no API key), default settings and the bundled sample.

1. `lookalike run --json` runs once to fill the caches. This is the full run: minutes on 2 CPUs.
2. Then two processes alternate, `--repeats` times each, so that machine noise hits both alike:
   - the same `lookalike run --json`. Every stage must report `cached` in its summary, or the
     script fails;
   - the baseline, "Prefect start-up". This fresh process does what `lookalike run` does around
     its flow, with an empty flow instead. It imports what the CLI imports before its flow
     starts: the CLI, the settings, and the flow's modules (torch, lightly, faiss, Prefect).
     It starts Prefect's temporary server as `flows/runner.py` does, during those imports
     (the same `TemporaryServer`, environment and health wait). It runs an empty `@flow`
     against the server, drains Prefect's log and event workers as the CLI does after its flow,
     stops the server and exits the way the CLI exits. The CLI also waits for the server to
     record every task run; the empty flow has none, so the baseline skips that wait.
3. One more cached run goes through an instrumented process and is timed phase by phase. It
   runs the same CLI code, with clocks around: the server's start and health wait, the flow
   and each Prefect task call, the W&B run (`import wandb`, `wandb.init`, `finish`), the wait
   for task runs to be recorded, the server's stop and the exit. It is kept out of the medians.

Each timing is `time.perf_counter` around a whole process, from spawn to exit, as in the other
benchmarks. The medians give `overhead = cached re-run - baseline`; the goal is <= 5 s. Each
process's CPU seconds are recorded too (`cpu_s`: user + system, the temporary server included).
They move less than wall time when other jobs share the machine.

Usage:
    .venv/bin/python benchmarks/cached_rerun.py [--repeats 3] [--workdir DIR] [--out FILE]

`--workdir DIR` keeps the artifacts root and PREFECT_HOME in DIR (created when missing, never
deleted) instead of a temporary folder. If DIR is already filled, the first run is cached too,
which saves the full run when you repeat a measurement. `--set section.field=value` is passed
to every `lookalike run`: `--set encoder.epochs=0` makes a quick trial. Recorded numbers come
from a fresh folder with default settings.

Writes a JSON record (and prints it); the recorded output lives in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from _record import emit

LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))
STAGES = ("dataset", "encoder", "embeddings", "index", "evaluation")
PROBE_ENV = "CACHED_RERUN_PROBE_OUT"  # the instrumented process writes its phase clocks here


# --- the parent: run processes, check, summarise ---


def environment(work: Path) -> dict[str, str]:
    """This environment without settings that would change the run: LOOKALIKE_*, a Prefect API
    (the CLI would use it instead of its temporary server), W&B credentials and mode (the
    default, offline without a key, is what is measured)."""
    drop = ("LOOKALIKE_", "PREFECT_", "WANDB_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PREFECT_HOME=str(work / "prefect"), WANDB_SILENT="true")
    return env


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[dict, subprocess.CompletedProcess]:
    """Wall seconds, and CPU seconds (user + system) of the process and the children it waited
    for (the temporary server): the CPU figure moves less when other jobs share the machine."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = after.ru_utime - cpu.ru_utime + after.ru_stime - cpu.ru_stime
    return {"seconds": round(seconds, 2), "cpu_s": round(cpu_s, 2)}, proc


def check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        sys.exit(f"{what} failed (exit {proc.returncode}):\n{proc.stderr.strip()[-3000:]}")


def run_command(root: Path, sets: list[str]) -> list[str]:
    return [LOOKALIKE, "run", "--json", "--artifacts-root", str(root), *(a for s in sets for a in ("--set", s))]


def lookalike_run(command: list[str], env: dict[str, str], cwd: Path, what: str, require_cached: bool) -> dict:
    times, proc = timed(command, env, cwd)
    check(proc, what)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    stages = {name: {"status": s["status"], "seconds": s["seconds"]} for name, s in summary["stages"].items()}
    if require_cached:
        not_cached = {n: s["status"] for n, s in stages.items() if s["status"] != "cached"}
        missing = [n for n in STAGES if n not in stages]
        if not_cached or missing:
            sys.exit(f"{what}: every stage must be cached; not cached: {not_cached}, missing: {missing}")
        if summary["artifacts"]["wandb_mode"] != "offline":
            sys.exit(
                f"{what}: W&B ran {summary['artifacts']['wandb_mode']!r}; this benchmark measures the "
                "offline default (run it where wandb finds no API key)"
            )
    return {**times, "stages": stages, "wandb_mode": summary["artifacts"]["wandb_mode"]}


def baseline_run(env: dict[str, str], cwd: Path) -> dict:
    spawned = time.monotonic()
    times, proc = timed([sys.executable, str(Path(__file__).resolve()), "_baseline"], env, cwd)
    ended = time.monotonic()
    check(proc, "the baseline (empty flow) process")
    clocks = json.loads(proc.stdout.strip().splitlines()[-1])
    phases = {
        "interpreter start": clocks.pop("started") - spawned,
        **clocks.pop("phases"),
        "exit": ended - clocks.pop("finished"),
    }
    return {**times, "phases": {k: round(v, 2) for k, v in phases.items()}}


def probe_run(run: list[str], env: dict[str, str], work: Path) -> dict:
    """One cached run in the instrumented process: where its time goes, phase by phase."""
    out = work / "probe.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "_probe", *run[1:]]
    spawned = time.monotonic()
    record = lookalike_run(
        command, {**env, PROBE_ENV: str(out)}, work, "the instrumented cached run", require_cached=True
    )
    ended = time.monotonic()
    events = json.loads(out.read_text())
    return {
        "seconds": record["seconds"],
        "cpu_s": record["cpu_s"],
        "stages": record["stages"],
        **phase_table(events, spawned, ended),
    }


def phase_table(events: list[dict], spawned: float, ended: float) -> dict:
    """Sequential phases of the instrumented run (seconds), and its Prefect tasks' seconds."""
    first = {e["name"]: e for e in reversed(events)}  # the first event of each name
    total = {}
    for e in events:
        total[e["name"]] = total.get(e["name"], 0.0) + e["end"] - e["start"]

    def at(name: str, edge: str) -> float:
        return first[name][edge]

    tasks = {}
    for e in events:
        if e["name"].startswith("task:"):
            name = e["name"][5:]
            tasks[name] = round(tasks.get(name, 0.0) + e["end"] - e["start"], 2)
    wandb_runs = [e for e in events if e["name"] == "wandb.init"]
    phases = {
        "interpreter start": at("probe", "start") - spawned,
        "import the CLI (typer, rich, settings)": at("import cli", "end") - at("import cli", "start"),
        "settings, check source, server launch": at("server.start", "end") - at("import cli", "end"),
        "import pipeline (torch, lightly, prefect, ...)": at("server.wait", "start") - at("server.start", "end"),
        "wait for the server beyond the imports": at("server.wait", "end") - at("server.wait", "start"),
        "flow run": at("flow", "end") - at("flow", "start"),
        "wait until task runs recorded": at("wait_until_recorded", "end") - at("wait_until_recorded", "start"),
        "stop the server": at("server.stop", "end") - at("server.stop", "start"),
        "print summary, exit": ended - at("app", "end"),
    }
    in_flow = {
        "flow engine start (until the first task)": min(e["start"] for e in events if e["name"].startswith("task:"))
        - at("flow", "start"),
        "import wandb": total.get("import wandb", 0.0),
        f"wandb.init ({len(wandb_runs)} run{'s' * (len(wandb_runs) != 1)})": total.get("wandb.init", 0.0),
        "wandb finish": total.get("wandb.finish", 0.0),
        "flow engine end (after the last task, less wandb finish)": at("flow", "end")
        - max(e["end"] for e in events if e["name"].startswith("task:"))
        - total.get("wandb.finish", 0.0),
    }
    return {
        "phases": {k: round(v, 2) for k, v in phases.items()},
        "flow_run": {k: round(v, 2) for k, v in in_flow.items()},
        "tasks": tasks,
    }


# the instrumented run's phase -> the baseline's phase that does the same job (None: no counterpart)
PHASE_PAIRS = {
    "interpreter start": "interpreter start",
    "import the CLI (typer, rich, settings)": "import the CLI (typer, rich, settings)",
    "settings, check source, server launch": None,
    "import pipeline (torch, lightly, prefect, ...)": "import pipeline (torch, lightly, prefect, ...)",
    "wait for the server beyond the imports": "wait for the server beyond the imports",
    "flow run": "empty flow run",
    "wait until task runs recorded": "drain log and event workers",
    "stop the server": "stop the server",
    "print summary, exit": "exit",
}


def compare_phases(probe: dict[str, float], baselines: list[dict]) -> dict[str, dict]:
    out = {}
    for phase, seconds in probe.items():
        pair = PHASE_PAIRS.get(phase)
        base = median([b["phases"][pair] for b in baselines]) if pair else 0.0
        out[phase] = {"cached_rerun": seconds, "baseline": base, "difference": round(seconds - base, 2)}
    return out


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "lightly", "prefect", "wandb", "faiss-cpu", "datasets"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="cached re-runs and baselines to time (each)")
    parser.add_argument("--workdir", type=Path, help="keep artifacts root and PREFECT_HOME here (default: a temp dir)")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="passed to `lookalike run` (repeatable), e.g. encoder.epochs=0 for a quick trial; "
        "the recorded run uses the defaults",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON record here")
    args = parser.parse_args()

    with workdir(args.workdir) as work:
        env, run = environment(work), run_command(work / "artifacts", args.sets)
        print("filling the caches: one full `lookalike run` ...", file=sys.stderr)
        fill = lookalike_run(run, env, work, "the run that fills the caches", require_cached=False)
        cached, baseline = [], []
        for i in range(args.repeats):
            print(f"repeat {i + 1}/{args.repeats}: cached re-run, then the baseline ...", file=sys.stderr)
            cached.append(lookalike_run(run, env, work, f"cached re-run {i + 1}", require_cached=True))
            baseline.append(baseline_run(env, work))
        print("instrumented cached re-run ...", file=sys.stderr)
        probe = probe_run(run, env, work)

    cached_s, baseline_s = median([r["seconds"] for r in cached]), median([r["seconds"] for r in baseline])
    record = {
        "benchmark": "cached_rerun",
        "dataset": "bundled sample (3,000 images), W&B offline",
        "settings": args.sets or "defaults",
        "date": datetime.now(timezone.utc).date().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "versions": versions(),
        "command": " ".join(["lookalike", *run_command(Path("<fresh root>"), args.sets)[1:]]),
        "repeats": args.repeats,
        "median_cached_rerun_s": cached_s,
        "median_baseline_s": baseline_s,
        "overhead_s": round(cached_s - baseline_s, 2),
        "goal_overhead_s": 5.0,
        "median_cpu_s": {
            "cached_rerun": median([r["cpu_s"] for r in cached]),
            "baseline": median([r["cpu_s"] for r in baseline]),
        },
        "median_stage_seconds": {n: median([r["stages"][n]["seconds"] for r in cached]) for n in cached[0]["stages"]},
        "median_baseline_phases": {k: median([r["phases"][k] for r in baseline]) for k in baseline[0]["phases"]},
        "instrumented_cached_rerun": probe,
        # the instrumented run's phases beside the baseline's (medians), for where the difference lies
        "phases_cached_vs_baseline": compare_phases(probe["phases"], baseline),
        "fill_run": fill,
        "cached_reruns": cached,
        "baselines": baseline,
    }
    emit(record, args.out)


@contextmanager
def workdir(path: Path | None):
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        yield Path(tmp)


# --- the baseline process: the CLI's Prefect start-up around an empty flow ---


def baseline_process() -> None:
    """Mirrors `lookalike run` (lib/lookalike/cli/main.py, flows/runner.py) with an empty flow."""
    started = time.monotonic()
    clock = {}
    import lookalike.cli.main  # noqa: F401  (the entry point's imports: typer, rich, lookalike.cli.render)
    import lookalike.core.settings  # noqa: F401  (what `run` imports before the server starts)
    import lookalike.flows.runner as orchestration
    import lookalike.stages.dataset.sources  # noqa: F401
    from lookalike.flows.server import TemporaryServer

    clock["import the CLI (typer, rich, settings)"] = time.monotonic() - started
    orchestration.skip_final_collections()  # the CLI's exit
    orchestration._quiet_temporary_server()
    server = TemporaryServer().start()  # boots while the pipeline's modules import, as in the CLI
    os.environ.update(server.client_env())
    try:
        mark = time.monotonic()
        from prefect import flow
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        import lookalike.flows.retrieval  # noqa: F401  (torch, lightly, faiss, Prefect, ...)

        clock["import pipeline (torch, lightly, prefect, ...)"] = time.monotonic() - mark
        mark = time.monotonic()
        server.wait_until_healthy()
        clock["wait for the server beyond the imports"] = time.monotonic() - mark

        @flow(name="empty-baseline")
        def empty() -> dict:
            return {}

        mark = time.monotonic()
        state = empty(return_state=True)
        state.result()
        clock["empty flow run"] = time.monotonic() - mark
        mark = time.monotonic()
        APILogWorker.drain_all(timeout=10)  # what _wait_until_recorded does before it polls task runs
        EventsWorker.drain_all(timeout=10)
        clock["drain log and event workers"] = time.monotonic() - mark
    finally:
        mark = time.monotonic()
        server.stop()
        clock["stop the server"] = time.monotonic() - mark
    sys.stdout.write(json.dumps({"started": started, "phases": clock, "finished": time.monotonic()}) + "\n")


# --- the instrumented cached run: the CLI with clocks around its phases ---


def probe_process(argv: list[str]) -> None:
    """Runs `lookalike <argv>` in this process, recording (name, start, end) on time.monotonic,
    which on Linux is one clock for all processes, so the parent can compare its own."""
    events: list[dict] = []
    events.append({"name": "probe", "start": time.monotonic(), "end": time.monotonic()})

    def clocked(name, fn):
        def wrapper(*args, **kwargs):
            start = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                label = name(args, kwargs) if callable(name) else name
                events.append({"name": label, "start": start, "end": time.monotonic()})

        return wrapper

    start = time.monotonic()
    import lookalike.flows.runner as orchestration
    from lookalike.cli.main import app
    from lookalike.flows.server import TemporaryServer

    events.append({"name": "import cli", "start": start, "end": time.monotonic()})

    TemporaryServer.start = clocked("server.start", TemporaryServer.start)
    TemporaryServer.stop = clocked("server.stop", TemporaryServer.stop)
    orchestration._wait_until_recorded = clocked("wait_until_recorded", orchestration._wait_until_recorded)
    wait = TemporaryServer.wait_until_healthy

    def wait_then_instrument(self, *args, **kwargs):
        # By now the flow's modules are imported: clock its Prefect calls and the W&B runs.
        from prefect.flows import Flow
        from prefect.tasks import Task

        from lookalike.reporting.tracking import TrackingRun

        Flow.__call__ = clocked("flow", Flow.__call__)
        Task.__call__ = clocked(
            lambda a, k: f"task:{a[0].task_run_name if isinstance(a[0].task_run_name, str) else a[0].name}",
            Task.__call__,
        )
        init = TrackingRun.__init__

        def init_split(self, section, base_dir, **kw):
            from lookalike.reporting.tracking import _contain_wandb_files

            _contain_wandb_files(base_dir)  # as __init__ does first, so wandb reads the same environment
            t = time.monotonic()
            import wandb  # noqa: F401

            events.append({"name": "import wandb", "start": t, "end": time.monotonic()})
            return clocked("wandb.init", init)(self, section, base_dir, **kw)

        TrackingRun.__init__ = init_split
        TrackingRun.finish = clocked("wandb.finish", TrackingRun.finish)
        return clocked("server.wait", wait)(self, *args, **kwargs)

    TemporaryServer.wait_until_healthy = wait_then_instrument
    start = time.monotonic()
    try:
        app(argv, prog_name="lookalike")
    finally:
        events.append({"name": "app", "start": start, "end": time.monotonic()})
        Path(os.environ[PROBE_ENV]).write_text(json.dumps(events))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_baseline"]:
        baseline_process()
    elif sys.argv[1:2] == ["_probe"]:
        probe_process(sys.argv[2:])
    else:
        main()
