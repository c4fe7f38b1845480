"""The learnable soft colour histogram (gigamil.nn.histogram)."""

from __future__ import annotations

import torch

from gigamil.models.factory import build_mil_model
from gigamil.nn.histogram import ColourHistogram


def test_initialised_as_the_cumulative_rgb_histogram() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=gen)
    model = build_mil_model({"encoder": "smallcnn", "colour_histogram": 8}, 2, 32).eval()
    with torch.no_grad():
        feats = model.feature_encoder(x)
    assert feats.shape == (3, 64 + 24)
    rgb = x.float() / 255
    thresholds = (torch.arange(8) + 0.5) / 8
    exact = (rgb[..., None] > thresholds).float().mean((1, 2))  # (n, 3, 8)
    assert torch.allclose(feats[:, 64:], exact.reshape(3, 24), atol=0.02)


def test_histogram_learns_and_chunked_gradients_are_exact() -> None:
    torch.manual_seed(0)
    from gigamil.nn.losses import BagLoss

    model = build_mil_model(
        {"encoder": "smallcnn", "colour_histogram": 4}, 2, 16, loss_fn=BagLoss()
    )
    bag = torch.randint(0, 256, (9, 16, 16, 3), dtype=torch.uint8)
    grads = []
    for k in (None, 4):
        model.zero_grad()
        model.forward_train(bag, 1, max_instances_per_forward_pass=k)
        grads.append(model.feature_encoder[1].histogram.proj.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    frozen = build_mil_model(
        {"encoder": "smallcnn", "colour_histogram": 4, "trainable_blocks": 0}, 2, 16
    )
    assert not any(p.requires_grad for p in frozen.feature_encoder.parameters())
    assert ColourHistogram(2, (0.5,) * 3, (0.25,) * 3).out_dim == 6


def test_histogram_of_a_pixel_grid_estimates_the_full_one() -> None:
    assert ColourHistogram.pixel_stride(32, 32) == 1
    assert ColourHistogram.pixel_stride(96, 96) == 3
    assert ColourHistogram.pixel_stride(224, 224) == 7
    gen = torch.Generator().manual_seed(0)
    # smooth colour fields (as tissue): a coarse random image upsampled to 96 px
    coarse = torch.rand(4, 3, 12, 12, generator=gen)
    x = torch.nn.functional.interpolate(coarse, size=96, mode="bilinear", align_corners=False)
    layer = ColourHistogram(8, (0.0,) * 3, (1.0,) * 3)
    with torch.no_grad():
        sampled = layer(x)
        full = torch.sigmoid(layer.proj(x)).mean(dim=(2, 3))
    assert sampled.shape == (4, 24)
    assert (sampled - full).abs().max() < 0.03
    assert (sampled - full).abs().max() > 0  # a sample, not the full image
    layer.max_pixels = 96 * 96  # every pixel
    with torch.no_grad():
        assert torch.allclose(layer(x), full)
