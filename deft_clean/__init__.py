"""deft-clean: find wrong labels in image datasets with CLIP dual prompts (DeFT), then train on the rest.

Architecture (one line per folder and module in docs/architecture.md, "How the code is organised"):

- The folders are layers, top to bottom: :mod:`.cli` -> :mod:`.training` -> :mod:`.detecting` ->
  :mod:`.outputs` -> :mod:`.models` -> :mod:`.inputs` -> :mod:`.run`. A module imports its own folder and the
  ones below it; nothing imports the CLI or this ``__init__``.
- Two phases, one engine. Phase 1 (:mod:`.detecting.detect` -> :mod:`.detecting.prompt_training`) trains prompts
  on a frozen CLIP and scores every sample; phase 2 (:mod:`.training.finetune`, with :mod:`.training.linear_probe`)
  fine-tunes a classifier (:mod:`.models.classifier`) on the rows phase 1 kept. Both describe themselves to
  :func:`.run.engine.fit` as a ``Phase`` (model, optimiser, loss step, epoch hooks); the engine alone chooses
  mixed precision, syncs gradients between torchrun ranks, checkpoints, resumes and stops on signals.
- One seam per input: :mod:`.inputs.listing` lists any dataset through a reader of :mod:`.inputs.readers`
  (folder, table, DataFrame, Hugging Face, WebDataset) into one ``Listing`` whose ``images`` open each row
  and whose ``spec`` (a ``DatasetSpec``, recorded in the results) says what its source kind allows.
- One place per rule: which rows are usable, flagged, kept or relabelled lives in :mod:`.outputs.results`,
  the on-disk contract between the phases (the Parquet); which rows are clean in :mod:`.detecting.selection`.
- The public names below are loaded on first use, so ``import deft_clean`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .run._version import __version__

# Public names -> the module that defines them. They are imported on first use (PEP 562) so that
# `import deft_clean` and `deft-clean --help` do not pay for importing torch.
_EXPORTS = {
    "DetectConfig": ".run.options",
    "TrainConfig": ".run.options",
    "DataError": ".run.errors",
    "DeftCleanError": ".run.errors",
    "UsageError": ".run.errors",
    "WeightsError": ".run.errors",
    "TrainResult": ".training.finetune",
    "train": ".training.finetune",
    "PredictResult": ".training.predict",
    "predict": ".training.predict",
    "LoadedModel": ".models.classifier",
    "load_model": ".models.classifier",
    "DetectResult": ".detecting.detect",
    "detect": ".detecting.detect",
    "load": ".detecting.detect",
    "load_results": ".outputs.results",
}

if TYPE_CHECKING:
    from .detecting.detect import DetectResult, detect, load
    from .models.classifier import LoadedModel, load_model
    from .outputs.results import load_results
    from .run.errors import DataError, DeftCleanError, UsageError, WeightsError
    from .run.options import DetectConfig, TrainConfig
    from .training.finetune import TrainResult, train
    from .training.predict import PredictResult, predict


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
    "load",
    "load_model",
    "load_results",
    "predict",
    "train",
]
