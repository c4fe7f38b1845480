"""The cells of a mosaic slide (:mod:`gigamil.demo_tiles`) on its grid of tile cells: a hole-free,
irregular, 4-connected tissue blob with an empty border, and a contiguous lesion region inside it,
grown cell by cell with a seeded random generator."""

from __future__ import annotations

import numpy as np

from gigamil.errors import GigamilError


def grow_region(
    rng: np.random.Generator, allowed: np.ndarray, start: tuple[int, int], n: int, power: float
) -> np.ndarray:
    """A 4-connected region of ``n`` cells of ``allowed``, grown from ``start``.

    Each step adds a frontier cell with probability ∝ (occupied neighbours)^power x a smooth
    random field: low power = ragged, high power = compact.
    """
    h, w = allowed.shape
    field = _smooth_field(rng, (h, w))
    occ = np.zeros((h, w), dtype=bool)
    occ[start] = True
    for _ in range(n - 1):
        nb = np.zeros((h, w), dtype=np.int64)
        nb[1:] += occ[:-1]
        nb[:-1] += occ[1:]
        nb[:, 1:] += occ[:, :-1]
        nb[:, :-1] += occ[:, 1:]
        cand = allowed & ~occ & (nb > 0)
        idx = np.flatnonzero(cand)
        if idx.size == 0:
            break
        wts = nb.ravel()[idx].astype(np.float64) ** power * field.ravel()[idx]
        occ.ravel()[idx[rng.choice(idx.size, p=wts / wts.sum())]] = True
    return occ


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Positive smooth random field (0.15..1) of cell weights: lobes instead of a disc."""
    from scipy import ndimage as ndi

    f = ndi.gaussian_filter(rng.standard_normal(shape), sigma=1.5, mode="wrap")
    f = (f - f.min()) / max(float(np.ptp(f)), 1e-9)
    return 0.15 + 0.85 * f


def tissue_blob(rng: np.random.Generator, n: int) -> np.ndarray:
    """Tissue cells: a hole-free irregular blob of exactly ``n`` cells, cropped to its bounding
    box plus one empty cell on every side."""
    from scipy import ndimage as ndi

    side = int(np.ceil(np.sqrt(n) * 2.0)) + 2
    allowed = np.zeros((side, side), dtype=bool)
    allowed[1:-1, 1:-1] = True
    for _attempt in range(100):
        occ = grow_region(rng, allowed, (side // 2, side // 2), n, power=2.0)
        if occ.sum() == n and (ndi.binary_fill_holes(occ) == occ).all():
            break
    else:  # pragma: no cover - growth with power 2 practically never leaves holes 100 times
        raise GigamilError(f"could not grow a hole-free blob of {n} tiles")
    rows, cols = np.flatnonzero(occ.any(axis=1)), np.flatnonzero(occ.any(axis=0))
    return np.pad(occ[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)


def lesion_region(rng: np.random.Generator, tissue: np.ndarray, k: int) -> np.ndarray:
    """A contiguous (4-connected) region of ``k`` tissue cells."""
    cells = np.flatnonzero(tissue)
    start = np.unravel_index(int(cells[rng.integers(cells.size)]), tissue.shape)
    region = grow_region(rng, tissue, (int(start[0]), int(start[1])), k, power=3.0)
    if region.sum() != k:  # pragma: no cover - a connected blob always has room
        raise GigamilError("lesion region could not be grown")
    return region
