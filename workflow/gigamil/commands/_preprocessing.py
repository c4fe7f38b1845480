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
    that are not None (by config key).

    Raises:
        ConfigError: the config file is missing or invalid (naming it and the key).
    """
    from gigamil.settings import PatchConfig, TissueConfig

    if config:
        from gigamil.config import load_config

        settings = dict(load_config(config)["preprocessing"][section])
    else:
        settings = (TissueConfig() if section == "tissue" else PatchConfig()).to_dict()
    settings.update({k: v for k, v in flags.items() if v is not None})
    return settings
