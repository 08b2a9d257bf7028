"""How ``deft-clean --help`` reads: flags shown as flags, upper-case argument names, options in panels.

Typer (0.29) prints ``<bool>`` after every flag, ``{dataset}`` for a required argument and ``<list[Path]>``
for a variadic one, and puts all of a command's options in one list. :class:`HelpGroup` tidies each
command's parameters when the command is looked up, so that the command functions in ``cli/app.py`` stay plain
Typer. Nothing here imports torch: ``--help`` and usage errors stay fast.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperGroup

# Option name (the Python parameter) -> help panel. Options not listed stay under "Options".
PANELS: dict[str, str] = {}
for _panel, _names in {
    "Input": "path_col label_col image_col split id_col label_key class_names val dataset results inputs model_dir",
    "Model": "model pretrained n_ctx ctx_init class_specific vpt_tokens vpt_depth image_adapter backbone "
    "backbone_weights image_size selection clean_rule quick health duplicate_threshold",
    "Training": "epochs warmup_epochs images_per_epoch early_stop batch_size lr momentum weight_decay grad_clip "
    "hflip seed head_lr_scale "
    "head_init holdout optimizer label_smoothing balanced clean_only threshold relabel top_k",
    "Output": "out save_arrays run_dir resume checkpoint_every overwrite html top mode keep_flagged decisions "
    "drop_duplicates drop_outliers",
    "Run": "num_workers threads cache device device_transforms compile quiet debug help",
}.items():
    PANELS.update(dict.fromkeys(_names.split(), _panel))

PANEL_ORDER = ("Input", "Model", "Training", "Output", "Run")

# Metavars for values whose type name says little ("<path>" could be a file or a folder).
METAVARS = {
    "out": "PATH",
    "class_names": "FILE",
    "run_dir": "DIR",
    "model": "NAME|JSON",
    "pretrained": "TAG|FILE",
    "path_col": "COLUMN",
    "label_col": "COLUMN",
    "image_col": "COLUMN",
    "split": "NAME",
    "id_col": "COLUMN",
    "label_key": "EXT|json:FIELD",
    "device": "DEVICE",
    "results": "PARQUET",
    "val": "DATASET",
    "html": "FILE",
    "ctx_init": "WORDS",
    "backbone": "NAME",
    "backbone_weights": "FILE",
    "dataset": "DATASET",
    "threshold": "T",
    "relabel": "MIN_P",
    "duplicate_threshold": "SIM",
}


def tidy_param(param: Any) -> None:
    """Give one click/Typer parameter a flag-style, upper-case or explicit metavar and its panel."""
    name = param.name or ""
    if param.param_type_name == "argument":
        label = (param.metavar or name).upper()
        variadic = param.nargs != 1
        param.metavar = label + ("..." if variadic else "")
        # Typer wraps required arguments in {} in the usage line; click's convention is the bare name.
        usage = param.metavar if param.required else f"[{param.metavar}]"
        param._usage_display_name = lambda usage=usage: usage
        if variadic:  # "<list[Path]>" -> "<path>..."
            kind = param.display_type
            param.display_type_rich = lambda ctx, kind=kind: kind(ctx).replace("list[Path]", "path") + "..."
        return
    if getattr(param, "is_flag", False) and param.metavar is None:
        param.metavar = ""  # a flag takes no value: no "<bool>" after it
    elif param.metavar is None and name in METAVARS:
        param.metavar = METAVARS[name]
    if getattr(param, "rich_help_panel", None) is None and name in PANELS:
        param.rich_help_panel = PANELS[name]


class HelpGroup(TyperGroup):
    """The root Typer group; tidies the help of each command it hands out (see the module docstring)."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None and not getattr(command, "_deft_tidied", False):
            for param in command.get_params(ctx):
                tidy_param(param)
            # Panels are printed in the order their first option appears; arguments keep their order.
            rank = {panel: i for i, panel in enumerate(PANEL_ORDER)}
            command.params.sort(
                key=lambda p: -1 if p.param_type_name == "argument" else rank.get(p.rich_help_panel, len(rank))
            )
            command._deft_tidied = True
        return command

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params
