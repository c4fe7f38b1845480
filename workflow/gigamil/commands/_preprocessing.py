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


def preprocessing_settings(
    config: str | None, section: str, flags: Mapping[str, Any]
) -> dict[str, Any]:
    """``preprocessing.<section>`` (``tissue`` or ``patches``) of the validated config file
    ``config`` (defaults filled in), else of the schema's defaults, updated with the ``flags``
    that are not None (by config key). The file may hold only a ``preprocessing`` section
    (its ``classes`` and ``cohorts``, which the workflow needs, are not); one without that
    section is a warning (every setting is then the schema's default).

    Raises:
        ConfigError: the config file is missing or invalid (naming it and the key).
    """
    from gigamil.settings import PatchConfig, TissueConfig

    if config:
        settings = dict(_config_preprocessing(config)[section])
    else:
        settings = (TissueConfig() if section == "tissue" else PatchConfig()).to_dict()
    settings.update({k: v for k, v in flags.items() if v is not None})
    return settings


def _config_preprocessing(path: str) -> dict[str, Any]:
    """The validated ``preprocessing`` section of config file ``path``."""
    import logging
    from pathlib import Path

    from gigamil.config import read_yaml, validate_config
    from gigamil.errors import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"{path}: config file not found")
    cfg = read_yaml(path) or {}
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
