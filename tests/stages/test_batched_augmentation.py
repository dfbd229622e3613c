"""Batched augmentation: kornia views read from each method's lightly transform."""

import kornia.augmentation as K
import numpy as np
import pytest
import torch
from lightly.transforms import SimCLRTransform
from lightly.transforms.multi_view_transform import MultiViewTransform
from lightly.transforms.rotation import RandomRotateDegrees
from lightly.transforms.solarize import RandomSolarization
from lightly.transforms.torchvision_v2_compatibility import ToTensor
from lightly.transforms.torchvision_v2_compatibility import torchvision_transforms as T
from PIL import Image

from lookalike.core.errors import LookalikeError
from lookalike.core.names import METHOD_NAMES
from lookalike.core.settings import SettingsError, load_settings
from lookalike.stages.dataset.torch_data import ResizeToTensor
from lookalike.stages.encoder.backbones import build_backbone
from lookalike.stages.encoder.methods import MethodOptions, build_method
from lookalike.stages.encoder.methods.batched import BatchedViews, kornia_op
from lookalike.stages.encoder.methods.normalize import IMAGENET_NORMALIZE
from lookalike.stages.encoder.pretrained import Init


def method(name: str, size: int = 28, crop_min_scale=None):
    backbone, dim = build_backbone("resnet-9", size, 0.25)
    teacher = Init.of_module(build_backbone("resnet-9", size, 0.5)[0], "resnet-9", 0.5) if name == "distill" else None
    options = MethodOptions(size, epochs=2, crop_min_scale=crop_min_scale, teacher=teacher)
    return build_method(name, backbone, dim, options)


def image(seed: int = 0, size: int = 28) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_batched_views_have_the_shapes_and_count_of_lightlys_views(name):
    m = method(name, 32)
    per_image = m.transform(image(size=32))
    batch = torch.stack([ResizeToTensor(32)(image(i, 32)) for i in range(5)])
    batched = BatchedViews(m.transform)(batch)
    assert [tuple(v.shape[1:]) for v in batched] == [tuple(v.shape) for v in per_image]
    assert all(v.shape[0] == 5 and v.dtype == torch.float32 for v in batched)


def test_crop_scale_and_jitter_ranges_are_read_from_lightly_not_restated():
    simclr = BatchedViews(method("simclr", crop_min_scale=0.3).transform)
    crop, _flip, jitter, _gray, _norm = simclr.views[0]
    assert tuple(crop._param_generator.scale) == (0.3, 1.0)
    # lightly's cj_strength=0.5 scales its 0.8 brightness to 0.4: torchvision stores (0.6, 1.4)
    assert tuple(jitter._param_generator.brightness) == pytest.approx((0.6, 1.4))
    assert jitter.p == pytest.approx(0.8)
    dino = BatchedViews(method("dino", crop_min_scale=0.3).transform)
    local_crop = dino.views[2][0]._param_generator
    assert (tuple(local_crop.output_size), tuple(local_crop.scale)) == ((14, 14), (0.05, 0.3))


def test_identity_view_equals_lightlys_tensor_and_normalisation():
    """With every random op made an identity, kornia's view is lightly's ToTensor + Normalize."""
    view = T.Compose(
        [
            T.RandomResizedCrop(size=28, scale=(1.0, 1.0), ratio=(1.0, 1.0)),
            T.RandomHorizontalFlip(p=0.0),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.0),
            T.RandomGrayscale(p=0.0),
            RandomSolarization(prob=0.0),
            ToTensor(),
            T.Normalize(mean=IMAGENET_NORMALIZE["mean"], std=IMAGENET_NORMALIZE["std"]),
        ]
    )
    transform = MultiViewTransform([view])
    images = [image(i) for i in range(4)]
    expected = torch.stack([transform(im)[0] for im in images])
    got = BatchedViews(transform)(torch.stack([ResizeToTensor(28)(im) for im in images]))[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_solarization_inverts_the_same_pixels_as_lightlys():
    ramp = Image.fromarray(np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2))
    expected = T.PILToTensor()(RandomSolarization(prob=1.0, threshold=128)(ramp)).float() / 255
    op = kornia_op(RandomSolarization(prob=1.0, threshold=128))
    got = op(T.PILToTensor()(ramp).float().unsqueeze(0) / 255)[0]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_every_image_in_a_batch_gets_its_own_random_crop():
    torch.manual_seed(0)
    batch = ResizeToTensor(28)(image()).unsqueeze(0).repeat(16, 1, 1, 1)
    view = BatchedViews(SimCLRTransform(input_size=28, cj_prob=0.0, random_gray_scale=0.0, gaussian_blur=0.0))(batch)[0]
    distinct = {tuple(v.flatten()[:50].tolist()) for v in view}
    assert len(distinct) == 16


def test_same_seed_same_views():
    batch = torch.stack([ResizeToTensor(28)(image(i)) for i in range(8)])
    views = BatchedViews(method("dino").transform)
    torch.manual_seed(3)
    first = views(batch)
    torch.manual_seed(3)
    second = views(batch)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_rotation_by_degrees_maps_to_kornias_with_lightlys_range_and_probability():
    """lightly's RandomRotateDegrees (SimCLRTransform's rr_degrees) keeps its angle range and
    probability inside a torchvision RandomApply; the kornia op takes both from there."""
    views = BatchedViews(SimCLRTransform(input_size=28, gaussian_blur=0.0, rr_prob=0.4, rr_degrees=15))
    (rotation,) = [op for op in views.views[0] if isinstance(op, K.RandomRotation)]
    assert tuple(rotation._param_generator.degrees.tolist()) == (-15.0, 15.0)
    assert rotation.p == pytest.approx(0.4)
    assert kornia_op(RandomRotateDegrees(prob=0.0, degrees=15)) is None


def test_an_op_without_a_kornia_equivalent_is_a_clear_error():
    with pytest.raises(LookalikeError, match="no kornia equivalent for RandomPosterize.*augmentation=per-image"):
        kornia_op(T.RandomPosterize(bits=2))


def test_dino_crop_min_scale_must_leave_room_for_local_crops():
    with pytest.raises(SettingsError, match="crop_min_scale=0.05 leaves dino's local crops"):
        load_settings({"encoder.method": "dino", "encoder.crop_min_scale": 0.05})
    assert load_settings({"encoder.method": "simclr", "encoder.crop_min_scale": 0.05}).encoder.crop_min_scale == 0.05


@pytest.mark.parametrize("name", ["simclr", "dino", "byol"])
def test_no_colour_jitter_drops_the_colour_ops_of_every_method(name):
    """colour_jitter=0 (the recipe's choice for grayscale collections) leaves no colour jitter and no
    random grayscale in any view; the colour default keeps both."""
    backbone, dim = build_backbone("resnet-9", 28, 0.25)

    def colour_ops(strength: float) -> set[str]:
        views = BatchedViews(build_method(name, backbone, dim, MethodOptions(28, 2, colour_jitter=strength)).transform)
        return {
            type(op).__name__
            for view in views.views
            for op in view
            if "Jiggle" in type(op).__name__ or "Gray" in type(op).__name__
        }

    assert colour_ops(0.0) == set()
    assert colour_ops(0.5) == {"ColorJiggle", "RandomGrayscale"}
