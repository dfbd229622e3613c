"""PCA whitening learned from the indexed vectors, carried inside the FAISS index.

Self-supervised features are anisotropic: a few directions of large variance (often nuisances
such as brightness or scale) dominate distances. PCA whitening (Jégou & Chum, ECCV 2012) rotates
the vectors onto their principal axes and divides each axis by a power of its spread, then the
vectors are L2-normalised, so neighbours are ranked by cosine in the whitened space:

    x -> normalize( diag(lambda + eps) ** (-whitening / 2) @ P^T @ (x - mean) )

`whitening` is 0 (off), 1 (full whitening: every axis at unit variance) or in between; 0.5 is
square-root whitening, which measured best on every collection in benchmarks/README.md (full
whitening also amplifies the noise axes of small collections). `eps` is 1 % of the mean
eigenvalue, so axes the collection never uses (dead channels, constant pixels) stay at zero
instead of dividing by zero.

It is FAISS's own machinery: a trained `PCAMatrix` (its `eigen_power` and `epsilon`) and a
`NormalizationTransform`, put in front of the index with `IndexPreTransform`, so the
serialized index carries the transform and every search through it (evaluation, serving) is
whitened the same way without the caller knowing. The evaluation's baselines are whitened by
the same rule on their own vectors, so a gain over them is the encoder's, not the whitening's.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from lookalike.stages.sampling import seeded_sample

MIN_VECTORS = 100  # fewer cannot estimate a covariance worth trusting: left unwhitened, and the stats say so
TRAIN_SAMPLE = 100_000
EPSILON = 0.01  # of the mean eigenvalue, added to every eigenvalue before the power


@dataclass(frozen=True)
class Whitening:
    """A fitted whitening (or none) and the one-line reason for the manifest."""

    chain: tuple[faiss.VectorTransform, ...]
    power: float
    why: str

    @property
    def applied(self) -> bool:
        return bool(self.chain)

    @property
    def dim(self) -> int | None:
        return self.chain[-1].d_out if self.chain else None

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d) float32 -> the whitened, L2-normalised (n, dim) vectors (unchanged when not applied)."""
        out = np.ascontiguousarray(vectors, dtype=np.float32)
        for transform in self.chain:
            out = transform.apply(out)
        return out

    def apply_in_place(self, vectors: np.ndarray, chunk: int = 16_384) -> np.ndarray:
        """`apply`, written over `vectors` (float32, C-contiguous, dim columns) `chunk` rows at a time: no
        whole-array temporaries (at 50,000 x 2,352 pixel vectors each is 470 MB). Returns `vectors`."""
        if not self.applied:
            return vectors
        if vectors.dtype != np.float32 or not vectors.flags.c_contiguous or vectors.shape[1] != self.dim:
            raise ValueError(f"apply_in_place needs C-contiguous float32 vectors of {self.dim} dims")
        for start in range(0, len(vectors), chunk):
            vectors[start : start + chunk] = self.apply(vectors[start : start + chunk])
        return vectors

    def wrap(self, index: faiss.Index) -> faiss.Index:
        """`index` (built over whitened vectors) behind the whitening, so it takes raw vectors."""
        if not self.applied:
            return index
        wrapped = faiss.IndexPreTransform(index)
        for transform in reversed(self.chain):
            wrapped.prepend_transform(transform)
        return wrapped

    def stats(self) -> dict:
        return {"power": self.power, "applied": self.applied, "dim": self.dim, "why": self.why}


def fit_whitening(vectors: np.ndarray, power: float) -> Whitening:
    """Learn the whitening of `vectors` (n, d) float32 at `power` (0 = off, 0.5 = square root, 1 = full)."""
    n = len(vectors)
    return fit_whitening_sample(vectors if n <= TRAIN_SAMPLE else vectors[training_rows(n)], n, power)


def training_rows(n: int) -> np.ndarray:
    """Positions (sorted) of the vectors a whitening of `n` vectors is learned from: a seeded sample of at
    most TRAIN_SAMPLE, so a caller can read just those rows of a collection too large to hold."""
    return seeded_sample(n, TRAIN_SAMPLE)


def fit_whitening_sample(sample: np.ndarray, n: int, power: float) -> Whitening:
    """`fit_whitening` of `n` vectors from their `training_rows(n)` alone (`sample`, in that order)."""
    d = sample.shape[1]
    if power == 0:
        return Whitening((), power, "off (index.whitening=0)")
    if n < MIN_VECTORS:
        return Whitening((), power, f"skipped: {n} vectors are too few to estimate a covariance (< {MIN_VECTORS})")
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    d_out = min(d, len(sample))  # FAISS's PCA gives at most one axis per training vector
    pca = faiss.PCAMatrix(d, d_out, -power / 2, False)
    pca.train(sample)
    # FAISS's eigenvalues are the scatter matrix's (n x the covariance's): epsilon is taken on that scale,
    # after training, and the transform rebuilt with it. Vectors of lower rank than d (a projection into
    # more dims than it has inputs) leave eigenvalues a rounding error below zero, which epsilon lifts.
    eigenvalues = faiss.vector_to_array(pca.eigenvalues)
    pca.epsilon = float(EPSILON * eigenvalues[eigenvalues > 0].mean()) if (eigenvalues > 0).any() else 1.0
    pca.prepare_Ab()
    kind = "full" if power == 1 else "square-root" if power == 0.5 else f"power {power:g}"
    why = f"{kind} PCA whitening learned from {len(sample)} vectors, {d} -> {d_out} dims, then L2-normalised"
    return Whitening((pca, faiss.NormalizationTransform(d_out, 2.0)), power, why)
