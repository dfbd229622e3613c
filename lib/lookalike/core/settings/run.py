"""The flow's (and CLI's) named run parameters, and the settings they set."""

from __future__ import annotations

from typing import Any, get_args

from lookalike.core.names import (
    IndexPreset,
)
from lookalike.core.settings.loading import SettingsError, _field_errors, load_settings
from lookalike.core.settings.root import Settings

# The flow's (and CLI's) named run parameters and the settings they set.
RUN_PARAMETERS = {
    "dataset": "dataset.source",
    "split": "dataset.split",
    "method": "encoder.method",
    "steps": "encoder.steps",
    "epochs": "encoder.epochs",
    "index": "index.type",
    "index_factory": "index.type",  # a raw FAISS factory string; wins over `index`
    "artifacts_root": "artifacts_root",
    "mirror": "mirror.url",
}


def settings_for_run(overrides: dict[str, Any] | None = None, **named: Any) -> Settings:
    """Settings for one run: named parameters (None = not given) win over `overrides`,
    which win over the environment, `.env` and defaults."""
    unknown = set(named) - set(RUN_PARAMETERS)
    if unknown:
        raise TypeError(f"unknown run parameters: {sorted(unknown)}")
    ordered = sorted(named.items(), key=lambda item: item[0] == "index_factory")  # factory last: it wins
    dotted = {RUN_PARAMETERS[name]: value for name, value in ordered if value is not None}
    owner = {RUN_PARAMETERS[name]: name for name, value in ordered if value is not None}
    shadowed = [
        line
        for key, value in (overrides or {}).items()
        if key in dotted and value is not None
        for line in _field_errors(key, value, f"--set {key}", f"overridden by --{_flag(owner[key])}")
    ]
    return load_settings({**(overrides or {}), **dotted}, shadowed=shadowed)


def _flag(parameter: str) -> str:
    """The CLI option of a named run parameter (index_factory is --index given a factory string)."""
    return "index" if parameter == "index_factory" else parameter.replace("_", "-")


def check_overrides(overrides: dict[str, Any] | None, **named: Any) -> None:
    """A flow's `overrides` must not name a setting that has its own (given) parameter:
    the parameter would silently win."""
    owned = {RUN_PARAMETERS[name]: name for name, value in named.items() if value is not None}
    clashes = [
        f"overrides[{key!r}]: this setting has its own parameter `{owned[key]}`; set that instead"
        for key in (overrides or {})
        if key in owned
    ]
    if clashes:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(clashes))


def run_parameters(settings: Settings) -> dict[str, Any]:
    """The named flow parameters that reproduce `settings` (the CLI passes these, so the
    flow's own defaults never shadow the environment the CLI read)."""

    def value(dotted: str) -> Any:
        node: Any = settings
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    values = {name: value(dotted) for name, dotted in RUN_PARAMETERS.items()}
    values["artifacts_root"] = settings.artifacts_store or str(settings.artifacts_root)
    preset = settings.index.type in get_args(IndexPreset)
    values["index"], values["index_factory"] = (settings.index.type, None) if preset else (None, settings.index.type)
    return values
