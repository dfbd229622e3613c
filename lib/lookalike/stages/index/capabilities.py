"""What an index type can be asked safely, decided from its FAISS type before anything is called.

FAISS declares range search and search parameters (ID selectors) on every index, and a type without
them fails only when called: most raise a RuntimeError, but HNSW's range search (faiss-cpu 1.15.1)
terminates the whole process once one call holds more queries than FAISS's interrupt-check period,
1e8 / (levels x dim x efSearch): it allocates the result once per period, and the second allocation
throws inside an OpenMP region, where nothing can catch it (issue 44). So callers ask here first and
never try-and-catch: only the types named below get these operations, every other type (HNSW,
NSG, LSH, fast-scan PQ without IVF, additive quantizers, whatever a raw factory string builds) gets
the fallback its caller has, the nearest neighbours cut at a threshold or an over-fetched search.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss


@dataclass(frozen=True)
class Capabilities:
    range_search: bool  # index.range_search returns the stored vectors within a radius, as search ranks them
    filtered_search: bool  # an IDSelector in the search parameters restricts index.search to some ids


def capabilities(index: faiss.Index) -> Capabilities:
    """What `index` (as loaded: whitening, id map and refine wrappers included) supports."""
    node = search_node(index)
    return Capabilities(range_search=_ranges(node), filtered_search=_filters(node))


def search_node(index: faiss.Index) -> faiss.Index:
    """The index that does the searching: `index` without the transforms (`IndexPreTransform`: the
    whitening, PCA/OPQ of a factory string) and id maps around it, which pass both operations on."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexPreTransform, faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.downcast_index(index.index)
    return index


def _ranges(node: faiss.Index) -> bool:
    if isinstance(node, faiss.IndexRefine):
        # FAISS range-searches the base index at radius x k_factor, then keeps what the exact distances
        # put within the radius: a wider net for a distance, a narrower one for a similarity (ip: 0.9 x 4
        # is a cosine no pair reaches, so nothing came back)
        return node.metric_type == faiss.METRIC_L2 and _ranges(search_node(node.base_index))
    if isinstance(node, faiss.IndexIVF):  # every list scanner has its range variant, fast-scan included
        return True
    # flat codes with a decoder that ranks as search does (LSH ranks by Hamming distance, so not it)
    return isinstance(node, (faiss.IndexFlat, faiss.IndexScalarQuantizer, faiss.IndexPQ))


def _filters(node: faiss.Index) -> bool:
    if isinstance(node, faiss.IndexRefine):  # the selector goes to the base index through its parameters
        return _filters(search_node(node.base_index))
    if isinstance(node, faiss.IndexIVF):
        return not isinstance(node, faiss.IndexIVFAdditiveQuantizerFastScan)  # refuses search parameters
    if isinstance(node, faiss.IndexHNSW):  # the walk skips unselected ids; the two-level variant refuses
        return not isinstance(node, faiss.IndexHNSW2Level)
    # IndexPQ, IndexLSH, IndexFastScan, IndexNSG, IndexFlat1D and the additive quantizers refuse them
    return isinstance(node, (faiss.IndexFlat, faiss.IndexScalarQuantizer)) and not isinstance(node, faiss.IndexFlat1D)
