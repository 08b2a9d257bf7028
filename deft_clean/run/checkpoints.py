"""Resumable runs: checkpoint files, what must match to resume, and stopping cleanly on SIGINT/SIGTERM.

A checkpoint is a ``torch.save`` dict of tensors and JSON strings (so that ``torch.load(weights_only=True)``
reads it), written atomically. Its ``signature`` (a JSON string) says which options and data made it;
resuming with anything else is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from .errors import DataError, UsageError
from .files import write_atomic

log = logging.getLogger(__name__)

VOLATILE_OPTIONS = ("device", "num_workers", "threads", "cache", "device_transforms", "compile")  # may change on resume


class Interrupted(BaseException):
    """SIGINT/SIGTERM stopped a run after its checkpoint was saved.

    A BaseException (like KeyboardInterrupt), so that ``except Exception`` blocks let it through.
    ``exit_code`` is 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopOnSignal:
    """Context manager: SIGINT/SIGTERM set a flag instead of killing the process.

    Loops call :meth:`check` after each step; it raises :class:`Interrupted` once a signal arrived.
    Handlers are only installed in the main thread (Python allows no other) and are restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, resume_hint: str | Callable[[], str]) -> None:
        # appended to the message, e.g. "rerun with --resume"; a callable is asked when the run stops
        self.resume_hint = resume_hint
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if exc_type is None and self.signum is not None:  # after the run's last check: its outputs are complete
            log.warning("%s arrived as the outputs were written; they are complete", signal.Signals(self.signum).name)

    @contextlib.contextmanager
    def hinted(self, hint: str | Callable[[], str]) -> Iterator[None]:
        """Use another resume hint while the block runs (e.g. during a cache fill, before any checkpoint)."""
        previous, self.resume_hint = self.resume_hint, hint
        try:
            yield
        finally:
            self.resume_hint = previous

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            # A second signal: the run is stuck (e.g. in a blocking read), so stop now, without a checkpoint.
            raise Interrupted(f"interrupted by {signal.Signals(signum).name} (second signal); stopped at once", signum)
        self.signum = signum

    def follow(self) -> None:
        """Stop as if signalled: another process of the same run received a signal."""
        if self.signum is None:
            self.signum = signal.SIGTERM

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def hint(self) -> str:
        """The resume hint as it stands now."""
        return _hint_text(self.resume_hint)

    def prefixed(self, text: str) -> contextlib.AbstractContextManager[None]:
        """Put ``text`` before the resume hint while the block runs (e.g. what a cache fill keeps)."""
        outside = self.resume_hint
        return self.hinted(lambda: f"{text}; {_hint_text(outside)}")

    def check_ranks(self, ranks: Any, device: Any) -> None:
        """:meth:`check`, stopping when a signal reached this rank or another one (every rank calls it at the same
        point of the run): between the steps of a run that do not check by themselves."""
        if ranks.active and ranks.any(self.requested, device):
            self.follow()
        self.check()

    def check(self) -> None:
        if self.signum is not None:
            name = signal.Signals(self.signum).name
            raise Interrupted(f"interrupted by {name}; {self.hint()}", self.signum)


def _hint_text(hint: str | Callable[[], str]) -> str:
    return hint() if callable(hint) else hint


def listing_signature(paths: list[str], labels: list[str], classes: list[str]) -> dict[str, Any]:
    """Class list, sample count and a hash of every (path, label): what identifies the data of a run."""
    digest = hashlib.sha256()
    for path, label in zip(paths, labels, strict=True):
        for text in (path, label):
            digest.update(text.encode("utf-8", "surrogateescape") + b"\0")
    return {"classes": list(classes), "n_samples": len(paths), "listing_sha256": digest.hexdigest()}


def config_signature(config: Any) -> dict[str, Any]:
    """A config dataclass as a dict, minus the options that may change on resume."""
    options = dataclasses.asdict(config)
    for name in VOLATILE_OPTIONS:
        options.pop(name, None)
    return options


def optimizer_state(optimizer: Any, scheduler: Any, scaler: Any, epoch_start: Any, device: Any) -> dict[str, Any]:
    """The optimiser, schedule, grad-scaler and RNG part of a checkpoint (shared by detect and train)."""
    import torch

    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "generator_epoch_start": epoch_start,
        "torch_rng": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_optimizer_state(
    state: dict[str, Any], optimizer: Any, scheduler: Any, scaler: Any, generator: Any, device: Any
) -> None:
    """Undo :func:`optimizer_state`: the run continues with the same schedule and random streams."""
    import torch

    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    generator.set_state(state["generator_epoch_start"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    write_atomic(path, lambda tmp: torch.save(state, tmp))


class CheckpointState(dict):
    """A loaded checkpoint; a missing entry is a DataError that names the file, not a KeyError."""

    path: Path

    def __missing__(self, key: str) -> Any:
        raise DataError(damaged(self.path, f"no {key!r} entry"))


def damaged(path: Path, why: str) -> str:
    return f"{path} is damaged ({why}); delete it to start over, or run without --resume"


def load_checkpoint(path: Path, signature: dict[str, Any]) -> dict[str, Any]:
    """Load a checkpoint made with the same signature; a missing or mismatching one is a UsageError.

    A truncated, empty or foreign file is a DataError with one line naming it.
    """
    import pickle

    import torch

    if not path.is_file():
        raise UsageError(f"--resume: no checkpoint at {path}; run without --resume to start")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (
        OSError,
        EOFError,
        RuntimeError,
        ValueError,
        pickle.UnpicklingError,
        AttributeError,
        KeyError,
        IndexError,
        TypeError,
    ) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(damaged(path, f"{type(exc).__name__}: {reason[:120]}")) from None
    if not isinstance(state, dict):
        raise DataError(damaged(path, f"holds a {type(state).__name__}, not a checkpoint"))
    state = CheckpointState(state)
    state.path = path
    try:
        saved = json.loads(state["signature"])
    except (json.JSONDecodeError, TypeError):
        raise DataError(damaged(path, "its signature is not JSON")) from None
    if not isinstance(saved, dict):
        raise DataError(damaged(path, "its signature is not a JSON object"))
    wanted = json.loads(json.dumps(signature))
    if saved != wanted:
        differs = describe_difference(saved, wanted)
        raise UsageError(
            f"--resume: {path} was made with other options or data ({differs}); "
            "rerun with the original options, or without --resume and another --run-dir"
        )
    return state


def describe_difference(saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    """A short 'what changed' for the refusal message, e.g. ``epochs 3 -> 4, listing``."""
    parts = []
    saved_options, wanted_options = saved.get("options", {}), wanted.get("options", {})
    for key in sorted(set(saved_options) | set(wanted_options)):
        if saved_options.get(key) != wanted_options.get(key):
            parts.append(f"{key} {saved_options.get(key)!r} -> {wanted_options.get(key)!r}")
    for key in sorted(set(saved) | set(wanted)):
        if key != "options" and saved.get(key) != wanted.get(key):
            parts.append("the dataset listing" if key in ("classes", "n_samples", "listing_sha256") else key)
    return ", ".join(dict.fromkeys(parts)) or "unknown difference"
