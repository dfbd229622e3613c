import subprocess
import sys

import pytest

from lookalike.core.settings import EncoderSettings, SettingsError, load_settings


def test_defaults_run_the_bundled_sample_with_the_cpu_recipe_and_flat_l2():
    """The defaults are the CPU recipe the benchmarks recorded (benchmarks/README.md), its sizes and
    length chosen from the data (`auto`, tests/core/test_recipe.py)."""
    settings = load_settings()
    assert settings.dataset.source == "sample"
    encoder = settings.encoder
    assert (encoder.method, encoder.backbone, encoder.temperature) == ("simclr", "resnet-9", 0.2)
    auto = (encoder.width, encoder.input_size, encoder.batch_size, encoder.steps)
    assert auto == ("auto",) * 4 and encoder.epochs is None and encoder.colour_jitter == 0.5
    assert (encoder.augmentation, encoder.lr_schedule, encoder.crop_min_scale) == ("batched", "cosine", 0.25)
    assert settings.index.type == "flat-l2"


def test_environment_overrides_defaults_and_explicit_overrides_win(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_ENCODER__EPOCHS", "7")
    monkeypatch.setenv("LOOKALIKE_INDEX__TYPE", "flat-ip")
    assert load_settings().encoder.epochs == 7
    settings = load_settings({"encoder.epochs": 2})
    assert settings.encoder.epochs == 2
    assert settings.index.type == "flat-ip"


def test_typo_in_env_section_field_is_rejected_naming_it(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_ENCODER__EPOCS", "3")
    with pytest.raises(SettingsError, match=r"encoder\.epocs: unknown setting"):
        load_settings()


@pytest.mark.parametrize(
    "override, field",
    [
        ({"encoder.epochs": -1}, "encoder.epochs"),
        ({"encoder.method": "mae"}, "encoder.method"),
        ({"index.type": "no-such-index"}, "index.type"),
        ({"encoder.backbone": "resnet19"}, "encoder.backbone"),
        ({"mirror.url": "http://bucket"}, "mirror.url"),
    ],
)
def test_invalid_settings_give_one_line_per_field(override, field):
    with pytest.raises(SettingsError) as info:
        load_settings(override)
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid settings:"
    assert any(line.strip().startswith(f"{field}:") for line in lines[1:])


def test_sections_are_frozen():
    section = EncoderSettings()
    with pytest.raises(Exception):
        section.epochs = 5


def test_settings_that_cannot_change_output_are_not_in_the_key():
    settings = load_settings({"embeddings.batch_size": 7, "embeddings.num_workers": 1, "encoder.num_workers": 1})
    assert "batch_size" not in settings.embeddings.key_fields()
    assert "num_workers" not in settings.encoder.key_fields()
    assert "epochs" in settings.encoder.key_fields()


def test_duplicate_settings_are_keyed_only_away_from_their_defaults():
    """Keys recorded before evaluation.duplicates and index.dedupe existed stay as they were."""
    default = load_settings()
    assert "duplicates" not in default.evaluation.key_fields() and "dedupe" not in default.index.key_fields()
    changed = load_settings({"evaluation.duplicates": False, "index.dedupe": "exact"})
    assert changed.evaluation.key_fields()["duplicates"] is False
    assert changed.index.key_fields()["dedupe"] == "exact"


def test_named_run_parameters_win_and_none_means_not_given():
    from lookalike.core.settings import settings_for_run

    settings = settings_for_run({"encoder.epochs": 1, "index.type": "hnsw"}, epochs=None, index="flat-ip")
    assert settings.encoder.epochs == 1  # None did not erase the override
    assert settings.index.type == "flat-ip"


def test_loading_settings_imports_nothing_heavy_even_to_refuse_bad_names():
    """A typo is reported before torch, FAISS, boto3, wandb or Prefect load (a fresh interpreter)."""
    script = """
import sys
from lookalike.core.settings import SettingsError, load_settings
load_settings({"index.type": "hnsw", "encoder.backbone": "resnet50", "artifacts_root": "s3://bucket/prefix"})
try:
    load_settings({"index.type": "flat-l3", "encoder.backbone": "resnet-7"})
except SettingsError as exc:
    assert "index.type" in str(exc) and "encoder.backbone" in str(exc), exc
else:
    raise AssertionError("bad names were accepted")
heavy = {"torch", "torchvision", "faiss", "boto3", "botocore", "wandb", "prefect", "lightly", "datasets"}
print(sorted(heavy & {name.split(".")[0] for name in sys.modules}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_an_invalid_dotenv_value_is_reported_even_when_the_environment_overrides_it(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("LOOKALIKE_ENCODER__EPOCHS=abc\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOOKALIKE_ENCODER__EPOCHS", "3")
    with pytest.raises(
        SettingsError, match=r"LOOKALIKE_ENCODER__EPOCHS in \.env: .*'abc'; overridden by the environment"
    ):
        load_settings()


def test_an_overridden_value_that_is_valid_on_its_own_is_not_reported(monkeypatch):
    """devices=2 needs strategy=ddp, but as a field it is valid; the override decides what runs."""
    monkeypatch.setenv("LOOKALIKE_ENCODER__DEVICES", "2")
    assert load_settings({"encoder.devices": 1}).encoder.devices == 1


def test_a_number_or_auto_field_fails_on_one_line_naming_both():
    with pytest.raises(SettingsError) as caught:
        load_settings({"encoder.steps": "abc"})
    lines = str(caught.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].startswith("  encoder.steps: Input should be a valid integer")
    assert "or Input should be 'auto' (got 'abc')" in lines[0]


@pytest.mark.parametrize("text", ["", "null", "None"])
def test_empty_text_gives_an_optional_number_none_as_its_description_promises(text, monkeypatch):
    """The GPU photo recipe (docs/training/recipes.md) passes `--set encoder.crop_min_scale=null` (the
    method's own crop scales); an optional number given "", "null" or "none" as text is None, not a parse error."""
    settings = load_settings({"encoder.crop_min_scale": text, "encoder.epochs": text, "index.nlist": text})
    assert (settings.encoder.crop_min_scale, settings.encoder.epochs, settings.index.nlist) == (None, None, None)
    monkeypatch.setenv("LOOKALIKE_INDEX__NLIST", text)
    assert load_settings().index.nlist is None
    assert load_settings({"encoder.init": ""}).encoder.init is None  # a text field keeps its own rule:
    assert load_settings({"encoder.init": "null"}).encoder.init == "null"  # "null" may name a file
    with pytest.raises(SettingsError, match="crop_min_scale"):
        load_settings({"encoder.crop_min_scale": "nothing"})


def _float_settings(model=None, prefix=""):
    """Every setting that takes a float (alone or beside None or 'auto'), dotted."""
    from typing import get_args

    from pydantic import BaseModel

    from lookalike.core.settings import Settings

    model = model or Settings
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _float_settings(annotation, f"{prefix}{name}.")
        elif float in (annotation, *get_args(annotation)) or any(
            float in get_args(arg)
            for arg in get_args(annotation)  # Annotated[float, ...] | Literal['auto']
        ):
            yield f"{prefix}{name}"


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", float("inf"), float("nan")])
def test_no_float_setting_takes_a_number_that_is_not_finite(value):
    """encoder.lr=inf trained, and wrote "lr": null into a manifest that every later run failed on."""
    names = sorted(_float_settings())
    assert {"encoder.lr", "encoder.width", "index.whitening", "artifacts_lease_seconds"} <= set(names)
    for name in names:
        with pytest.raises(SettingsError) as caught:
            load_settings({name: value})
        assert f"{name}: Input should be a finite number" in str(caught.value), name


@pytest.mark.parametrize("source", ["", "   ", "\t"])
def test_an_empty_dataset_source_is_refused_instead_of_meaning_the_current_folder(source, monkeypatch):
    from lookalike.core.settings import settings_for_run

    with pytest.raises(SettingsError, match="dataset.source: is empty"):
        settings_for_run({}, dataset=source)  # `--dataset ""`, lookalike.run(dataset="")
    monkeypatch.setenv("LOOKALIKE_DATASET__SOURCE", source)
    with pytest.raises(SettingsError, match="dataset.source: is empty"):
        load_settings()
    monkeypatch.delenv("LOOKALIKE_DATASET__SOURCE")
    assert load_settings({"dataset.source": "."}).dataset.source == "."  # the current folder, said so


def test_a_run_request_maps_run_arguments_to_settings_and_back_in_one_place():
    """The CLI, the Python API, the flows and the tests build a RunRequest: dotted settings split into the
    flow's named parameters and overrides, a raw FAISS factory string becomes index_factory, a named parameter
    wins over the same setting in overrides, and the flow's parameters reproduce the resolved settings."""
    from lookalike.core.settings import RunRequest, SettingsError

    request = RunRequest.from_dotted({"encoder.epochs": 2, "index.type": "IVF16,Flat", "encoder.lr": 0.01})
    assert request.flow_arguments() == {"epochs": 2, "index_factory": "IVF16,Flat", "overrides": {"encoder.lr": 0.01}}
    assert RunRequest.from_dotted({"index.type": "hnsw"}).flow_arguments() == {"index": "hnsw", "overrides": None}
    settings = RunRequest(epochs=1, overrides={"encoder.epochs": 3, "dataset.limit": 64}).settings()
    assert settings.encoder.epochs == 1 and settings.dataset.limit == 64
    again = RunRequest(**RunRequest(epochs=1).flow_parameters(settings), overrides={"dataset.limit": 64})
    assert again.settings() == settings
    assert RunRequest(epochs=1, overrides={"encoder.epochs": 3, "dataset.limit": 64}).free_overrides() == {
        "dataset.limit": 64
    }
    with pytest.raises(SettingsError, match="has its own parameter `epochs`"):
        RunRequest(epochs=1, overrides={"encoder.epochs": 3}).check()
