"""Backbones: lightly's small-image ResNets with a width multiplier, and channels_last training."""

import pytest
import torch

from lookalike.core.names import SMALL_IMAGE_RESNETS, check_backbone_name
from lookalike.core.settings import SettingsError, load_settings
from lookalike.stages.encoder.backbones import LEGACY_GRID_CELLS, build_backbone, with_pooling
from lookalike.stages.encoder.checkpoint import EncoderSpec, load_encoder_file, save_encoder
from lookalike.stages.encoder.methods import MethodOptions, build_method


@pytest.mark.parametrize("size", [8, 14, 28, 32])
def test_small_image_resnet_takes_any_input_size_and_width_scales_features(size):
    narrow, dim = build_backbone("resnet-9", size, width=0.25)
    wide, wide_dim = build_backbone("resnet-9", size, width=0.5)
    assert (dim, wide_dim) == (128, 256)
    with torch.no_grad():
        assert narrow(torch.randn(3, 3, size, size)).shape == (3, 128)


def test_small_image_resnet_keeps_lightlys_layers_and_stem_activation():
    """Same parameters as lightly's ResNetGenerator, and its forward up to the classifier."""
    from lightly.models import ResNetGenerator

    torch.manual_seed(0)
    ours, _ = build_backbone("resnet-9", 32, width=0.25)
    theirs = ResNetGenerator("resnet-9", width=0.25).eval()
    theirs.load_state_dict(
        {**ours.state_dict(), **{k: v for k, v in theirs.state_dict().items() if k.startswith("linear")}}
    )
    theirs.linear = torch.nn.Identity()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_width_on_a_torchvision_backbone_is_one_clear_settings_error():
    with pytest.raises(SettingsError, match="width=0.5 scales lightly's small-image ResNets"):
        load_settings({"encoder.backbone": "resnet18", "encoder.width": 0.5})
    with pytest.raises(ValueError, match="unknown torchvision backbone 'resnet-7'"):
        check_backbone_name("resnet-7")
    assert set(SMALL_IMAGE_RESNETS) >= {"resnet-9", "resnet-18"}


def test_checkpoint_records_width_and_rebuilds_the_same_encoder(tmp_path):
    model, dim = build_backbone("resnet-18", 28, width=0.125)
    spec = EncoderSpec(
        architecture="resnet-18",
        width=0.125,
        feature_dim=dim,
        input_size=28,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        method="simclr",
    )
    save_encoder(tmp_path / "encoder.pt", model, spec)
    loaded, loaded_spec = load_encoder_file(tmp_path / "encoder.pt")
    assert loaded_spec.width == 0.125
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_a_grid_read_out_keeps_where_things_are_and_embeds_the_same_through_the_inference_path(tmp_path):
    from lookalike.stages.inference import Embedder

    model, dim = build_backbone("resnet-9", 28, width=0.25)
    spec = EncoderSpec(
        architecture="resnet-9",
        width=0.25,
        feature_dim=dim * 16,
        input_size=28,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        method="simclr",
        pooling="grid",
        grid_cells=4,
    )
    save_encoder(tmp_path / "encoder.pt", model, spec)
    loaded, loaded_spec = load_encoder_file(tmp_path / "encoder.pt")
    x = torch.rand(3, 3, 28, 28)
    x[1] = x[0].flip(2)  # the same image mirrored: one average cannot tell, the grid can
    with torch.no_grad():
        grid = loaded(x)
        avg = with_pooling(model.eval(), "avg")(x)
    assert (loaded_spec.pooling, loaded_spec.grid_cells) == ("grid", 4)
    assert grid.shape == (3, 16 * dim) and avg.shape == (3, dim)
    # each channel's 16 cells average to its global average
    torch.testing.assert_close(grid.view(3, dim, 16).mean(2), avg)
    assert not torch.allclose(grid[0], grid[1], atol=1e-4)
    # the one inference path (batch norms folded by torch.fx) reads out the grid the spec names
    pixels = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    embedded = Embedder.from_model(with_pooling(model, "avg"), spec, device=torch.device("cpu")).embed_pixels(pixels)
    with torch.no_grad():
        expected = loaded((pixels.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5)
    assert embedded.shape == (3, 16 * dim)
    torch.testing.assert_close(torch.from_numpy(embedded), expected, atol=1e-4, rtol=1e-3)
    # a grid checkpoint from before grid_cells was recorded is read out on its 2x2 grid
    legacy = spec.model_copy(update={"grid_cells": None, "feature_dim": dim * LEGACY_GRID_CELLS**2})
    save_encoder(tmp_path / "legacy.pt", model, legacy)
    with torch.no_grad():
        assert load_encoder_file(tmp_path / "legacy.pt")[0](x).shape == (3, 4 * dim)
    with pytest.raises(ValueError, match="small-image ResNets only"):
        build_backbone("resnet18", 64, pooling="grid")


def test_checkpoints_from_before_width_load_as_width_one():
    spec = EncoderSpec.model_validate(
        {
            "architecture": "resnet18",
            "feature_dim": 512,
            "input_size": 32,
            "mean": (0, 0, 0),
            "std": (1, 1, 1),
            "method": "dino",
            "format": 1,
        }
    )
    assert spec.width == 1.0


@pytest.mark.parametrize("method", ["simclr", "dino"])
def test_channels_last_training_step_matches_contiguous(method):
    """The layout is a speed choice: loss and gradients agree with NCHW to float rounding."""
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        backbone, dim = build_backbone("resnet-9", 16, width=0.125)
        model = build_method(method, backbone, dim, MethodOptions(16, epochs=1)).to(memory_format=layout).train()
        torch.manual_seed(1)
        views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
        if method == "dino":
            views += [torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)]
        loss = model.training_loss([v.contiguous(memory_format=layout) for v in views], 0, 0.0)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((loss.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-4, rtol=1e-3)
