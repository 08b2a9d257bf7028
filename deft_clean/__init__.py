"""deft-clean: find wrong labels in image datasets with CLIP dual prompts (DeFT), then train on the rest."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# Public names -> the module that defines them. They are imported on first use (PEP 562) so that
# `import deft_clean` and `deft-clean --help` do not pay for importing torch.
_EXPORTS = {
    "DetectConfig": ".config",
    "TrainConfig": ".config",
    "DataError": ".errors",
    "DeftCleanError": ".errors",
    "UsageError": ".errors",
    "WeightsError": ".errors",
    "TrainResult": ".finetune",
    "train": ".finetune",
    "PredictResult": ".inference",
    "predict": ".inference",
    "LoadedModel": ".models",
    "load_model": ".models",
    "DetectResult": ".detection",
    "detect": ".detection",
    "load_results": ".results",
}

if TYPE_CHECKING:
    from .config import DetectConfig, TrainConfig
    from .detection import DetectResult, detect
    from .errors import DataError, DeftCleanError, UsageError, WeightsError
    from .finetune import TrainResult, train
    from .inference import PredictResult, predict
    from .models import LoadedModel, load_model
    from .results import load_results


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deft_clean' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "DataError",
    "DeftCleanError",
    "DetectConfig",
    "DetectResult",
    "LoadedModel",
    "PredictResult",
    "TrainResult",
    "TrainConfig",
    "UsageError",
    "WeightsError",
    "__version__",
    "detect",
    "load_model",
    "load_results",
    "predict",
    "train",
]
