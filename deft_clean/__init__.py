"""deft-clean: find wrong labels in image datasets with CLIP dual prompts (DeFT), then train on the rest."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import DetectConfig, TrainConfig  # noqa: E402
from .errors import DataError, DeftCleanError, UsageError, WeightsError  # noqa: E402
from .finetune import TrainResult, train  # noqa: E402
from .inference import PredictResult, predict  # noqa: E402
from .models import LoadedModel, load_model  # noqa: E402
from .pipeline import DetectResult, detect  # noqa: E402
from .results import load_results  # noqa: E402

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
