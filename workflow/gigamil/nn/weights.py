"""Encoder weights from a local file or the local Hugging Face cache, loaded strictly.

``model.weights`` is a local ``.safetensors`` / ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` file or
``hf-hub:<org>/<name>`` (looked up in the local Hugging Face cache only: nothing is downloaded,
so a compute node without internet behaves like a laptop with one). The file holds a bare state
dict or one wrapped in ``state_dict`` / ``model``; prefixes every key shares (``module.``,
``backbone.``, ``encoder.``, ``model.``) are stripped when the encoder has no key with them, and
keys of the classifier that gigamil removed (``head.*`` of a timm ViT, ``fc.*`` of a ResNet)
are dropped. Anything else missing or unexpected, or a tensor holding NaN, is an error naming the
first keys and the counts (±inf is allowed: some models store masks with -inf).
The sha256 of the file identifies the weights in ``model.pt`` and in the log.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from gigamil.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where tensors are read: the workflow imports this module
    import torch  # at every start (feature_spec) and needs no torch for it (2.5 s per SLURM job)
    from torch import nn

log = logging.getLogger(__name__)

HF_PREFIX = "hf-hub:"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")  # .ckpt: e.g. Lightning's
WRAPPERS = ("state_dict", "model")
STRIP_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
# file names a Hugging Face model repository keeps its weights under, in order of preference
HF_FILES = ("model.safetensors", "pytorch_model.bin")


def is_weights_file(weights: str | None) -> bool:
    """A local weights file (by suffix) or an ``hf-hub:`` reference."""
    return weights is not None and (
        str(weights).startswith(HF_PREFIX) or Path(str(weights)).suffix in WEIGHT_SUFFIXES
    )


def hub_cache() -> str:
    """The Hugging Face hub cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else the default),
    read when called so a job's environment counts."""

    def expanded(name: str) -> str:  # as huggingface_hub reads them: ~ and $VAR expanded
        return os.path.expandvars(os.path.expanduser(os.environ[name]))

    if os.environ.get("HF_HUB_CACHE"):
        return expanded("HF_HUB_CACHE")
    if os.environ.get("HF_HOME"):
        return str(Path(expanded("HF_HOME")) / "hub")
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hf_repo(weights: str) -> str:
    """``<org>/<name>`` of an ``hf-hub:<org>/<name>`` reference; ConfigError for another form."""
    repo = weights[len(HF_PREFIX) :].strip("/")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"model.weights: {weights!r} is not hf-hub:<org>/<name>")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:  # the hub's own rules (a traceback from its cache lookup before)
        validate_repo_id(repo)
    except HFValidationError as exc:
        revision = " (a revision, @..., is not supported: the cache's main is read)"
        raise ConfigError(
            f"model.weights: {weights!r} is not hf-hub:<org>/<name>: {exc}"
            f"{revision if '@' in repo else ''}"
        ) from None
    return repo


def resolve_weights(weights: str) -> Path:
    """The local file behind ``model.weights`` (raises a one-line ConfigError when missing)."""
    if not weights.startswith(HF_PREFIX):
        path = Path(weights).expanduser()
        if not path.is_file():
            where = "" if path.is_absolute() else f" (looked for {path.resolve()}"
            where += "; a relative path is relative to the working directory)" if where else ""
            raise ConfigError(f"model.weights: file {weights} does not exist{where}")
        return path
    repo = hf_repo(weights)
    from huggingface_hub import try_to_load_from_cache

    for filename in HF_FILES:
        found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache())
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    raise ConfigError(
        f"model.weights: {weights} is not in the local Hugging Face cache ({hub_cache()}); "
        f"on a machine with internet, accept the model's terms on https://huggingface.co/{repo}, "
        f"run `hf auth login` and `hf download {repo}`, then copy its "
        f"models--{repo.replace('/', '--')} folder into this machine's cache (or set "
        f"HF_HUB_CACHE to a copy), or set model.weights to the downloaded "
        f"{' or '.join(HF_FILES)} file"
    )


def hf_weights_here(weights: str) -> tuple[str | None, list[str]]:
    """``(weights, [])`` when the ``hf-hub:`` weights are in this machine's Hugging Face cache
    (then checked against the meta encoder like a local file), else ``(None, [warning])``."""
    hf_repo(weights)  # its form: an error at once
    try:
        resolve_weights(weights)
    except ConfigError:
        return None, [
            f"model.weights {weights} is not in the Hugging Face cache here ({hub_cache()}): "
            "every job that loads the encoder (train_fold, extract_features) looks in its own "
            "HF_HUB_CACHE and stops, after preprocessing, if it is not there either; if the "
            'jobs run on this machine, download it first (README, "Choosing an encoder")'
        ]
    return weights, []


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (cached per path, size and modification time)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def read_state_dict(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a torch pickle read with ``weights_only``;
    a dict wrapped in ``state_dict`` / ``model`` is unwrapped. ``device="meta"`` reads names and
    shapes only (milliseconds for any size: the workflow's check before any job)."""
    try:
        obj = _read_tensors(path, device)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise ConfigError(f"model.weights: cannot read {path} ({_read_error(exc)})") from exc
    for _ in range(2):  # e.g. {"model": {...}} or {"state_dict": {"model": ...}} is not nested
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        what = (
            f"a dict with keys {', '.join(map(str, list(obj)[:5]))}"
            if isinstance(obj, Mapping)
            else type(obj).__name__
        )
        raise ConfigError(
            f"model.weights: {path} holds {what}, not a state dict of tensors (a state dict "
            f"may be wrapped in {' or '.join(repr(w) for w in WRAPPERS)}, nothing else)"
        )
    return dict(obj)


def weights_format(path: Path) -> str:
    """``"safetensors"``, ``"torch"`` (a ``torch.save`` zip archive or legacy pickle) or
    ``"unknown"``, from the file's first bytes, whatever its suffix: a safetensors file starts
    with its header's length (8 bytes, little-endian) and the JSON header (``{``); a
    ``torch.save`` file with a zip signature (``PK\\x03\\x04``) or a pickle protocol byte (0x80)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= os.path.getsize(path) - 8:
            return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    return "unknown"


def _read_tensors(path: Path, device: str) -> object:
    import torch

    kind = weights_format(path)
    if kind == "unknown":
        raise ValueError(
            "neither a safetensors file nor a torch.save() file (its first bytes are "
            "neither; an empty, truncated or other kind of file?)"
        )
    if kind == "torch":  # a file object: torch.load reads a path named .safetensors as such
        with open(path, "rb") as f:
            return torch.load(f, map_location=device, weights_only=True)
    if device != "meta":
        from safetensors.torch import load_file

        return load_file(str(path), device=device)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        names = f.keys()  # a safe_open handle has keys(), it is not iterable
        return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in names}


def _read_error(exc: Exception) -> str:
    """What went wrong reading a weights file, in one line (torch's refusal of a pickled model
    is several lines of advice that does not apply here)."""
    text = " ".join(str(exc).split())
    if "Weights only load failed" in text:
        return (
            "it holds a pickled model or other objects, not only tensors; save the model's "
            "state_dict() instead, e.g. torch.save(model.state_dict(), 'weights.pt'), or a "
            ".safetensors file"
        )
    if "file not fully covered" in text:  # safetensors: the tensors' byte ranges run past the end
        return f"{text}: the file is shorter than its header says, i.e. truncated (an interrupted copy?)"
    return text


def _is_state_dict(obj: Mapping) -> bool:
    import torch

    return len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def strip_prefixes(
    state: Mapping[str, torch.Tensor], expected: set[str]
) -> dict[str, torch.Tensor]:
    """Remove a prefix from :data:`STRIP_PREFIXES` that every key has and no expected key has
    (repeatedly: ``module.backbone.x`` → ``x``)."""
    state = dict(state)
    changed = bool(state)  # an empty dict has every prefix on all (no) keys: nothing to strip
    while changed:
        changed = False
        for p in STRIP_PREFIXES:
            if all(k.startswith(p) for k in state) and not any(k.startswith(p) for k in expected):
                state = {k[len(p) :]: v for k, v in state.items()}
                changed = True
    return state


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """``; every missing key is in the file under 'backbone.' ...`` when one prefix holds them
    all but other keys of the file have none (a DINO-style ``backbone.*`` beside ``head.*``, so
    the prefix is not stripped); else ''."""
    if not missing:
        return ""
    extra = set(unexpected)
    prefixes = {u[: -len(missing[0])] for u in unexpected if u.endswith("." + missing[0])}
    for prefix in sorted(prefixes):
        if all(prefix + k in extra for k in missing):
            others = [u for u in unexpected if not u.startswith(prefix)]
            return (
                f"; every missing key is in the file under the prefix {prefix!r}, beside "
                f"{len(others)} other key(s) ({_key_list(others, 3)}): save only that part, "
                f"{{k.removeprefix({prefix!r}): v for k, v in sd.items() if k.startswith({prefix!r})}}"
            )
    return ""


def _key_list(keys: list[str], n: int = 5) -> str:
    more = f", ... ({len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    classifier: str | Sequence[str] | None = None,
    hint: str = "",
) -> None:
    """Load ``state`` into ``module`` after prefix stripping; every key must match (names and
    shapes) and no tensor may hold NaN (±inf is allowed: some models store attention masks of
    -inf). Keys under ``classifier`` (the head gigamil replaced by an identity) are dropped."""
    expected = set(module.state_dict())
    state = strip_prefixes(state, expected)
    if classifier:  # one name, or several (timm's distilled models: ('head', 'head_dist'))
        heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        dropped = [
            k for k in state if k not in expected and any(k.startswith(f"{c}.") for c in heads)
        ]
        for k in dropped:
            del state[k]
        if dropped:
            log.info("model.weights: ignoring the classifier's %d keys %s", len(dropped), dropped)
    # BatchNorm's batch counter, absent from checkpoints saved before torch 0.4.1 (torch's
    # strict loading accepts them too): a counter, not a weight, so no layer stays random
    missing = sorted(k for k in expected - set(state) if not k.endswith(".num_batches_tracked"))
    unexpected = sorted(set(state) - expected)
    tail = f"; {hint}" if hint else ""
    own = module.state_dict()
    shapes = [
        k for k in sorted(set(state) & expected) if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_key_list(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_key_list(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} tensors of other shapes ({_key_list(shapes)})")
        raise ConfigError(
            f"model.weights: {source} does not fit the encoder (the encoder has "
            f"{len(expected)} tensors, the file {len(state)}): {' and '.join(parts)}"
            f"{_prefix_hint(missing, unexpected) or tail}"
        )
    if shapes:
        k = shapes[0]
        raise ConfigError(
            f"model.weights: {source} does not fit the encoder: {len(shapes)} tensors have "
            f"other shapes (first {k}: {tuple(state[k].shape)} in the file, "
            f"{tuple(own[k].shape)} in the encoder; a different architecture?){tail}"
        )
    if any(t.is_meta for t in own.values()):  # the check before any job: names and shapes only
        return
    bad = [k for k in sorted(state) if _holds_nan(state[k])]
    if bad:
        raise ConfigError(
            f"model.weights: {source} holds NaN in {len(bad)} tensor"
            f"{'s' if len(bad) > 1 else ''} ({_key_list(bad)}): the weights are damaged or "
            "come from a training that diverged; use an intact file"
        )
    module.load_state_dict(state, strict=True)


def _holds_nan(t: torch.Tensor) -> bool:
    import torch

    return bool(t.is_floating_point() and torch.isnan(t).any())


def load_weights_file(
    module: nn.Module, weights: str, classifier: str | Sequence[str] | None = None, hint: str = ""
) -> str:
    """Resolve, read and strictly load ``weights`` into ``module``; returns the file's sha256
    (also logged). A ``module`` on the ``meta`` device is only checked against the file's names
    and shapes (no tensor is read, no sha256: the workflow's check before any job); returns ""."""
    path = resolve_weights(weights)
    if any(t.is_meta for t in module.state_dict().values()):
        load_strict(module, read_state_dict(path, device="meta"), str(weights), classifier, hint)
        return ""
    digest = file_sha256(path)
    load_strict(module, read_state_dict(path), str(weights), classifier, hint)
    log.info("encoder weights %s (%s): sha256 %s", weights, path, digest)
    return digest


def weights_signature(weights: str | None) -> dict[str, str]:
    """What a training's signature (rule train_fold's params, ``last.pt``'s resume check)
    holds of ``model.weights`` besides its name: ``{"encoder_weights_sha256": digest}`` of a
    local weights file, so a file replaced in place retrains the folds (the name alone did not
    change); ``{}`` otherwise (random init, torchvision names, and ``hf-hub:`` references, which
    only the training job looks up, in its own cache), which keeps the signatures of those
    trainings as they were. Hashes the file once per process."""
    if not is_weights_file(weights) or str(weights).startswith(HF_PREFIX):
        return {}
    return {"encoder_weights_sha256": file_sha256(resolve_weights(str(weights)))}


def weights_sha256(weights: str | None, encoder: str) -> str | None:
    """sha256 of the file behind ``model.weights`` of ``encoder`` (None: random init, or a
    torchvision weight name whose file is not in torch's hub cache)."""
    if weights is None:
        return None
    if is_weights_file(weights):
        return file_sha256(resolve_weights(weights))
    import torch

    from gigamil.nn.encoders import torchvision_weights

    try:
        w = torchvision_weights(encoder, weights)
    except ConfigError:
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name if w else None
    return file_sha256(path) if path is not None and path.is_file() else None
