"""The CLI's flow runner (flows/runner.py): how a `lookalike run` process ends."""

import gc
import os
import subprocess
import sys
import types

import lookalike.flows.runner as orchestration


def test_a_flow_run_from_the_cli_exits_without_the_final_garbage_collections(monkeypatch):
    """run_pipeline asks for the heap to be frozen at exit, once per process."""
    registered = []
    monkeypatch.setattr(orchestration.atexit, "register", registered.append)
    monkeypatch.setattr(orchestration, "_final_collections_skipped", False)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # no temporary server
    # run_pipeline sets Prefect's console level for its process: undone after this test, not left to the next ones
    monkeypatch.setenv(orchestration.CONSOLE_LEVEL, "WARNING")
    flow_module = types.ModuleType("lookalike.flows.retrieval")
    flow_module.retrieval_pipeline = lambda **_: types.SimpleNamespace(result=lambda: {"stages": {}})
    monkeypatch.setitem(sys.modules, "lookalike.flows.retrieval", flow_module)

    assert orchestration.run_pipeline({}, {}) == {"stages": {}}
    assert orchestration.run_pipeline({}, {}) == {"stages": {}}
    assert registered == [gc.freeze]


def test_skipping_the_final_collections_freezes_the_heap_at_exit_and_keeps_other_exit_handlers():
    script = (
        "import atexit, gc, sys\n"
        # registered first, so it runs last: after the freeze
        "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0, flush=True))\n"
        "from lookalike.flows.runner import skip_final_collections\n"
        "skip_final_collections()\n"
        "skip_final_collections()\n"
        "print('frozen before exit:', gc.get_freeze_count() > 0, flush=True)\n"
        "atexit.register(lambda: print('later handler ran', flush=True))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["frozen before exit: False", "later handler ran", "frozen at exit: True"]


def test_every_run_of_a_process_reaches_the_temporary_server_even_after_it_died(tmp_path):
    """A notebook's second lookalike.run (and a third, after the server was killed) runs on the
    temporary server: Prefect reads its API URL once per process, so it must stay where it was."""
    # a one-task flow in place of the pipeline, imported (with prefect) where run_pipeline imports it
    (tmp_path / "one_task_flow.py").write_text(
        "from prefect import flow, task\n"
        "@task\n"
        "def echo(value): return value\n"
        "@flow\n"
        "def retrieval_pipeline(dataset: str = '', overrides: dict | None = None): return {'dataset': echo(dataset)}\n"
    )
    script = (
        "import importlib, sys, types\n"
        "class Flows(types.ModuleType):\n"
        "    def __getattr__(self, name): return getattr(importlib.import_module('one_task_flow'), name)\n"
        "sys.modules['lookalike.flows.retrieval'] = Flows('lookalike.flows.retrieval')\n"
        "import lookalike.flows.runner as orchestration\n"
        "print(orchestration.run_pipeline({'dataset': 'a'}, {}), flush=True)\n"
        "print(orchestration.run_pipeline({'dataset': 'b'}, {}), flush=True)\n"
        "orchestration._server.process.kill()\n"
        "orchestration._server.process.wait()\n"
        "print(orchestration.run_pipeline({'dataset': 'c'}, {}), flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["{'dataset': 'a'}", "{'dataset': 'b'}", "{'dataset': 'c'}"]
