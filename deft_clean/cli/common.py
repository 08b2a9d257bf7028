"""What every command shares: the --device/--quiet/--debug options and the error-to-exit-code wrapper."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from ..run.checkpoints import Interrupted
from ..run.errors import RESULT_WARNING, DeftCleanError
from ..run.safety import printable

T = TypeVar("T")
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (never an input).")]
ImagesPerEpoch = Annotated[
    str,
    typer.Option(
        metavar="auto|all|N",
        help="Images per training epoch: auto (a stratified sample: 50 a class, at least 512), all, or N.",
    ),
]
EarlyStop = Annotated[
    bool, typer.Option(help="Stop training when the prompts' clean set stops moving (a collapse always stops).")
]
Threads = Annotated[int | None, typer.Option(help="torch CPU threads (default: the usable cores minus the workers).")]
LabelKey = Annotated[str, typer.Option(help="WebDataset: the member holding the label, e.g. cls, or json:FIELD.")]
ClassNames = Annotated[Path | None, typer.Option(help="JSON object or two-column CSV: raw label -> prompt text.")]
Workers = Annotated[
    int | None, typer.Option(help="DataLoader workers (default: none on 2 usable cores or fewer, else half of them).")
]
DeviceTransforms = Annotated[
    bool | None, typer.Option(help="Crop, flip and normalise uint8 batches on the device (default: on CUDA).")
]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the image tower (eager again if it fails).")]
Cache = Annotated[
    Path | None,
    typer.Option(
        metavar="DIR",
        help="Decoded-image cache: each image is decoded and resized once, then reused by every epoch and by "
        "detect/train runs at the same input size (about 150 KB per image at 224 px).",
    ),
]


def config_options(cls: type, parameters: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The options of config dataclass ``cls`` among a command's ``parameters`` (matched by name, so that a
    new config field needs only its Typer option), paths as strings; ``overrides`` win."""
    from ..run.options import field_names

    names = field_names(cls)
    options = {k: str(v) if isinstance(v, Path) else v for k, v in parameters.items() if k in names}
    return {**options, **overrides}


def _run(debug: bool, quiet: bool, call: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a library call, ``call(*args, **kwargs)``; map DeftCleanError (and anything unexpected) to one stderr
    line + exit code, and a run stopped by SIGINT/SIGTERM (checkpoint saved) to its message and exit 130/143."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    log = logging.getLogger("deft_clean")
    if quiet:  # --quiet hides progress and the summary, never a warning that changes what the results mean
        log.addFilter(_results_only)
    try:
        return call(*args, **kwargs)
    except Interrupted as exc:
        err.print(printable(exc), markup=False)
        raise typer.Exit(exc.exit_code) from None
    except DeftCleanError as exc:
        if debug:
            raise
        err.print(f"error: {printable(exc.cli_message())}", markup=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted by SIGINT", markup=False)
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug or an environment problem: still one line unless --debug
        if debug:
            raise
        err.print(f"error: {type(exc).__name__}: {printable(exc)} (rerun with --debug for the traceback)", markup=False)
        raise typer.Exit(1) from None
    finally:
        log.removeFilter(_results_only)


def _results_only(record: logging.LogRecord) -> bool:
    """Under --quiet: errors, and the warnings that change what the results mean (:func:`warn_result`)."""
    return record.levelno >= logging.ERROR or bool(getattr(record, RESULT_WARNING, False))
