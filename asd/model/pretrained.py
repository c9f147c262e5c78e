"""Pretrained EAT checkpoints: where one lies, reading it without running code, its fingerprint, the
encoder built from it (asd/model/checkpoints.py writes and reads the tuned-model files built on it).

An EAT checkpoint is a Hugging Face folder (config.json + model.safetensors or pytorch_model.bin, every
key prefixed ``model.``), a Hugging Face hub id (``owner/name`` or ``owner/name@revision``, fetched
into the local cache; only config.json and the weights file, never code), or an original fairseq
``.pt`` file. No file runs code when read: weights load with safetensors or torch's weights-only
unpickler, and the omegaconf / argparse objects fairseq pickles into its config are rebuilt as plain
dicts by inert stand-ins.

    resolved = resolve_checkpoint("worstchan/EAT-base_epoch30_pretrain")   # or a folder / .pt path
    encoder = build_encoder(resolved.path)
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from asd.base.files import load_plain, unpickling_reason
from asd.base.freshness import file_key, settings_key
from asd.model.model import EATConfig, EATEncoder, sincos_position_table

HF_PREFIX = "model."
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
RANDOM_INIT_WARNING = (
    "WARNING: no EAT checkpoint given: building a RANDOMLY INITIALISED '{size}' encoder. "
    "Embeddings and AUROC will be far below a pretrained EAT; pass a downloaded checkpoint "
    "directory (config.json + model.safetensors) or a Hugging Face id as EAT_CHECKPOINT for real results."
)
_HUB_NAME = r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?"
HUB_ID = re.compile(rf"(?P<id>{_HUB_NAME}/{_HUB_NAME})(?:@(?P<revision>[\w./-]+))?")
NUM_HEADS_KEYS = ("cfg.model.num_heads", "cfg.model.pretrained_model_args.model.num_heads")


# ----------------------------------------------------------------------------- where a checkpoint lies


class ResolvedCheckpoint(NamedTuple):
    """A checkpoint on this machine; for a hub id also the id and the commit the snapshot holds."""

    path: Path
    hub_id: str | None = None
    revision: str | None = None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment names it now (huggingface_hub reads it only at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def _hub_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _from_hub(spec: str, hub_id: str, revision: str | None) -> ResolvedCheckpoint:
    from huggingface_hub import snapshot_download

    cache, offline = hub_cache_dir(), _hub_offline()
    options = dict(repo_id=hub_id, revision=revision, cache_dir=cache, local_files_only=offline)
    try:
        folder = Path(snapshot_download(allow_patterns=["config.json", WEIGHT_FILES[0]], **options))
        if not (folder / WEIGHT_FILES[0]).is_file():  # an older repo with pytorch_model.bin only
            folder = Path(snapshot_download(allow_patterns=list(WEIGHT_FILES[1:]), **options))
    except Exception as error:  # not cached while offline, no network, unknown repo or revision
        why = (
            "HF_HUB_OFFLINE is set, so nothing is downloaded"
            if offline
            else f"downloading failed: {type(error).__name__}: {error}"
        )
        raise FileNotFoundError(
            f"EAT checkpoint {spec}: no such local path, and the Hugging Face repo {hub_id} (revision "
            f"{revision or 'main'}) is not in the cache {cache} ({why}). Run once with network access "
            f"(HF_HUB_OFFLINE unset; HF_HOME or HF_HUB_CACHE choose the cache), or on a connected machine "
            f"run `hf download {hub_id} config.json {WEIGHT_FILES[0]} --local-dir DIR` and pass DIR"
        ) from error
    return ResolvedCheckpoint(folder, hub_id, folder.name)


def resolve_checkpoint(spec: str | os.PathLike) -> ResolvedCheckpoint:
    """An existing local folder or file as is; else a Hugging Face id ``owner/name[@revision]`` from the cache.

    The hub cache is HF_HUB_CACHE, else HF_HOME/hub, read when called; with HF_HUB_OFFLINE=1 nothing
    is downloaded and a cached snapshot is used. Anything else is "not found".
    """
    path = Path(spec).expanduser()
    if path.exists():
        return ResolvedCheckpoint(path.resolve())
    match = HUB_ID.fullmatch(str(spec))
    if match is None:
        raise FileNotFoundError(
            f"EAT checkpoint {spec} not found: give a Hugging Face folder (config.json + "
            f"{' or '.join(WEIGHT_FILES)}), an original fairseq .pt file or a Hugging Face id such as "
            "worstchan/EAT-base_epoch30_pretrain"
        )
    return _from_hub(str(spec), match["id"], match["revision"])


# ----------------------------------------------------------------------------- Hugging Face folders


def _weights_file(checkpoint_dir: Path) -> Path:
    for name in WEIGHT_FILES:
        if (checkpoint_dir / name).is_file():
            return checkpoint_dir / name
    raise ValueError(
        f"{checkpoint_dir} is not a complete EAT checkpoint folder: it has none of {', '.join(WEIGHT_FILES)}"
    )


def read_hf_config(checkpoint_dir: Path) -> EATConfig:
    """The EATConfig of a Hugging Face folder's config.json (model_type "eat")."""
    path = checkpoint_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"{checkpoint_dir} is not an EAT checkpoint folder: it has no config.json")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    model_type = values.get("model_type") if isinstance(values, dict) else type(values).__name__
    if model_type != "eat":
        raise ValueError(f"{path} is not an EAT config (model_type {model_type!r}, expected 'eat')")
    try:
        return EATConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # corrupt / truncated / not a safetensors file at all
            raise ValueError(f"cannot read EAT weights {path}: {type(error).__name__}: {error}") from error
    state = load_plain(path, "EAT weights")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def _read_hf_folder(path: Path) -> tuple[EATConfig, dict[str, torch.Tensor], Path]:
    config = read_hf_config(path)
    weights = _weights_file(path)
    state = _read_state(weights)
    unprefixed = [k for k in state if not k.startswith(HF_PREFIX)]
    if unprefixed:
        raise ValueError(
            f"{weights}: keys without the Hugging Face '{HF_PREFIX}' prefix, e.g. {unprefixed[:3]}; "
            "this is not a released EAT checkpoint in the HF layout"
        )
    return config, {k[len(HF_PREFIX) :]: v for k, v in state.items()}, weights


# ----------------------------------------------------------------------------- fairseq .pt files


class _PickledConfig:
    """Inert stand-in for a config class fairseq pickles: keeps its constructor args and state, runs nothing."""

    pickled_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _PickledConfig:
        inst = super().__new__(cls)
        inst.args, inst.state = args, None
        return inst

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _empty_dict(*args: Any) -> dict:
    """collections.defaultdict stand-in (omegaconf's resolver cache): a plain dict."""
    return {}


# config type references (not calls) that fairseq's omegaconf metadata holds
_BUILTIN_TYPES = {f"builtins.{t.__name__}": t for t in (dict, list, int, float, str, bool)}
# omegaconf containers, nodes and metadata; typing annotations; fairseq's config dataclasses and enums
_STAND_IN_MODULES = ("omegaconf.", "typing.", "fairseq.")
# always let through: a legacy (non-zip) file cannot list its globals before it is read
_STAND_IN_NAMES = (
    "argparse.Namespace",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.Metadata",
    "omegaconf.base.ContainerMetadata",
    "typing.Any",
    *(f"omegaconf.nodes.{node}Node" for node in ("Any", "String", "Integer", "Float", "Boolean", "Enum")),
)


def _config_globals(names: set[str]) -> dict[str, Any]:
    """name -> what the unpickler gets for it: builtin types, a plain dict maker, inert stand-in classes."""
    stand_ins = {
        name: type(name.rsplit(".", 1)[-1], (_PickledConfig,), {"pickled_name": name})
        for name in names | set(_STAND_IN_NAMES)
        if name.startswith(_STAND_IN_MODULES) or name in _STAND_IN_NAMES
    }
    return {**_BUILTIN_TYPES, "collections.defaultdict": _empty_dict, **stand_ins}


def _load_fairseq_pickle(path: Path) -> Any:
    """torch.load with the weights-only unpickler, letting fairseq's config objects through as stand-ins."""
    try:  # zip checkpoints list their globals up front; legacy files are checked by the unpickler as it goes
        names = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (ValueError, RuntimeError, OSError):
        names = set()
    allowed = _config_globals(names)
    refused = sorted(names - set(allowed))
    if refused:
        raise ValueError(
            f"refusing to read {path}: it would call {', '.join(refused)}, and an EAT checkpoint "
            "holds tensors and configuration only, never code"
        )
    try:
        with torch.serialization.safe_globals([(value, name) for name, value in allowed.items()]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError
    ) as error:  # a global outside the allow-list (legacy file), or no pickle at all
        raise ValueError(
            f"refusing to read {path}: not an EAT checkpoint of tensors and configuration only "
            f"({unpickling_reason(error)})"
        ) from error
    except Exception as error:  # not a torch file, or truncated
        raise ValueError(
            f"{path} is not an EAT checkpoint (tensors and configuration only): "
            f"{type(error).__name__}: {error}"
        ) from error


def _plain(value: Any) -> Any:
    """A config tree with the stand-ins rebuilt as dicts, lists and values."""
    if isinstance(value, _PickledConfig):
        state = value.state if isinstance(value.state, dict) else {}
        if value.pickled_name.endswith(("DictConfig", "ListConfig")):
            return _plain(state.get("_content"))  # a dict / list of nodes, or None / "???" / "${...}"
        if value.pickled_name.startswith("omegaconf.nodes."):
            return _plain(state.get("_val"))
        if state:  # argparse.Namespace, a config dataclass
            return _plain(state)
        return _plain(value.args[0]) if len(value.args) == 1 else value.pickled_name  # an enum value, a type
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _lookup(tree: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _fairseq_num_heads(raw: dict[str, Any], path: Path) -> int:
    """The head count saved in the file: pre-trained at cfg.model, fine-tuned under pretrained_model_args."""
    tree = {"cfg": _plain(raw.get("cfg"))}
    for key in NUM_HEADS_KEYS:
        value = _lookup(tree, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: {key} is {value!r}, not a positive head count")
        return value
    raise ValueError(
        f"{path}: the fairseq checkpoint records no head count (neither {' nor '.join(NUM_HEADS_KEYS)})"
    )


def _fairseq_to_hf(weights: dict[str, Any], num_heads: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map an original fairseq/data2vec-2.0 EAT state dict onto this module's names (and a config).

    Mapping (fairseq's data2vec 2.0 ImageEncoder, which EAT's encoder is):
      modality_encoders.IMAGE.local_encoder.proj.*               -> local_encoder.proj.*
      modality_encoders.IMAGE.fixed_positional_encoder.positions -> fixed_positional_encoder.positions
      modality_encoders.IMAGE.extra_tokens                       -> extra_tokens
      modality_encoders.IMAGE.context_encoder.norm.*             -> pre_norm.*
      blocks.*                                                   -> blocks.*
      fc_norm.*, head.* (fine-tuned files hold the encoder under model.) -> fc_norm.*, head.*
    The EMA teacher (_ema), the decoders and recon_proj serve pre-training only and are dropped;
    anything else keeps its name, so the strict load reports it. num_heads comes from the saved config.
    """
    mapped = {}
    for key, value in weights.items():
        key = key[len("model.") :] if key.startswith("model.") else key
        if key.startswith(
            ("_ema", "ema.", "decoder.", "shared_decoder.", "recon_proj.", "modality_encoders.IMAGE.decoder.")
        ) or not isinstance(value, torch.Tensor):
            continue
        key = key.replace("modality_encoders.IMAGE.context_encoder.norm.", "pre_norm.")
        mapped[key.replace("modality_encoders.IMAGE.", "")] = value
    embed_dim = mapped["extra_tokens"].shape[-1] if "extra_tokens" in mapped else 768
    positions = mapped.get("fixed_positional_encoder.positions")
    config = {
        "embed_dim": embed_dim,
        "depth": len({k.split(".")[1] for k in mapped if k.startswith("blocks.")}),
        "num_heads": num_heads,
        "max_length": positions.shape[1] // 8 if positions is not None else 768,
        "model_variant": "finetune" if "head.weight" in mapped else "pretrain",
    }
    if "head.weight" in mapped:
        config["num_classes"] = mapped["head.weight"].shape[0]
    return mapped, config


def _read_fairseq(path: Path) -> tuple[EATConfig, dict[str, torch.Tensor], Path]:
    raw = _load_fairseq_pickle(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise ValueError(
            f"{path} is not an EAT checkpoint: a .pt file must be an original fairseq checkpoint "
            "(a dict with a 'model' state dict)"
        )
    state, values = _fairseq_to_hf(raw["model"], _fairseq_num_heads(raw, path))
    print(f"note: {path} read as a fairseq checkpoint (num_heads={values['num_heads']})")
    try:
        return EATConfig.from_dict(values), state, path
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


# ----------------------------------------------------------------------------- reading and building


def read_checkpoint(checkpoint: str | os.PathLike) -> tuple[EATConfig, dict[str, torch.Tensor], Path]:
    """(config, state with the ``model.`` prefix removed, weights file) of a local HF folder or fairseq .pt."""
    path = Path(checkpoint)
    if path.is_dir():
        return _read_hf_folder(path)
    if not path.exists():
        raise FileNotFoundError(f"EAT checkpoint {path} not found")
    if path.suffix == ".pt":
        return _read_fairseq(path)
    hint = (
        f"; give the folder holding it, {path.parent}" if path.name in (*WEIGHT_FILES, "config.json") else ""
    )
    raise ValueError(
        f"{path} is not an EAT checkpoint: give a Hugging Face folder (config.json + "
        f"{' or '.join(WEIGHT_FILES)}) or an original fairseq .pt file{hint}"
    )


def load_state_strict(encoder: EATEncoder, state: dict[str, torch.Tensor], source: Path) -> None:
    """Copy ``state`` into ``encoder``; any missing, unexpected or mis-shaped key stops with all of them listed."""
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or misshaped:

        def listing(title: str, items: list[str]) -> str:
            shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
            return f"\n  {title} ({len(items)}): " + (
                "none" if not items else "\n    " + "\n    ".join(shown)
            )

        raise ValueError(
            f"EAT checkpoint {source} does not match the {encoder.config.embed_dim}-dim, "
            f"{encoder.config.depth}-block {encoder.config.model_variant} encoder its config describes:"
            + listing("missing keys", missing)
            + listing("unexpected keys", unexpected)
            + listing("mis-shaped keys", misshaped)
        )
    encoder.load_state_dict(state, strict=True)


def backbone_fingerprint(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Identity of a local backbone checkpoint: content keys (asd.base.freshness) of its config and weights
    file, and the weights file's name and size."""
    path = Path(checkpoint)
    weights = _weights_file(path) if path.is_dir() else path
    config = (
        json.loads((path / "config.json").read_text()) if path.is_dir() else None
    )  # content, not formatting
    return {
        "config_key": settings_key(config),
        "weights_key": file_key(weights),
        "weights_file": weights.name,
        "size": weights.stat().st_size,
    }


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over named tensors (names, shapes, dtypes and bytes), in sorted name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_checksum(module: nn.Module) -> str:
    """tensors_checksum of a module's whole state dict."""
    return tensors_checksum(module.state_dict())


def build_encoder(
    checkpoint: str | os.PathLike | None, size: str = "base", init_seed: int = 0, verbose: bool = True
) -> EATEncoder:
    """Load an EAT checkpoint (folder, .pt or hub id) strictly, or (checkpoint None) build a random ``size`` encoder.

    ``encoder.source`` records where the weights came from: the local path and its fingerprint, plus
    the hub id and commit for a hub id; for a random encoder its size, seed and weights checksum.
    """
    if checkpoint is None or str(checkpoint) == "":
        if verbose:
            print(RANDOM_INIT_WARNING.format(size=size))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            encoder = EATEncoder(EATConfig.preset(size))
        encoder.source = {
            "checkpoint": None,
            "size": size,
            "init_seed": init_seed,
            "checksum": state_checksum(encoder),
            "torch": str(torch.__version__),
        }
        return encoder
    resolved = resolve_checkpoint(checkpoint)
    config, state, weights = read_checkpoint(resolved.path)
    encoder = EATEncoder(config)
    load_state_strict(encoder, state, weights)
    table = sincos_position_table(config.embed_dim, config.max_length, config.freq_patches)
    if verbose and not torch.allclose(encoder.fixed_positional_encoder.positions, table, atol=1e-4):
        print(
            f"note: the position table stored in {weights} differs from the 2-D sin-cos formula; using the stored one"
        )
    encoder.source = {"checkpoint": str(resolved.path), "fingerprint": backbone_fingerprint(resolved.path)}
    if resolved.hub_id is not None:
        encoder.source.update(hub_id=resolved.hub_id, revision=resolved.revision)
    if verbose:
        print(
            f"loaded EAT encoder from {weights} (dim {config.embed_dim}, depth {config.depth}, {config.model_variant})"
        )
    return encoder
