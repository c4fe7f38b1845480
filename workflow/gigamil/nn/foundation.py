"""Known pathology foundation models, by short name (``model.encoder: uni``), built with timm.

Each entry records what gigamil needs to rebuild the published encoder WITHOUT downloading
anything: the timm architecture and its constructor arguments, the input size, the
normalisation mean/std and how the patch embedding is formed. The weights themselves are gated
on Hugging Face: ``model.weights`` names a local file or ``hf-hub:<org>/<name>`` in the local
Hugging Face cache (gigamil.nn.weights).

Sources: the models' public Hugging Face cards and configs below. H-optimus-0's and Phikon's
``config.json`` were read directly; for the gated repositories (UNI, UNI2-h, Virchow2,
Prov-GigaPath) the values were read from public code that reproduces the card's usage snippet or
quotes the repository's ``config.json``, and agree across several such sources; the parameter
counts the tests check (e.g. Virchow2 631 M, H-optimus-0 and Prov-GigaPath 1134 M) match the
sizes the cards state (632 M, 1.1 B). Patches are resized bilinearly (some cards use bicubic).

- ``uni`` - https://huggingface.co/MahmoodLab/UNI : ``timm.create_model("vit_large_patch16_224",
  img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True)``;
  transform Resize(224), ImageNet mean/std; embedding = the model's output (CLS token), 1024.
- ``uni2_h`` - https://huggingface.co/MahmoodLab/UNI2-h : ``vit_giant_patch14_224`` with
  img_size 224, patch_size 14, depth 24, num_heads 24, init_values 1e-5, embed_dim 1536,
  mlp_ratio 2.66667*2, no_embed_class, SwiGLUPacked MLP with SiLU, reg_tokens 8,
  dynamic_img_size; ImageNet mean/std at 224 px; embedding = CLS token, 1536.
- ``virchow2`` - https://huggingface.co/paige-ai/Virchow2 (config.json): ``vit_huge_patch14_224``
  with img_size 224, init_values 1e-5, reg_tokens 4, mlp_ratio 5.3375, global_pool "",
  dynamic_img_size, SwiGLUPacked MLP with SiLU (passed by the card's code); ImageNet mean/std,
  224 px (bicubic in the card's timm transform); embedding = concat(CLS token, mean of the patch
  tokens, i.e. tokens after the CLS and the 4 register tokens), 2 x 1280 = 2560.
- ``h_optimus_0`` - https://huggingface.co/bioptimus/H-optimus-0 (config.json):
  ``vit_giant_patch14_reg4_dinov2``, init_values 1e-5, dynamic_img_size False, 224 px, mean
  (0.707223, 0.578729, 0.703617), std (0.211883, 0.230117, 0.177517), global_pool "token":
  embedding = CLS token, 1536.
- ``prov_gigapath`` - https://huggingface.co/prov-gigapath/prov-gigapath (config.json):
  ``vit_giant_patch14_dinov2`` with img_size 224, in_chans 3, patch_size 16 (sic: the
  architecture name says 14), embed_dim 1536, depth 40, num_heads 24, init_values 1e-5,
  mlp_ratio 5.33334, global_pool "token": embedding = CLS token, 1536. The card's transform is
  Resize(256, bicubic) + CenterCrop(224) with ImageNet mean/std; gigamil resizes the whole patch
  to 224 px instead (no crop: a crop would drop a quarter of every patch's area).
- ``phikon`` - https://huggingface.co/owkin/phikon (config.json): a Hugging Face *transformers*
  ``ViTModel`` (iBOT ViT-B/16: hidden 768, 12 layers, 12 heads, 224 px, layer_norm_eps 1e-12);
  embedding = CLS token of ``last_hidden_state``, 768. Only the architecture is reproduced,
  as timm ``vit_base_patch16_224``: the published weights use transformers key names, which
  gigamil does not convert, and timm's LayerNorm eps is 1e-6, not 1e-12. ImageNet mean/std
  (as for phikon_v2 below: taken from the repositories' image-processor configs, not
  re-checked here).
- ``phikon_v2`` - https://huggingface.co/owkin/phikon-v2 : a transformers ``Dinov2Model``,
  ViT-L/16 (1024-d CLS embedding, 224 px). Reproduced as timm ``vit_large_patch16_224`` with
  LayerScale (``init_values=1e-5``, the DINOv2 recipe); that the published model uses LayerScale,
  and its exact eps, are NOT verified here, and its weights are in transformers format (not
  converted by gigamil), so treat this entry as architecture-only.

How the embedding sizes are checked without allocating a billion parameters: the tests build
every entry on torch's ``meta`` device (shapes, no memory, no initialisation) and run one
224 px patch through it (tests/unit/nn/test_foundation.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# the two timm layer classes some entries need, by name (resolved when the model is built, so
# importing this module does not import timm)
SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one encoder with timm and feed it.

    ``pool``: ``model`` (the timm model's own pooled output, ``num_classes=0``), ``cls`` (the
    class token after the final norm) or ``cls_mean`` (CLS concatenated with the mean of the
    patch tokens, prefix tokens excluded). ``embed_dim``: the documented embedding size.
    ``input_size``: patches are resized to this many pixels (None: fed as they are).
    """

    architecture: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int | None = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pool: str = "cls"
    embed_dim: int | None = None
    hf_repo: str | None = None
    source: str = ""
    weights_note: str = ""


FOUNDATION_MODELS: dict[str, EncoderSpec] = {
    "uni": EncoderSpec(
        "vit_large_patch16_224",
        {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
        embed_dim=1024,
        hf_repo="MahmoodLab/UNI",
        source="https://huggingface.co/MahmoodLab/UNI",
    ),
    "uni2_h": EncoderSpec(
        "vit_giant_patch14_224",
        {
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "no_embed_class": True,
            "reg_tokens": 8,
            "dynamic_img_size": True,
            **SWIGLU,
        },
        embed_dim=1536,
        hf_repo="MahmoodLab/UNI2-h",
        source="https://huggingface.co/MahmoodLab/UNI2-h",
    ),
    "virchow2": EncoderSpec(
        "vit_huge_patch14_224",
        {
            "img_size": 224,
            "init_values": 1e-5,
            "reg_tokens": 4,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "dynamic_img_size": True,
            **SWIGLU,
        },
        pool="cls_mean",
        embed_dim=2560,
        hf_repo="paige-ai/Virchow2",
        source="https://huggingface.co/paige-ai/Virchow2",
    ),
    "h_optimus_0": EncoderSpec(
        "vit_giant_patch14_reg4_dinov2",
        {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
        mean=(0.707223, 0.578729, 0.703617),
        std=(0.211883, 0.230117, 0.177517),
        embed_dim=1536,
        hf_repo="bioptimus/H-optimus-0",
        source="https://huggingface.co/bioptimus/H-optimus-0",
    ),
    "prov_gigapath": EncoderSpec(
        "vit_giant_patch14_dinov2",
        {
            "img_size": 224,
            "in_chans": 3,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-5,
            "mlp_ratio": 5.33334,
        },
        embed_dim=1536,
        hf_repo="prov-gigapath/prov-gigapath",
        source="https://huggingface.co/prov-gigapath/prov-gigapath",
    ),
    "phikon": EncoderSpec(
        "vit_base_patch16_224",
        {"img_size": 224},
        embed_dim=768,
        hf_repo="owkin/phikon",
        source="https://huggingface.co/owkin/phikon",
        weights_note=(
            "owkin/phikon publishes Hugging Face transformers weights (ViTModel key names), "
            "which gigamil does not convert to timm names; only the architecture is available"
        ),
    ),
    "phikon_v2": EncoderSpec(
        "vit_large_patch16_224",
        {"img_size": 224, "init_values": 1e-5},
        embed_dim=1024,
        hf_repo="owkin/phikon-v2",
        source="https://huggingface.co/owkin/phikon-v2",
        weights_note=(
            "owkin/phikon-v2 publishes Hugging Face transformers weights (Dinov2Model key "
            "names), which gigamil does not convert to timm names; only the architecture is "
            "available"
        ),
    ),
}

TIMM_PREFIX = "timm:"


def is_timm_encoder(name: str) -> bool:
    """``timm:<architecture>`` or a registry name."""
    return name.startswith(TIMM_PREFIX) or name in FOUNDATION_MODELS


def encoder_spec(name: str) -> EncoderSpec:
    """The spec of a registry name, or of ``timm:<architecture>`` (the architecture's own timm
    pretrained config gives input size and mean/std; fixed-size models are resized to it)."""
    if name in FOUNDATION_MODELS:
        return FOUNDATION_MODELS[name]
    if not name.startswith(TIMM_PREFIX):
        raise KeyError(name)
    arch = name[len(TIMM_PREFIX) :]
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return EncoderSpec(arch, input_size=None, pool="model")
    size = cfg.input_size[-1] if cfg.fixed_input_size else None
    return EncoderSpec(
        arch,
        input_size=size,
        mean=tuple(float(v) for v in cfg.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg.std),  # type: ignore[arg-type]
        pool="model",
    )
