"""The preprocessing settings of ``gigamil mask`` and ``gigamil patches``: a config's
``preprocessing`` section (``--config``: e.g. the config a shared model was trained with), else
the schema's defaults, with the flags given on the command line over either; and the check of
the slide's µm/px against them before any work (:func:`check_slide_scale`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONFIG_HELP = (
    "take the preprocessing settings from this config.yaml (e.g. the one shared models were "
    "trained with, so new slides are cut as their training slides were); flags given here win"
)


def preprocessing_section(config: str | None) -> dict[str, dict[str, Any]]:
    """The ``preprocessing`` section (``tissue`` and ``patches``) of the validated config file
    ``config`` (defaults filled in), else the schema's defaults. The file may hold only a
    ``preprocessing`` section (its ``classes`` and ``cohorts``, which the workflow needs, are
    not); one without that section is a warning (every setting is then the schema's default).

    Raises:
        ConfigError: the config file is missing or invalid (naming it and the key).
    """
    if config:
        return _config_preprocessing(config)
    from gigamil.settings import PatchConfig, TissueConfig

    return {"tissue": TissueConfig().to_dict(), "patches": PatchConfig().to_dict()}


def with_flags(settings: Mapping[str, Any], flags: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` (one part of :func:`preprocessing_section`) under the command-line
    ``flags`` that were given (not None), by config key."""
    return {**settings, **{k: v for k, v in flags.items() if v is not None}}


def _config_preprocessing(path: str) -> dict[str, Any]:
    """The validated ``preprocessing`` section of config file ``path``."""
    import logging

    from gigamil.config import read_config_file, validate_config
    from gigamil.errors import ConfigError

    cfg = read_config_file(path)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: not a configuration (a YAML mapping of sections)")
    if "preprocessing" not in cfg:
        logging.getLogger(__name__).warning(
            "--config %s has no preprocessing section: every setting is the schema's default",
            path,
        )
    # the keys the workflow needs besides: placeholders when absent (not read here)
    cfg.setdefault("classes", ["a", "b"])
    cfg.setdefault("cohorts", {"placeholder": {"sheet": "placeholder.csv"}})
    return validate_config(cfg, source=str(path))["preprocessing"]


def check_slide_scale(
    slide: str,
    slide_mpp: float | None,
    patch_mpp: float | None = None,
    mask_mpp: float | None = None,
) -> None:
    """GigamilError, before any work, when ``slide`` (headers only:
    :func:`gigamil.wsi.reader.slide_header`, at ``slide_mpp`` µm/px when given) cannot give
    patches at ``patch_mpp`` µm/px or a tissue mask at ``mask_mpp`` (either far finer than the
    scan), as the pipeline's preflight checks a run's slides
    (:func:`gigamil.wsi.preflight.check_slide`). With ``--slide-mpp`` the message asks whether
    it is a typo, as the preflight asks of a sheet's ``mpp``: a trial typed 25 for 0.25 and was
    told, after its tissue mask was computed, only to change the target µm/px. A missing file
    is left to the command's reader, which names it."""
    from pathlib import Path

    from gigamil.errors import GigamilError
    from gigamil.wsi.patching import upsampling_problem
    from gigamil.wsi.reader import slide_header
    from gigamil.wsi.tissue import mask_mpp_problem

    if not Path(slide).is_file():
        return
    mpp = slide_header(slide, slide_mpp)[0]
    problem = None if patch_mpp is None else upsampling_problem(mpp, patch_mpp)
    if problem is None and mask_mpp is not None:
        problem = mask_mpp_problem(mpp, mask_mpp)
    if problem is None:
        return
    if slide_mpp is not None:  # the slide's µm/px was typed by the user
        problem += f"; the slide's {mpp:g} µm/px is the override --slide-mpp: is that a typo?"
    raise GigamilError(f"{slide}: {problem}")
