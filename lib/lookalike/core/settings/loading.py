"""Loading settings: precedence, unknown names in the environment, and one-line validation errors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

from pydantic import (
    BaseModel,
    ValidationError,
)

from lookalike.core.errors import LookalikeError, brief
from lookalike.core.settings.root import SECTIONS, Settings


class SettingsError(LookalikeError, ValueError):
    """Invalid settings, already formatted one line per field."""


def load_settings(overrides: dict[str, Any] | None = None, *, shadowed: Sequence[str] = ()) -> Settings:
    """Read settings from defaults, `.env` and the environment, then apply overrides.

    Every source is validated: a value in `.env` or the environment that a higher-precedence
    source overrides is still reported when it is invalid (it would fail the day the override
    goes away).

    Args:
        overrides: dotted keys (`"encoder.epochs"`) or nested dicts; `None` values are
            ignored so optional CLI flags can be passed straight through.
        shadowed: lines for invalid values the caller found overridden among its own sources
            (`settings_for_run`: a --set value that a named parameter overrides), reported with these.

    Raises:
        SettingsError: one line per invalid field, naming it and why.
    """
    nested: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    lines = [*_unknown_environment_names(), *shadowed, *_shadowed_environment(_leaves(nested))]
    try:
        # Init kwargs are pydantic-settings' highest-priority source and are deep-merged
        # with .env and the environment, so every invalid field is reported at once.
        settings = Settings(**nested)
    except ValidationError as exc:
        raise SettingsError(format_validation_error(exc, lines)) from None
    if lines:
        raise SettingsError(format_validation_error(None, lines))
    return settings


def _leaves(nested: dict[str, Any]) -> dict[str, Any]:
    """{"encoder": {"epochs": 1}} -> {"encoder.epochs": 1}, for the sections of the settings tree."""
    out = {}
    for name, value in nested.items():
        if isinstance(value, dict) and name in SECTIONS:
            out.update({f"{name}.{field}": v for field, v in value.items()})
        else:
            out[name] = value
    return out


def _shadowed_environment(explicit: dict[str, Any]) -> list[str]:
    """Lines for invalid `.env` and environment values that a higher-precedence source hides."""
    try:
        from pydantic_settings import DotEnvSettingsSource, EnvSettingsSource

        environment = _leaves(EnvSettingsSource(Settings)())
        dotenv = _leaves(DotEnvSettingsSource(Settings)())
    except Exception:  # a value the source cannot even decode: the merged validation reports it
        return []
    lines = []
    for where, values, above in (("", environment, explicit), (" in .env", dotenv, {**environment, **explicit})):
        for dotted, value in values.items():
            if dotted in above:
                name = f"{env_name(dotted)}{where}"
                by = "an explicit setting" if dotted in explicit else "the environment"
                lines += _field_errors(dotted, value, name, f"overridden by {by}")
    return lines


def _field_errors(dotted: str, value: Any, name: str, note: str) -> list[str]:
    """The errors of one value on its own (cross-field rules are left to the merged settings,
    where they hold or fail for the values actually used)."""
    *parents, leaf = dotted.split(".")
    data: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        data = {part: data}
    try:
        Settings(**data)
    except ValidationError as exc:
        return [
            f"{name}: {error['msg'].removeprefix('Value error, ')} (got {brief(value)}; {note}, but invalid all the same)"
            for error in exc.errors()
            if [str(part) for part in error["loc"]] == dotted.split(".")
        ]
    except Exception:  # the environment itself cannot be read: the merged validation says why
        return []
    return []


def env_name(dotted: str) -> str:
    """The environment variable that sets a setting: `encoder.method` -> `LOOKALIKE_ENCODER__METHOD`."""
    return f"{Settings.model_config['env_prefix']}{dotted.upper().replace('.', '__')}"


def setting_default(dotted: str) -> Any:
    """A setting's default as the settings model declares it (before `.env`, the environment and
    overrides): `encoder.method` -> `"simclr"`."""
    *sections, leaf = dotted.split(".")
    model: type[BaseModel] = Settings
    for name in sections:
        model = cast(type[BaseModel], model.model_fields[name].annotation)  # a section's model
    return model.model_fields[leaf].get_default(call_default_factory=True)


def _unknown_environment_names() -> list[str]:
    """LOOKALIKE_* variables naming no section or top-level setting.

    pydantic-settings rejects an unknown field inside a known section, but silently ignores
    a misspelt section (LOOKALIKE_ENCODR__EPOCHS), which would run with the default.
    """
    known = set(Settings.model_fields)
    lines = []
    for name in sorted(os.environ):
        if name.upper().startswith("LOOKALIKE_"):
            head = name[len("LOOKALIKE_") :].split("__", 1)[0].lower()
            if head not in known:
                lines.append(
                    f"{name}: unknown setting; the environment takes LOOKALIKE_<SECTION>__<FIELD> "
                    f"with a section in: {', '.join(sorted(known))}"
                )
    return lines


def format_validation_error(exc: ValidationError | None, extra_lines: Sequence[str] = ()) -> str:
    """One line per field: `encoder.epochs: Input should be >= 0 (got -1)`. A field that takes a number
    or `auto` fails both ways at once; its two messages share one line."""
    fields: dict[str, tuple[list[str], str]] = {}
    for err in exc.errors() if exc else []:
        loc = list(err["loc"])
        if len(loc) > 1 and isinstance(loc[-1], str) and not loc[-1].isidentifier():  # a union branch's tag
            loc.pop()  # e.g. encoder.steps.constrained-int and encoder.steps.literal['auto']
        where = ".".join(str(p) for p in loc) or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling; LOOKALIKE_SECTION__FIELD in the environment)"
        got = err.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {brief(got)})"
        fields.setdefault(where, ([], shown))[0].append(msg)
    lines = list(extra_lines) + [f"{where}: {', or '.join(msgs)}{shown}" for where, (msgs, shown) in fields.items()]
    return "invalid settings:\n  " + "\n  ".join(lines)
