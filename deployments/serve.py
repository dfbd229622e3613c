"""Serve the deployments of ../prefect.yaml from this one process (`flow.serve`), no work pool.

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py [NAME ...]

Reads the same prefect.yaml, so names, schedules, parameters, concurrency limits and event triggers
stay defined once. Without NAMEs it serves all those that run from this checkout (not the `*-docker`
ones, which build an image); runs started from the UI execute here.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import yaml
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
from prefect.schedules import Cron
from pydantic import TypeAdapter

REPO = Path(__file__).resolve().parents[1]


def deployments_from_yaml(names: list[str]) -> list:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    chosen = [d for d in spec["deployments"] if d["name"] in names or not names and not d.get("build")]
    unknown = set(names) - {d["name"] for d in chosen}
    if unknown:
        sys.exit(
            f"error: no deployment named {', '.join(sorted(unknown))} in prefect.yaml "
            f"(it has: {', '.join(d['name'] for d in spec['deployments'])})"
        )
    out = []
    for d in chosen:
        module, _, attr = d["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)
        limit = d.get("concurrency_limit")
        out.append(
            flow.to_deployment(
                name=d["name"],
                description=d.get("description"),
                tags=d.get("tags"),
                parameters=d.get("parameters"),
                schedules=[
                    Cron(s["cron"], timezone=s.get("timezone"))
                    for s in d.get("schedules") or []
                    if s.get("active", True)
                ],
                concurrency_limit=ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit,
                triggers=[TypeAdapter(DeploymentTriggerTypes).validate_python(t) for t in d.get("triggers") or []],
            )
        )
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    serve(*deployments_from_yaml(sys.argv[1:]))
