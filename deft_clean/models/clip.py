"""Everything that touches open_clip: loading a CLIP model, its preprocessing, its internals,
and ``torch.compile`` with an eager fallback.

Other modules reach open_clip only through the functions here, so a change in open_clip's layout is
fixed in one file.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..run.errors import UsageError, WeightsError, option
from .limits import check_model_config

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
SCHEMAS = ("hf-hub:", "local-dir:")  # open_clip's model sources: a hub repo or a folder as push_to_hf_hub writes it
HUB_CONFIG = "open_clip_config.json"
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass
class LoadedClip:
    """An open_clip model with what the rest of deft-clean needs to know about it."""

    model: nn.Module  # open_clip CLIP or CustomTextCLIP, in eval mode, on the requested device
    tokenizer: object  # callable: list[str] -> LongTensor [N, context_length]
    model_name: str  # open_clip model name (a config file's stem for a JSON path)
    image_size: int  # square input size of the vision tower
    mean: tuple[float, float, float]  # per-channel normalisation mean
    std: tuple[float, float, float]  # per-channel normalisation std


def resolve_device(device: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a torch.device, checking that it exists."""
    text = device.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"{option('device')} {device}: CUDA is not available on this machine (use {option('device', 'cpu')})"
            )
        resolved = torch.device(text)
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            visible = torch.cuda.device_count()
            raise UsageError(f"{option('device')} {device}: only {visible} CUDA device(s) are visible")
        return resolved
    raise UsageError(f"{option('device')} must be auto, cpu, cuda or cuda:N, got {device!r}")


def _register_model_name(model: str) -> str:
    """Accept an open_clip model name or a path to a model-config JSON (its stem becomes the name)."""
    import open_clip

    if model.lower().endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise UsageError(f"{option('model')} config file not found: {path}")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{option('model')} {path}: not valid JSON ({exc.msg})") from None
        except (UnicodeDecodeError, RecursionError) as exc:
            kind = type(exc).__name__
            raise UsageError(f"{option('model')} {path}: not a UTF-8 JSON model config ({kind})") from None
        if not isinstance(config, dict):
            raise UsageError(f"{option('model')} {path}: not an open_clip model config (not a JSON object)")
        if not {"vision_cfg", "text_cfg", "embed_dim"} <= set(config):
            raise UsageError(
                f"{option('model')} {path}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)"
            )
        check_model_config(config, f"{option('model')} {path}")  # bounds before open_clip builds anything
        open_clip.add_model_config(path)
        return path.stem
    if model.startswith(SCHEMAS):
        return _register_schema(model)
    if model not in open_clip.list_models():
        raise UsageError(
            f"unknown {option('model')} {model!r}: pass an open_clip model name (e.g. ViT-B-16), "
            "hf-hub:ORG/REPO, local-dir:FOLDER or a model-config JSON path"
        )
    return model


@dataclass(frozen=True)
class SourceModel:
    """A model named by an open_clip source (``hf-hub:ORG/REPO`` or ``local-dir:FOLDER``): its config file's
    contents and the file its weights come from."""

    config: dict[str, Any]  # the model_cfg (text_cfg's tokenizer pointed at the folder for local-dir)
    preprocess: dict[str, Any]  # preprocess_cfg: mean, std, ...
    weights: Path | None  # None: resolved without looking for weights

    @property
    def name(self) -> str:
        """The name it is registered under with open_clip: neutral (no "siglip" for open_clip to guess from) and
        fixed by the config, so a results file and a model folder name the same architecture."""
        digest = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:12]
        return f"open-clip-source-{digest}"


def weights_label(model: str, pretrained: str) -> str:
    """What ``--pretrained`` means for ``model``: the tag or file as given, or "from hf-hub" / "from local-dir" for
    a source's own weights (the tag is not used there)."""
    if model.startswith(SCHEMAS) and pretrained.strip().lower() not in ("none", ""):
        return f"from {model.partition(':')[0]}"
    return pretrained


def source_model(model: str, *, weights: bool) -> SourceModel:
    """Read the config (and, with ``weights``, find the weights file) of an ``hf-hub:`` or ``local-dir:`` model,
    as open_clip's ``create_model`` would: from the folder, or from the hub through its cache."""
    schema, _, identifier = model.partition(":")
    if not identifier.strip():
        raise UsageError(f"{option('model')} {model!r}: name a repository (hf-hub:ORG/REPO) or a folder")
    if schema == "local-dir":
        folder = Path(identifier).expanduser()
        config_file = folder / HUB_CONFIG
        if not config_file.is_file():
            raise UsageError(
                f"{option('model')} {model}: {config_file} not found; a local-dir: folder holds {HUB_CONFIG} and the "
                f"weights ({', '.join(HUB_WEIGHTS)}), as open_clip's push_to_hf_hub writes them"
            )
        found = [folder / f for f in HUB_WEIGHTS if (folder / f).is_file()] if weights else [None]
        if not found:
            raise WeightsError(f"{option('model')} {model}: none of {', '.join(HUB_WEIGHTS)} in {folder}")
        weights_file = found[0]
    else:
        config_file = _hub_file(identifier, HUB_CONFIG)
        weights_file = _hub_file(identifier, *HUB_WEIGHTS) if weights else None
    where = f"{option('model')} {model}: {HUB_CONFIG}"
    try:
        document = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as exc:
        raise UsageError(f"{where} could not be read as JSON ({type(exc).__name__})") from None
    config = document.get("model_cfg") if isinstance(document, dict) else None
    if not isinstance(config, dict) or not {"vision_cfg", "text_cfg", "embed_dim"} <= set(config):
        raise UsageError(f"{where} has no open_clip model_cfg (embed_dim, vision_cfg, text_cfg)")
    check_model_config(config, where)
    text_cfg = config.get("text_cfg")
    if schema == "local-dir" and isinstance(text_cfg, dict) and "hf_tokenizer_name" in text_cfg:
        text_cfg["hf_tokenizer_name"] = str(folder)  # open_clip reads a local-dir model's tokenizer from the folder
    preprocess = document.get("preprocess_cfg")
    return SourceModel(config, preprocess if isinstance(preprocess, dict) else {}, weights_file)


_REGISTERED: list[str] = []  # private folder of the source models' configs (removed at exit)


def _register_schema(model: str) -> str:
    """Register an ``hf-hub:``/``local-dir:`` model's config with open_clip under :attr:`SourceModel.name`."""
    import open_clip

    source = source_model(model, weights=False)
    if not _REGISTERED:
        _REGISTERED.append(tempfile.mkdtemp(prefix="deft-clean-models-"))
        atexit.register(shutil.rmtree, _REGISTERED[0], True)
    path = Path(_REGISTERED[0]) / f"{source.name}.json"
    path.write_text(json.dumps(source.config))
    open_clip.add_model_config(path)
    return source.name


def model_config(model: str) -> dict[str, Any] | None:
    """The open_clip config behind ``--model`` when it is not one of open_clip's names: a config JSON's contents or
    an ``hf-hub:``/``local-dir:`` model's model_cfg (read again); None for a built-in name."""
    if model.startswith(SCHEMAS):
        return source_model(model, weights=False).config
    if model.lower().endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise UsageError(f"the detect run used the model config {path}, which no longer exists")
        return json.loads(path.read_text(encoding="utf-8"))
    return None


def _hub_file(repo: str, *names: str) -> Path:
    """The first of ``names`` that repository ``repo`` of the Hugging Face hub has: from the cache, or downloaded
    when the hub can be reached; else one line saying how to fill the cache."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        raise UsageError("hf-hub: models need the huggingface_hub package") from None
    for name in names:
        cached = try_to_load_from_cache(repo, name)
        if isinstance(cached, str):
            return Path(cached)
    advice = (
        f"{', '.join(names)} of hf-hub:{repo} not in the Hugging Face cache and cannot be downloaded ({{why}}); on a "
        f"machine with internet run `python -c \"import open_clip; open_clip.create_model('hf-hub:{repo}')\"` to "
        "fill the cache (~/.cache/huggingface), or copy the repository to a folder and pass local-dir:FOLDER"
    )
    _hub_reachable(advice)
    failure = ""
    for name in names:
        try:
            return Path(hf_hub_download(repo, name))
        except Exception as exc:  # the hub's errors come in many types; the next candidate may exist
            failure = type(exc).__name__
    raise WeightsError(advice.format(why=failure or "not found"))


def _hub_reachable(advice: str, *, timeout: float = 3.0) -> None:
    """Raise :class:`WeightsError` with ``advice`` (its ``{why}`` filled in) within seconds when the hub is off:
    HF_HUB_OFFLINE, or its host unreachable (huggingface_hub would retry for about a minute otherwise)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline or getattr(constants, "HF_HUB_OFFLINE", False):
        raise WeightsError(advice.format(why="HF_HUB_OFFLINE is set"))
    host = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        raise WeightsError(advice.format(why=f"{host} is not reachable")) from None


def _hub_files(name: str, tag: str) -> tuple[str, list[str]] | None:
    """(repo id, candidate file names) of a pretrained tag hosted on the Hugging Face hub, else None."""
    import open_clip

    hub = open_clip.get_pretrained_cfg(name, tag).get("hf_hub", "")
    if not hub:
        return None
    if hub.endswith("/"):
        repo, filename = hub.rstrip("/"), "open_clip_pytorch_model.bin"
    else:
        repo, filename = os.path.split(hub)
    candidates = [filename]
    if filename == "open_clip_pytorch_model.bin":
        candidates.insert(0, "open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        candidates.insert(0, filename[:-4] + ".safetensors")
    return repo, candidates


def _check_download_possible(name: str, tag: str) -> None:
    """Fail within seconds when the weights are neither cached nor downloadable (offline machine).

    Without this, huggingface_hub retries for about a minute and logs dozens of lines first.
    """
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return
    files = _hub_files(name, tag)
    if files is None:
        return
    repo, candidates = files
    if any(isinstance(try_to_load_from_cache(repo, f), str) for f in candidates):
        return
    advice = (
        f"the {name}/{tag} weights are not in the Hugging Face cache and cannot be downloaded "
        "({why}); on a machine with internet run "
        f"`python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{tag}')\"` to fill the "
        f"cache (~/.cache/huggingface), or pass a checkpoint file as {option('pretrained')}; set HF_HUB_OFFLINE=1 "
        "to never try the network"
    )
    _hub_reachable(advice)


def load_clip(
    model: str, pretrained: str, *, device: torch.device, quiet: bool = False, announce: bool = False, seed: int = 0
) -> LoadedClip:
    """Build an open_clip model and load its weights.

    Args:
        model: open_clip model name or a path to an open_clip model-config JSON.
        pretrained: an open_clip pretrained tag (``openai``, ``laion2b_s34b_b88k``, ...), a local
            checkpoint file (.pt/.pth/.bin/.safetensors), or ``none`` for random weights.
        device: where the model lives.
        announce: unless quiet, say "loading model ..." on stderr once the names are checked (loading, or
            downloading, the weights can take a while before any progress bar).
        seed: seeds the random initialisation of ``pretrained="none"`` (two runs get the same weights).
    """
    import open_clip

    name = _register_model_name(model)
    tag = pretrained.strip()
    weights: str | None
    preprocess: dict[str, Any] | None = None
    if model.startswith(SCHEMAS) and tag.lower() not in ("none", ""):
        # open_clip's sources carry their own weights and preprocessing; --pretrained names none of them
        source = source_model(model, weights=True)
        weights, preprocess = str(source.weights), source.preprocess
        tag = weights
    if tag.lower() in ("none", ""):
        weights = None
        if not quiet:
            logging.getLogger("deft_clean").warning(
                "--pretrained none: random weights; prompts mean nothing until trained"
            )
    elif os.path.sep in tag or tag.lower().endswith(CHECKPOINT_SUFFIXES):
        if not Path(tag).is_file():
            raise WeightsError(f"weights file not found: {tag}")
        weights = tag
        if preprocess is None:
            preprocess = _tags_preprocess(name)
    else:
        known = open_clip.list_pretrained_tags_by_model(name)
        if tag not in known:
            raise UsageError(
                f"{option('pretrained')} {tag!r} is not a tag for {name} (known: {', '.join(known) or 'none'}); "
                "pass a local checkpoint file or 'none'"
            )
        weights = tag
        _check_download_possible(name, tag)
    needs_hf = _needs_transformers(name)
    if needs_hf and importlib.util.find_spec("transformers") is None:
        raise UsageError(
            f"{option('model')} {name} needs the Hugging Face `transformers` package ({needs_hf}); "
            "install it with: pip install 'deft-clean[hf]'"
        )
    if announce and not quiet:
        label = weights_label(model, pretrained)
        print(f"loading model {model} ({label}) on {device} ...", file=sys.stderr, flush=True)
    try:
        with torch.random.fork_rng(devices=[]):  # random weights are seeded, without touching the caller's RNG
            torch.manual_seed(seed)
            # random means random: no base weights fetched for a Hugging Face text tower or a timm trunk
            extra: dict[str, Any] = {} if weights is not None else {"pretrained_text": False, "pretrained_image": False}
            if preprocess:
                extra["force_preprocess_cfg"] = preprocess
            clip = open_clip.create_model(name, pretrained=weights, device=device, **extra)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        if weights is not None and not Path(weights).is_file():
            raise WeightsError(
                f"could not get the {name}/{weights} weights ({type(exc).__name__}); on a machine with internet "
                f"run `python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{weights}')\"` "
                "to fill the cache (~/.cache/huggingface), or download the checkpoint and pass it as "
                f"{option('pretrained')}"
            ) from exc
        raise WeightsError(f"could not load {name} with weights {weights}: {exc}") from exc
    clip.eval()
    tokenizer = _tokenizer(name)
    size = clip.visual.image_size
    image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(getattr(clip.visual, "image_mean", None) or OPENAI_MEAN)
    std = tuple(getattr(clip.visual, "image_std", None) or OPENAI_STD)
    return LoadedClip(clip, tokenizer, name, image_size, mean, std)  # type: ignore[arg-type]


def _tags_preprocess(name: str) -> dict[str, Any] | None:
    """The normalisation of built-in model ``name``'s pretrained tags when they all agree (SigLIP's 0.5/0.5, ...):
    what a local checkpoint of that architecture was trained with. None where the tags differ or there are none
    (open_clip's default, OpenAI's mean and std, is used then)."""
    import open_clip

    if name not in open_clip.list_models():
        return None  # a config file of the user's: the default
    seen = set()
    for tag in open_clip.list_pretrained_tags_by_model(name):
        cfg = open_clip.get_pretrained_cfg(name, tag)
        seen.add((tuple(cfg.get("mean") or OPENAI_MEAN), tuple(cfg.get("std") or OPENAI_STD)))
    if len(seen) != 1:
        return None
    mean, std = seen.pop()
    return {"mean": mean, "std": std}


def _needs_transformers(name: str) -> str:
    """Why model ``name`` needs ``transformers`` (its text tower or tokenizer), or "" when it does not."""
    import open_clip

    text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    if text_cfg.get("hf_model_name"):
        return f"a Hugging Face text tower, {text_cfg['hf_model_name']}"
    if text_cfg.get("hf_tokenizer_name") or "siglip" in name.lower():
        return f"a Hugging Face tokenizer, {text_cfg.get('hf_tokenizer_name') or 'SigLIP'}"
    return ""


def _tokenizer(name: str) -> Any:
    """open_clip's tokenizer for ``name``; a Hugging Face tokenizer whose files are neither in a local folder nor
    in the cache (and cannot be downloaded) is one line naming the files and where they were looked for."""
    import open_clip

    try:
        return open_clip.get_tokenizer(name)
    except (OSError, ValueError) as exc:
        text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
        source = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name") or name
        cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub"
        )
        raise WeightsError(
            f"the tokenizer files of {source} (tokenizer.json or its vocabulary, tokenizer_config.json) are not in "
            f"a local folder of that name nor in the Hugging Face cache ({cache}) and could not be downloaded "
            f'({type(exc).__name__}); on a machine with internet run `python -c "import open_clip; '
            f"open_clip.get_tokenizer('{name}')\"` to fill the cache, or point the config's hf_tokenizer_name at a "
            "folder holding them"
        ) from None


def freeze(module: nn.Module) -> None:
    """Turn off gradients for every parameter of a module."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def logit_scale(clip: nn.Module) -> torch.Tensor:
    """The model's own (learned, frozen here) logit scale, as a scalar tensor (already exp'ed)."""
    return clip.logit_scale.detach().exp()


def encode_image(clip: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised image features [B, E]."""
    return clip.encode_image(images, normalize=True)


ZERO_SHOT_TEMPLATE = "a photo of a {}."


@torch.no_grad()
def zero_shot_text(loaded: LoadedClip, prompt_names: list[str], template: str = ZERO_SHOT_TEMPLATE) -> torch.Tensor:
    """L2-normalised text features [K, E] of ``template`` filled with each class's prompt name."""
    device = next(loaded.model.parameters()).device
    tokens = loaded.tokenizer([template.format(name) for name in prompt_names]).to(device)  # [K, L]
    return loaded.model.encode_text(tokens, normalize=True).float()


class CompiledOrEager:
    """A callable running ``torch.compile(function)``; if compiling or the compiled call fails, it warns once
    and runs ``function`` eagerly from then on (a missing C++ compiler, an unsupported op, an old GPU)."""

    def __init__(self, function: Callable[..., Any], name: str) -> None:
        self.eager, self.name = function, name
        self.compiled: Callable[..., Any] | None = torch.compile(function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any failure to compile falls back to eager
                logging.getLogger("deft_clean").warning(
                    "torch.compile failed for %s (%s: %s); running it eagerly",
                    self.name,
                    type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "",
                )
                self.compiled = None
        return self.eager(*args, **kwargs)


def compile_module(module: torch.nn.Module, name: str) -> torch.nn.Module:
    """Make ``module``'s forward a :class:`CompiledOrEager` in place (its parameters and state dict unchanged)."""
    if not isinstance(module.__dict__.get("forward"), CompiledOrEager):
        module.forward = CompiledOrEager(module.forward, name)
    return module
