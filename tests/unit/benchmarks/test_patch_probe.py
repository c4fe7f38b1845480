"""benchmarks/patch_probe.py: its slide score (the probe itself is run by hand)."""

from __future__ import annotations

import numpy as np
import torch


class _Brightness(torch.nn.Module):
    """Logit = mean intensity of the top half of a (n, H, W, 3) patch: changes under rotations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : x.shape[1] // 2].float().mean(dim=(1, 2, 3)).unsqueeze(1)


def test_slide_score_is_the_top_fifth_mean_and_tta_averages_eight_views(bench) -> None:
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8)
    scores = bench.slide_scores(_Brightness(), patches)
    plain, tta = scores["score"], scores["score_tta"]
    assert "score_smooth" not in scores  # no grid, no smoothing
    top = patches[:, :4].astype(np.float64).mean(axis=(1, 2, 3))
    assert np.isclose(plain, np.sort(top)[-2:].mean())  # ceil(0.2 * 10) = 2 patches
    x = torch.from_numpy(patches)
    views = [x.rot90(k, dims=(1, 2)) for k in range(4)]
    views += [v.flip(2) for v in views]
    mean = torch.stack([_Brightness()(v) for v in views]).mean(0).squeeze(1).numpy()
    assert np.isclose(tta, np.sort(mean)[-2:].mean())
    assert not np.isclose(plain, tta)


def test_smoothing_over_the_grid_favours_a_contiguous_region(bench) -> None:
    """Two slides with the same two high patches: adjacent (a region) or far apart (strays)."""
    grid = np.array([(r, c) for r in range(4) for c in range(5)])

    class _Given(torch.nn.Module):
        def __init__(self, z: np.ndarray) -> None:
            super().__init__()
            self.z = torch.from_numpy(z)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # the same logits for every view
            return self.z.unsqueeze(1)

    patches = np.zeros((20, 4, 4, 3), dtype=np.uint8)
    region, strays = np.zeros(20), np.zeros(20)
    region[[6, 7, 8, 11]] = 5.0  # a 2 x 2-ish block in the middle
    strays[[0, 4, 15, 19]] = 5.0  # the four corners
    a = bench.slide_scores(_Given(region), patches, grid)
    b = bench.slide_scores(_Given(strays), patches, grid)
    assert a["score"] == b["score"] == 5.0  # the plain top-20 % mean cannot tell them apart
    assert a["score_smooth"] > b["score_smooth"] + 0.5
