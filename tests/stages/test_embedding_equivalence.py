"""The embedding optimisations change no vector beyond float rounding.

The embeddings stage reads a batch's rows at once, moves uint8 batches, normalises whole
batches, runs channels_last and folds batch norms into convolutions. Each is checked here
against the plain way: one image at a time through torchvision transforms and the unfolded
NCHW model.
"""

import copy
import io
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import TINY
from PIL import Image
from torch import nn
from torchvision import transforms

from lookalike.stages.dataset.stage import open_snapshot, run_dataset_stage
from lookalike.stages.dataset.torch_data import ResizeToTensor, SnapshotImages
from lookalike.stages.embeddings.shards import load_embeddings
from lookalike.stages.embeddings.stage import run_embeddings_stage
from lookalike.stages.encoder.backbones import build_backbone
from lookalike.stages.encoder.checkpoint import load_encoder
from lookalike.stages.encoder.stage import run_encoder_stage
from lookalike.stages.inference import fold_batch_norms, inference_model

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """dataset and a random-init encoder (pretraining would triple the time; the folding tests
    below give the batch norms trained-looking statistics)."""
    from lookalike.core.settings import load_settings

    root = tmp_path_factory.mktemp("equivalence") / "artifacts"
    settings = load_settings({**TINY, "artifacts_root": str(root), "encoder.epochs": 0, "embeddings.reuse": False})
    dataset = run_dataset_stage(settings.dataset, root).manifest
    encoder = run_encoder_stage(settings.encoder, dataset, root).manifest
    return settings, root, dataset, encoder


def embed_with_stage(stages, **changes) -> np.ndarray:
    settings, root, dataset, encoder = stages
    shutil.rmtree(root / "embeddings", ignore_errors=True)
    result = run_embeddings_stage(settings.embeddings.model_copy(update=changes), dataset, encoder, root)
    assert result.status == "computed"
    return load_embeddings(root, result.manifest)[0]


def embed_one_by_one(stages) -> np.ndarray:
    """The naive way: PIL decode, torchvision Compose, the unfolded model in NCHW, float32, no batching."""
    _, root, dataset, encoder = stages
    model, spec = load_encoder(root, encoder)
    model.eval()
    transform = transforms.Compose(
        [
            transforms.Resize(spec.input_size),
            transforms.CenterCrop(spec.input_size),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )
    vectors = []
    with torch.no_grad():
        for row in open_snapshot(root, dataset):
            image = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
            vectors.append(model(transform(image)[None]).flatten(1)[0].numpy())
    return np.stack(vectors)


def test_stage_vectors_equal_a_naive_per_image_nchw_loop(stages):
    stored = embed_with_stage(stages)
    naive = embed_one_by_one(stages)
    assert stored.shape == naive.shape
    np.testing.assert_allclose(stored, naive, rtol=0, atol=TOLERANCE)


def test_channels_last_and_contiguous_layouts_give_the_same_vectors(stages):
    channels_last = embed_with_stage(stages, channels_last=True)
    contiguous = embed_with_stage(stages, channels_last=False)
    np.testing.assert_allclose(channels_last, contiguous, rtol=0, atol=TOLERANCE)


def test_a_batch_read_at_once_equals_its_rows_read_one_by_one(stages):
    _, root, dataset, _ = stages
    images = SnapshotImages(open_snapshot(root, dataset), ResizeToTensor(16))
    indices = [5, 0, 17, 5]  # shuffled, repeated: as a pretraining sampler may ask
    batch = images.__getitems__(indices)
    assert len(batch) == len(indices)
    for got, i in zip(batch, indices):
        assert torch.equal(got, images[i])


def _with_running_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with the non-trivial statistics a trained model has (fresh ones are 0 and 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return model.eval()


def _backbones():
    """The default encoder in both layouts, and a torchvision family with other blocks (SE, hardswish)."""
    from lookalike.core import recipe
    from lookalike.core.settings import load_settings

    default = load_settings().encoder
    width = recipe.WIDTH if default.width == recipe.AUTO else default.width  # what auto gives a small-image ResNet
    return [(default.backbone, width, True), (default.backbone, width, False), ("mobilenet_v3_small", 1.0, True)]


@pytest.mark.parametrize("backbone, width, channels_last", _backbones())
def test_folded_batch_norms_give_the_eager_models_features(backbone, width, channels_last):
    args = (backbone, 32) if width == 1.0 else (backbone, 32, width)
    model = _with_running_statistics(build_backbone(*args)[0])
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    folded = inference_model(copy.deepcopy(model), torch.device("cpu"), channels_last)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with torch.inference_mode():
        got = folded(x.contiguous(memory_format=layout))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=TOLERANCE, atol=TOLERANCE)


class _SharedOutput(nn.Module):
    """A convolution whose raw output is also used past its batch norm: folding would change that use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _ValueDependent(nn.Module):
    """Python control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


@pytest.mark.parametrize("cls", [_SharedOutput, _ValueDependent])
def test_batch_norms_that_cannot_be_folded_are_left_in_place(cls):
    model = _with_running_statistics(cls())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x)
        folded = fold_batch_norms(copy.deepcopy(model))
        got = folded(x)
    assert any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-6)


def test_a_model_in_training_mode_is_not_folded():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(_SharedOutput().train())


def test_auto_decodes_a_large_collection_in_worker_processes_with_the_same_vectors(stages):
    settings, root, dataset, encoder = stages
    in_process = embed_with_stage(stages, num_workers=0)
    # the same 48 images, profiled as 100-megapixel photos: auto starts a decode worker per core
    photos = {**dataset.stats, "profile": {"width": {"median": 12000}, "height": {"median": 9000}}}
    shutil.rmtree(root / "embeddings", ignore_errors=True)
    section = settings.embeddings.model_copy(update={"num_workers": "auto"})
    result = run_embeddings_stage(section, dataset.model_copy(update={"stats": photos}), encoder, root)
    cores = len(os.sched_getaffinity(0))
    assert result.manifest.stats["decode_workers"] == (cores if cores > 1 else 0)
    np.testing.assert_array_equal(load_embeddings(root, result.manifest)[0], in_process)


def test_auto_starts_decode_workers_only_where_they_repay_their_start():
    from helpers import SAMPLE_STATS

    from lookalike.stages.dataset.torch_data import decode_workers

    assert decode_workers("auto", 3000, SAMPLE_STATS) == 0  # 28 px images: decoded before workers would start
    assert decode_workers("auto", 1_000_000, SAMPLE_STATS) > 0 or len(os.sched_getaffinity(0)) == 1
    assert decode_workers(3, 10, SAMPLE_STATS) == 3  # a number is taken as it is


@pytest.fixture(scope="module")
def camera_jpeg() -> bytes:
    """A 2000x1500 JPEG with detail at every scale, so a draft decode differs from a full one."""
    pixels = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_the_embeddings_stage_decodes_a_jpeg_only_as_large_as_its_input_size_needs(stages, camera_jpeg):
    from datasets import Dataset

    from lookalike.stages.dataset.images import decode_rgb
    from lookalike.stages.dataset.torch_data import FittedImages
    from lookalike.stages.inference import Embedder

    _, root, _, encoder = stages
    embedder = Embedder(root, encoder)
    size = embedder.spec.input_size
    snapshot = Dataset.from_dict({"image": [{"bytes": camera_jpeg, "path": None}]})
    drafted = decode_rgb(camera_jpeg, 10**8, draft_to=2 * size)
    assert drafted.size == (250, 188)  # 1/8 scale: both sides still >= twice the input size
    batch = next(iter(embedder.loader(snapshot, batch_size=1)))
    assert torch.equal(batch[0], embedder.resize(drafted))
    assert not torch.equal(batch[0], embedder.resize(decode_rgb(camera_jpeg, 10**8)))  # not a full decode
    # the encoder's in-memory training set decodes the same way
    assert torch.equal(FittedImages(snapshot, size).pixels[0], batch[0])
