"""What a run is asked for (`RunRequest`): the flow's (and CLI's) named run parameters, the settings they set,
and any other setting by dotted name. The CLI, the Python API, the flows and the tests all build one, so the
mapping from run arguments to settings and back to the flow's parameters is written once, here."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field

from lookalike.core.names import IndexPreset
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


class RunRequest(BaseModel):
    """One run's arguments: each named run parameter (None = not given: the environment, `.env` or the
    default decides) and `overrides`, any other setting by dotted name (`encoder.lr`). Values are kept as
    given; `settings()` validates them all at once, into one error that names every mistake."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: Any = None
    split: Any = None
    method: Any = None
    steps: Any = None
    epochs: Any = None
    index: Any = None
    index_factory: Any = None
    artifacts_root: Any = None
    mirror: Any = None
    overrides: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_dotted(cls, settings: dict[str, Any]) -> RunRequest:
        """The request for settings given by dotted name (`encoder.epochs` -> the `epochs` parameter, a raw
        FAISS factory as `index.type` -> `index_factory`, the rest -> overrides)."""
        owner = {dotted: name for name, dotted in RUN_PARAMETERS.items() if name != "index_factory"}
        named: dict[str, Any] = {}
        overrides: dict[str, Any] = {}
        for key, value in settings.items():
            if key == "index.type" and value not in get_args(IndexPreset):
                named["index_factory"] = value
            elif key in owner:
                named[owner[key]] = value
            else:
                overrides[key] = value
        return cls(**named, overrides=overrides)

    def named(self) -> dict[str, Any]:
        """The named run parameters, None where not given."""
        return {name: getattr(self, name) for name in RUN_PARAMETERS}

    def given(self) -> dict[str, Any]:
        """The named run parameters that were given."""
        return {name: value for name, value in self.named().items() if value is not None}

    def check(self) -> None:
        """A flow's `overrides` must not name a setting that has its own (given) parameter (`check_overrides`)."""
        check_overrides(self.overrides, **self.named())

    def settings(self) -> Settings:
        """The settings of this run (`settings_for_run`): named parameters win over overrides, which win
        over the environment, `.env` and defaults."""
        return settings_for_run(self.overrides, **self.named())

    def free_overrides(self) -> dict[str, Any]:
        """The overrides no named parameter owns: what a flow takes as `overrides` beside its parameters."""
        owned = set(RUN_PARAMETERS.values())
        return {key: value for key, value in self.overrides.items() if key not in owned}

    def flow_parameters(self, settings: Settings, drop: tuple[str, ...] = ()) -> dict[str, Any]:
        """The flow's named parameters that reproduce `settings` (this request's, resolved where it runs), so
        the flow's own defaults never shadow the environment read there; less `drop` (parameters the flow
        does not take). The flow's `overrides` are `free_overrides()`."""
        return {k: v for k, v in run_parameters(settings).items() if k not in drop}

    def flow_arguments(self) -> dict[str, Any]:
        """The flow's keyword arguments as asked: the given named parameters and `overrides`, unresolved
        (the flow resolves them where it runs, as a run started from the Prefect UI does)."""
        return {**self.given(), "overrides": self.overrides or None}
