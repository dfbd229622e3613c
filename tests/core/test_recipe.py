"""The encoder recipe read from the data: the step budget and the `auto` choices, and that they are keyed."""

from __future__ import annotations

import pytest
from helpers import SAMPLE_STATS

from lookalike.core import recipe
from lookalike.core.settings import SettingsError, load_settings
from lookalike.stages.encoder.backbones import forward_flops
from lookalike.stages.encoder.stage import encoder_key, resolve

GRAYSCALE_28 = SAMPLE_STATS["profile"]
PHOTOS = {
    "width": {"median": 640},
    "height": {"median": 480},
    "colour": "colour",
    "layout": "varied",
    "layout_share": 0.03,
}


class Dataset:  # what resolve and encoder_key read of a dataset manifest
    def __init__(self, n: int, profile: dict, key: str = "d" * 16) -> None:
        self.stats, self.key = {"n_images": n, "profile": profile}, key


def resolved(n: int, profile: dict, **sets):
    return resolve(load_settings({f"encoder.{k}": v for k, v in sets.items()}).encoder, Dataset(n, profile))


def test_a_small_collection_gets_the_steps_the_recipe_needs_and_a_large_one_is_bounded_by_compute():
    small, _, small_plan = resolved(300, GRAYSCALE_28)
    assert small_plan.steps_per_epoch == 1  # 300 images at batch 256: one step a pass
    assert small.steps == small_plan.steps == recipe.LEARN_STEPS == 600  # not 100 passes (100 steps), nor 300
    assert "the 600 steps the recipe needs" in small_plan.why and "100 passes would be 100" in small_plan.why

    photos, _, photos_plan = resolved(900, PHOTOS)
    assert photos_plan.steps_per_epoch == 3 and photos.steps == 600  # 100 passes would be 300
    assert "4.3 min at an estimated 0.43 s a step" in photos_plan.why  # a photo step: 1.2x the reference FLOPs

    grown, _, grown_plan = resolved(2_560, GRAYSCALE_28)
    assert grown.steps == 1_000 and grown_plan.why == "100 passes of 10 steps"  # passes, once they are more

    large, _, large_plan = resolved(60_000, GRAYSCALE_28)
    assert large_plan.steps_per_epoch == 234
    assert large.steps == recipe.REFERENCE_STEPS < recipe.PASSES * 234  # the reference cost: the bound itself
    assert large_plan.why.startswith("bounded by compute")
    assert large_plan.epochs == -(-large.steps // 234)  # the last pass is cut short


def test_a_shorter_time_budget_lowers_a_small_collections_steps_to_what_it_buys():
    two, _, plan = resolved(300, GRAYSCALE_28, minutes=2)
    assert two.steps == int(2 * 60 / recipe.REFERENCE_STEP_SECONDS) == 340
    assert plan.why.startswith("what encoder.minutes=2 buys: 340 steps")
    assert resolved(60_000, GRAYSCALE_28, minutes=2)[0].steps == recipe.REFERENCE_STEPS  # passes are not cut
    with pytest.raises(SettingsError):
        load_settings({"encoder.minutes": 0})


def test_a_costlier_backbone_gets_fewer_steps():
    cheap = resolved(60_000, GRAYSCALE_28)[0].steps
    wide = resolved(60_000, GRAYSCALE_28, width=0.5)[0].steps
    cost = forward_flops("resnet-9", 0.5, 28) / forward_flops("resnet-9", 0.25, 28)
    assert cost > 3 and wide == round(recipe.REFERENCE_STEPS / cost) < cheap


def test_the_budget_is_deterministic_and_keyed():
    first = encoder_key(load_settings().encoder, Dataset(300, GRAYSCALE_28))
    assert first == encoder_key(load_settings().encoder, Dataset(300, GRAYSCALE_28))
    assert first != encoder_key(load_settings().encoder, Dataset(60_000, GRAYSCALE_28))  # another budget
    # the key is made from what is trained: auto and the steps it chose spelled out share it
    assert first == encoder_key(load_settings({"encoder.steps": 600}).encoder, Dataset(300, GRAYSCALE_28))
    assert first == encoder_key(load_settings({"encoder.minutes": 9}).encoder, Dataset(300, GRAYSCALE_28))
    two = encoder_key(load_settings({"encoder.minutes": 2}).encoder, Dataset(300, GRAYSCALE_28))
    assert two == encoder_key(load_settings({"encoder.steps": 340}).encoder, Dataset(300, GRAYSCALE_28)) != first
    # epochs are turned into the steps they mean
    assert encoder_key(load_settings({"encoder.epochs": 600}).encoder, Dataset(300, GRAYSCALE_28)) == first


def test_explicit_length_wins_and_both_at_once_is_refused():
    assert resolved(60_000, GRAYSCALE_28, steps=40)[0].steps == 40
    assert resolved(60_000, GRAYSCALE_28, epochs=2)[0].steps == 2 * 234
    assert resolved(60_000, GRAYSCALE_28, epochs=0)[0].steps == 0
    with pytest.raises(SettingsError, match="keep one"):
        load_settings({"encoder.steps": 10, "encoder.epochs": 2})


def test_grayscale_28px_trains_at_its_own_size():
    section, why, _ = resolved(10_000, GRAYSCALE_28)
    assert (section.input_size, section.width, section.batch_size) == (28, 0.25, 256)
    assert "28 px" in why["input_size"]


def test_aligned_images_are_read_out_on_a_grid_and_photos_by_one_average():
    aligned, why, _ = resolved(10_000, GRAYSCALE_28)
    assert aligned.pooling == "grid" and "34%" in why["pooling"]
    assert aligned.grid_cells == 3 and "3x3 cells of the 4x4 last map" in why["grid_cells"]
    small = resolved(10_000, GRAYSCALE_28, input_size=16)
    assert small[0].grid_cells == 2 and "the whole 2x2 last map at 16 px" in small[1]["grid_cells"]
    assert resolved(10_000, GRAYSCALE_28, grid_cells=2)[0].grid_cells == 2  # explicit wins
    photos, why, _ = resolved(1_872, PHOTOS)
    assert photos.pooling == "avg" and "framing varies" in why["pooling"]
    unprofiled = {k: v for k, v in GRAYSCALE_28.items() if not k.startswith("layout")}  # a manifest from before layout
    assert resolved(10_000, unprofiled)[0].pooling == "avg"
    assert resolved(10_000, GRAYSCALE_28, pooling="avg")[0].pooling == "avg"  # explicit wins
    assert resolved(10_000, GRAYSCALE_28, backbone="resnet18")[0].pooling == "avg"  # torchvision pools its own way


def test_pooling_is_keyed_only_when_it_is_a_grid():
    def key(profile, **sets):
        return encoder_key(load_settings({f"encoder.{k}": v for k, v in sets.items()}).encoder, Dataset(300, profile))

    assert key(GRAYSCALE_28) == key(GRAYSCALE_28, pooling="grid") != key(GRAYSCALE_28, pooling="avg")
    # an avg read-out keeps the keys of encoders from before pooling was a setting
    assert "pooling" not in load_settings({"encoder.pooling": "avg"}).encoder.key_fields()
    assert load_settings({"encoder.pooling": "grid"}).encoder.key_fields()["pooling"] == "grid"
    # the grid's cells change what is trained and indexed, and only a grid has them
    assert key(GRAYSCALE_28, grid_cells=2) != key(GRAYSCALE_28) == key(GRAYSCALE_28, grid_cells=3)
    assert key(PHOTOS) == key(PHOTOS, grid_cells=2)
    assert resolved(10_000, GRAYSCALE_28)[0].key_fields()["grid_cells"] == 3
    assert "grid_cells" not in load_settings({"encoder.pooling": "avg"}).encoder.key_fields()


def test_a_grid_is_refused_where_it_cannot_apply():
    with pytest.raises(SettingsError, match="small-image ResNets"):
        load_settings({"encoder.pooling": "grid", "encoder.backbone": "resnet18"})
    with pytest.raises(SettingsError, match="distill"):
        load_settings({"encoder.pooling": "grid", "encoder.method": "distill", "encoder.teacher": "x.pt"})


def test_rgb_photos_are_fitted_down():
    section, why, _ = resolved(1_872, PHOTOS)
    assert section.input_size == recipe.PHOTO_INPUT_SIZE
    assert "480 px" in why["input_size"]


def test_a_small_collection_trains_in_one_batch():
    section, why, _ = resolved(100, PHOTOS)
    assert section.batch_size == 100 and "whole collection" in why["batch_size"]


def test_explicit_settings_win_over_the_recipe():
    section, why, _ = resolved(1_872, PHOTOS, input_size=64, width=0.5, batch_size=64)
    assert (section.input_size, section.width, section.batch_size) == (64, 0.5, 64)
    assert set(why) == {"steps", "pooling"}  # only the length and the read-out were chosen


def test_a_torchvision_backbone_keeps_its_width_and_an_imagenet_input():
    section, _, _ = resolved(1_872, PHOTOS, backbone="resnet18")
    assert section.width == 1.0 and section.input_size == 224
    assert resolved(1_872, GRAYSCALE_28, backbone="resnet18")[0].input_size == 64


def test_a_collection_the_dataset_stage_did_not_profile_gets_the_photo_defaults():
    section, why, _ = resolve(load_settings().encoder, type("D", (), {"stats": {"n_images": 500}, "key": "d"})())
    assert section.input_size == recipe.PHOTO_INPUT_SIZE and "no size profile" in why["input_size"]
