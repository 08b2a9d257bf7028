"""deft-clean: find wrong labels in image datasets with CLIP dual prompts (DeFT), then train on the rest.

Architecture (one line per module in the README, "How the code is organised"):

- Two phases, one engine. Phase 1 (:mod:`.detection` -> :mod:`.detector`) trains prompts on a frozen CLIP
  and scores every sample; phase 2 (:mod:`.finetune`, with :mod:`.probe`) fine-tunes a classifier
  (:mod:`.classifiers`) on the rows phase 1 kept. Both describe themselves to :func:`.engine.fit` as a
  ``Phase`` (model, optimiser, loss step, epoch hooks); the engine alone chooses mixed precision, syncs
  gradients between torchrun ranks, checkpoints, resumes and stops on signals.
- One seam per input: :mod:`.listing` lists any dataset through a reader of :mod:`.readers` (folder, table,
  DataFrame, Hugging Face, WebDataset) into one ``Listing`` whose ``images`` open each row; a new input
  adds a reader file, not edits across the phases, cache, health and thumbnails.
- One place per rule: which rows are clean, flagged, kept or relabelled lives in :mod:`.selection`;
  the on-disk contract between the phases is the Parquet of :mod:`.results`.
- Layers: ``config``/``errors``/``_version``/``files`` at the bottom, then data and models, then the
  phases, then reports and export, then ``cli*`` on top. Nothing imports the CLI or this ``__init__``;
  the public names below are loaded on first use, so ``import deft_clean`` does not import torch.
"""

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
    "LoadedModel": ".classifiers",
    "load_model": ".classifiers",
    "DetectResult": ".detection",
    "detect": ".detection",
    "load_results": ".results",
}

if TYPE_CHECKING:
    from .classifiers import LoadedModel, load_model
    from .config import DetectConfig, TrainConfig
    from .detection import DetectResult, detect
    from .errors import DataError, DeftCleanError, UsageError, WeightsError
    from .finetune import TrainResult, train
    from .inference import PredictResult, predict
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
