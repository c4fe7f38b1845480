"""The preprocessing settings of ``gigamil mask`` and ``gigamil patches``: a config's
``preprocessing`` section (``--config``: e.g. the config a shared model was trained with), else
the schema's defaults, with the flags given on the command line over either."""

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
