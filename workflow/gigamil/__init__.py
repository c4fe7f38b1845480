"""gigamil: end-to-end attention-based multiple-instance learning on whole-slide images."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Heavy (torch) objects are imported lazily so that `import gigamil` and the CLI stay fast.
_LAZY = {
    "MILModel": "gigamil.models.mil",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gigamil' has no attribute {name!r}")


__all__ = ["MILModel", "__version__"]
