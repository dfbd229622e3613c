"""Settings: one pydantic-settings root with a frozen section per stage.

Precedence: defaults < `.env` < environment (`LOOKALIKE_` prefix, `__` nesting)
< explicit per-run overrides. Sections reject unknown keys so a typo fails loudly.
Secrets (W&B key, AWS credentials) are deliberately not fields here: wandb and
boto3 read them from their usual places, or from Prefect Secret blocks whose *names*
(`tracking.api_key_secret`, `mirror.credentials_secret`) are settings.

The package holds one module per concept: `base` (the Section model), one module per section
(`dataset`, `encoder`, `embeddings`, `index`, `evaluation` with promotion, `outputs` for tracking and
the mirror), `root` (the root Settings), `loading` (precedence, environment checks, error lines) and
`run` (the named run parameters). Everything is importable from here, as before the split.
"""

from __future__ import annotations

from lookalike.core.names import METHOD_NAMES, SMALL_IMAGE_RESNETS, IndexPreset, Method
from lookalike.core.settings.base import DEFAULT_CACHE, EMPTY_TEXT, Auto, Section, named_source
from lookalike.core.settings.dataset import DatasetSettings
from lookalike.core.settings.embeddings import EmbeddingsSettings
from lookalike.core.settings.encoder import EncoderSettings
from lookalike.core.settings.evaluation import EvaluationSettings, PromotionSettings
from lookalike.core.settings.index import IndexSettings
from lookalike.core.settings.loading import (
    SettingsError,
    _field_errors,
    _leaves,
    _shadowed_environment,
    _unknown_environment_names,
    env_name,
    format_validation_error,
    load_settings,
    setting_default,
)
from lookalike.core.settings.outputs import MirrorSettings, TrackingSettings
from lookalike.core.settings.root import SECTIONS, Settings, url_of, working_copy
from lookalike.core.settings.run import (
    RUN_PARAMETERS,
    RunRequest,
    _flag,
    check_overrides,
    run_parameters,
    settings_for_run,
)

__all__ = [
    "Auto",
    "DEFAULT_CACHE",
    "DatasetSettings",
    "EMPTY_TEXT",
    "EmbeddingsSettings",
    "EncoderSettings",
    "EvaluationSettings",
    "IndexPreset",
    "IndexSettings",
    "METHOD_NAMES",
    "Method",
    "MirrorSettings",
    "PromotionSettings",
    "RUN_PARAMETERS",
    "RunRequest",
    "SECTIONS",
    "SMALL_IMAGE_RESNETS",
    "Section",
    "Settings",
    "SettingsError",
    "TrackingSettings",
    "_field_errors",
    "_flag",
    "_leaves",
    "_shadowed_environment",
    "_unknown_environment_names",
    "check_overrides",
    "env_name",
    "format_validation_error",
    "load_settings",
    "named_source",
    "run_parameters",
    "setting_default",
    "settings_for_run",
    "url_of",
    "working_copy",
]
