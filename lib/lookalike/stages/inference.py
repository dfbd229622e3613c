"""The one inference path: an encoder checkpoint turned into vectors, the same way wherever it runs.

The embeddings stage (`lookalike.stages.embeddings`), the evaluation's held-out queries and served
queries (`lookalike.serving.query`) all embed through `Embedder`: the same device choice, resize,
normalisation, batch-norm folding and memory layout, so a served query vector equals the stored
vector of the same image up to float rounding (tests/serving/test_query.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lookalike.core.manifest import Manifest
from lookalike.core.progress import progress
from lookalike.stages.dataset.torch_data import ResizeToTensor, SnapshotImages, worker_context
from lookalike.stages.device import default_device
from lookalike.stages.encoder.backbones import with_pooling
from lookalike.stages.encoder.checkpoint import EncoderSpec, load_encoder


class Embedder:
    """A finished encoder stage loaded once (after its sha256 check), ready for inference.

    Args:
        root: the artifacts root holding the encoder stage.
        encoder: the encoder stage's manifest.
        channels_last: run convolutions in channels_last layout (faster on CPU; float rounding only).
        device: where to run; the first CUDA device when there is one, else the CPU.
    """

    def __init__(
        self, root: Path | str, encoder: Manifest, *, channels_last: bool = True, device: torch.device | None = None
    ) -> None:
        model, spec = load_encoder(Path(root), encoder)
        self._take(model, spec, channels_last, device)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        spec: EncoderSpec,
        *,
        channels_last: bool = True,
        device: torch.device | None = None,
    ) -> Embedder:
        """An encoder that is not a finished stage (an evaluation baseline), run the same way. Takes over `model`."""
        embedder = cls.__new__(cls)
        embedder._take(model, spec, channels_last, device)
        return embedder

    def _take(
        self, model: torch.nn.Module, spec: EncoderSpec, channels_last: bool, device: torch.device | None
    ) -> None:
        self.spec = spec
        self.device = device or default_device()
        self.channels_last = channels_last
        self.model = inference_model(with_pooling(model, spec.pooling, spec.grid_cells), self.device, channels_last)
        self.resize = ResizeToTensor(spec.input_size)

    @property
    def dim(self) -> int:
        return self.spec.feature_dim

    def embed_pixels(self, batch: torch.Tensor) -> np.ndarray:
        """(N, H, W, 3) uint8 images already fitted to the input size -> (N, dim) float32 vectors."""
        x = normalize_batch(batch, self.spec, self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return embed_batch(self.model, x, self.device)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Decoded images of any size and mode -> (N, dim) float32 vectors, in order."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_pixels(torch.stack([self.resize(image.convert("RGB")) for image in images]))

    def loader(
        self,
        snapshot,
        *,
        batch_size: int | None = None,
        batch_sampler: Iterable[list[int]] | None = None,
        num_workers: int = 0,
    ) -> DataLoader:
        """Batches of a snapshot's rows as (N, H, W, 3) uint8, decoded in `num_workers` processes, a JPEG
        only as large as the fit to the input size needs (`SnapshotImages.fitted`: as served queries are)."""
        return DataLoader(
            SnapshotImages.fitted(snapshot, self.resize.size),
            batch_size=batch_size if batch_sampler is None else 1,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            multiprocessing_context=worker_context(num_workers),
            pin_memory=self.device.type == "cuda",
        )

    def embed_snapshot(self, snapshot, *, batch_size: int = 256, desc: str = "embedding") -> np.ndarray:
        """Vectors (n, dim) float32 of every row of an opened snapshot, in row order, in memory
        (for images that are not indexed, such as the evaluation's held-out queries)."""
        vectors = []
        with progress(len(snapshot), desc, unit="img") as bar:
            for batch in self.loader(snapshot, batch_size=batch_size):
                vectors.append(self.embed_pixels(batch))
                bar.update(len(batch))
        return np.concatenate(vectors) if vectors else np.zeros((0, self.dim), np.float32)


def normalize_batch(batch: torch.Tensor, spec: EncoderSpec, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> normalised float (N, 3, H, W) in channels_last layout.

    permute() of NHWC data already has channels_last strides, so no copy is made for it.
    """
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def inference_model(model: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """The encoder as embedding runs it: eval mode, batch norms folded into their convolutions
    (`fold_batch_norms`), on `device`, in channels_last layout when asked. Takes over `model`."""
    model = fold_batch_norms(model.eval())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format)


def fold_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode model with every batch norm that only follows a convolution folded into
    it, by torch.fx's own inference fusion (`torch.fx.experimental.optimization.fuse`).

    In eval mode a batch norm is a fixed per-channel scale and shift, so it can live in the
    convolution's weights and bias: one pass over each activation fewer. On one CPU thread that
    made the forward pass 6 % faster for ResNet-18 at 32 px and 8-17 % for lightly's ResNet-9
    and ResNet-50, whose activation maps are larger; vectors change by float rounding only
    (tests/test_embedding_equivalence.py). Fused in place: `model` must not be used after.
    A model torch.fx cannot trace (control flow on tensor values) comes back unchanged.
    """
    from torch.fx.experimental.optimization import fuse

    if model.training:
        raise ValueError("batch norms fold only in eval mode: in training they normalise with each batch's statistics")
    with _TRACING.exclusive():
        try:
            return fuse(model, inplace=True)
        except Exception:  # tracing fails in many ways (TraceError, TypeError, ...); unfolded is still right
            return model


def embed_batch(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> np.ndarray:
    with _TRACING.shared(), torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
        return model(x).flatten(1).float().cpu().numpy()


class _TraceGuard:
    """Keeps forward passes and torch.fx tracing apart, process-wide.

    While fx traces a model it replaces `torch.nn.Module.__call__` for the whole process, so a
    forward pass in another thread (a server answering queries while it loads the index an alias
    moved to) fails inside fx ("module is not installed as a submodule"). Forward passes share
    the guard; a trace waits for those running to end and holds new ones back until it is done.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._forwards = 0
        self._traces_waiting = 0
        self._tracing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._tracing and not self._traces_waiting)
            self._forwards += 1
        try:
            yield
        finally:
            with self._changed:
                self._forwards -= 1
                self._changed.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._changed:
            self._traces_waiting += 1
            self._changed.wait_for(lambda: not self._tracing and not self._forwards)
            self._traces_waiting -= 1
            self._tracing = True
        try:
            yield
        finally:
            with self._changed:
                self._tracing = False
                self._changed.notify_all()


_TRACING = _TraceGuard()
