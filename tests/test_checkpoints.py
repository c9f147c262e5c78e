"""asd/model/pretrained.py: HF folders (strict), hub ids through the cache, fairseq files without code;
asd/model/checkpoints.py: tuned files."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import zipfile

import pytest
import torch

import asd.model.checkpoints as C
import asd.model.pretrained as P
from asd.base import freshness
from asd.data.dataset import LabelIndex
from asd.embed.embed import embed_fbanks
from asd.model import heads
from asd.model import model as M
from asd.model.model import base_encoder
from eat_checkpoint_support import (
    COMMIT,
    TINY_HF_CONFIG,
    fairseq_layout,
    write_eat_checkpoint,
    write_hub_snapshot,
)


def _fbank(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(frames, 128, generator=torch.Generator().manual_seed(seed))


def _outputs(encoder: M.EATEncoder) -> torch.Tensor:
    with torch.no_grad():
        return encoder.eval()(_fbank(64, 3)[None, None])


# ----------------------------------------------------------------------------- Hugging Face folders


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_hf_checkpoint_loads_key_for_key(tmp_path, weights, capsys):
    written = write_eat_checkpoint(tmp_path / "eat", weights=weights)
    encoder = P.build_encoder(tmp_path / "eat")
    assert "loaded EAT encoder" in capsys.readouterr().out
    state = encoder.state_dict()
    assert set(state) == {k[len("model.") :] for k in written}
    for key, value in written.items():
        assert torch.equal(state[key[len("model.") :]], value), key
    assert encoder.config.embed_dim == TINY_HF_CONFIG["embed_dim"] and not hasattr(encoder, "head")
    assert encoder.source["checkpoint"] == str((tmp_path / "eat").resolve())
    assert "hub_id" not in encoder.source


def test_finetune_checkpoint_loads_fc_norm_and_head(tmp_path):
    written = write_eat_checkpoint(tmp_path / "eat", variant="finetune")
    assert "model.head.weight" in written and "model.fc_norm.weight" in written
    encoder = P.build_encoder(tmp_path / "eat")
    assert torch.equal(encoder.head.weight, written["model.head.weight"])
    assert encoder.head.weight.shape == (TINY_HF_CONFIG["num_classes"], TINY_HF_CONFIG["embed_dim"])
    assert torch.equal(encoder.fc_norm.bias, written["model.fc_norm.bias"])


def _rewrite(folder, change):
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("missing", r"missing keys \(1\):\s+blocks\.1\.mlp\.fc2\.bias"),
        ("extra", r"unexpected keys \(1\):\s+decoder\.weight"),
        (
            "shape",
            r"mis-shaped keys \(1\):\s+blocks\.0\.attn\.qkv\.weight: file \(192, 32\) vs model \(192, 64\)",
        ),
        ("broken", r"cannot read EAT weights .*model\.safetensors"),
        ("no_prefix", r"without the Hugging Face 'model\.' prefix"),
        ("config", r"config\.json is not valid JSON"),
        (
            "no_weights",
            r"is not a complete EAT checkpoint folder: it has none of model\.safetensors, pytorch_model\.bin",
        ),
    ],
)
def test_corrupted_checkpoint_fails_clearly(tmp_path, problem, expected):
    folder = tmp_path / "eat"
    write_eat_checkpoint(folder)
    weights = folder / "model.safetensors"
    if problem == "missing":
        _rewrite(folder, lambda s: s.pop("model.blocks.1.mlp.fc2.bias"))
    elif problem == "extra":
        _rewrite(folder, lambda s: s.update({"model.decoder.weight": torch.zeros(3)}))
    elif problem == "shape":
        _rewrite(folder, lambda s: s.update({"model.blocks.0.attn.qkv.weight": torch.zeros(192, 32)}))
    elif problem == "broken":
        weights.write_bytes(weights.read_bytes()[:200])
    elif problem == "no_prefix":
        _rewrite(folder, lambda s: s.update({k[6:]: s.pop(k) for k in list(s)}))
    elif problem == "config":
        (folder / "config.json").write_text("{not json")
    elif problem == "no_weights":
        weights.unlink()
    with pytest.raises(ValueError, match=expected) as info:
        P.build_encoder(folder)
    if problem in ("missing", "extra", "shape"):
        message = str(info.value)
        assert str(weights) in message
        assert "missing keys" in message and "unexpected keys" in message and "mis-shaped keys" in message


# ----------------------------------------------------------------------------- not a checkpoint, not found


def _not_a_checkpoint(tmp_path, case: str):
    """A path that exists but is no EAT checkpoint, and the file or folder the error must name."""
    if case in ("random_bin", "random_pt"):
        path = tmp_path / ("weights.bin" if case == "random_bin" else "weights.pt")
        path.write_bytes(os.urandom(256))
        return path, path
    if case == "stray_safetensors":
        write_eat_checkpoint(tmp_path / "eat")
        return tmp_path / "eat" / "model.safetensors", tmp_path / "eat" / "model.safetensors"
    if case == "folder_without_config":
        write_eat_checkpoint(tmp_path / "eat")
        (tmp_path / "eat" / "config.json").unlink()
        return tmp_path / "eat", tmp_path / "eat"
    if case == "foreign_config":
        write_eat_checkpoint(tmp_path / "eat")
        (tmp_path / "eat" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
        return tmp_path / "eat", tmp_path / "eat" / "config.json"
    if case == "json_list_config":
        write_eat_checkpoint(tmp_path / "eat")
        (tmp_path / "eat" / "config.json").write_text("[1, 2]")
        return tmp_path / "eat", tmp_path / "eat" / "config.json"
    if case == "json_file":
        path = tmp_path / "eat.json"
        path.write_text(json.dumps(TINY_HF_CONFIG))
        return path, path
    assert case == "pt_without_model"
    path = tmp_path / "other.pt"
    torch.save({"state": torch.zeros(2)}, path)
    return path, path


@pytest.mark.parametrize(
    "case",
    [
        "random_bin",
        "random_pt",
        "stray_safetensors",
        "folder_without_config",
        "foreign_config",
        "json_list_config",
        "json_file",
        "pt_without_model",
    ],
)
def test_a_path_that_is_not_a_checkpoint_says_so(tmp_path, case):
    path, named = _not_a_checkpoint(tmp_path, case)
    with pytest.raises(ValueError) as info:
        P.build_encoder(path)
    message = str(info.value)
    assert str(named) in message and "not found" not in message
    assert "not an EAT" in message
    if case == "stray_safetensors":
        assert f"give the folder holding it, {path.parent}" in message


@pytest.mark.parametrize("spec", ["nowhere", "no/such/folder", "./owner/name", "-bad/name"])
def test_neither_a_path_nor_a_hub_id_is_not_found(tmp_path, spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"EAT checkpoint {spec} not found"):
        P.build_encoder(spec)
    with pytest.raises(FileNotFoundError, match="not found"):
        P.build_encoder(tmp_path / "absent")


# ----------------------------------------------------------------------------- Hugging Face hub ids


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An HF_HOME whose hub cache holds owner/tiny-eat at COMMIT (refs/main), with the network off."""
    home = tmp_path / "hf_home"
    snapshot = write_hub_snapshot(home / "hub", "owner/tiny-eat")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


def test_hub_id_loads_from_the_offline_cache(tmp_path, offline_hub):
    assert P.hub_cache_dir() == tmp_path / "hf_home" / "hub"
    resolved = P.resolve_checkpoint("owner/tiny-eat")
    assert resolved == P.ResolvedCheckpoint(offline_hub, "owner/tiny-eat", COMMIT)
    assert P.resolve_checkpoint(f"owner/tiny-eat@{COMMIT}") == resolved
    assert P.resolve_checkpoint("owner/tiny-eat@main") == resolved
    by_id = P.build_encoder("owner/tiny-eat")
    write_eat_checkpoint(tmp_path / "local")  # the same weights as a plain folder
    by_folder = P.build_encoder(tmp_path / "local")
    for key, value in by_folder.state_dict().items():
        assert torch.equal(by_id.state_dict()[key], value), key
    assert by_id.source["hub_id"] == "owner/tiny-eat" and by_id.source["revision"] == COMMIT
    assert by_id.source["checkpoint"] == str(offline_hub)
    assert by_id.source["fingerprint"]["weights_file"] == "model.safetensors"


def test_hub_cache_may_be_named_by_hf_hub_cache(tmp_path, monkeypatch):
    snapshot = write_hub_snapshot(tmp_path / "elsewhere", "owner/tiny-eat")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert P.resolve_checkpoint("owner/tiny-eat").path == snapshot


def test_a_local_folder_shaped_like_an_id_wins(tmp_path, offline_hub, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_eat_checkpoint(tmp_path / "owner" / "tiny-eat", seed=5)
    resolved = P.resolve_checkpoint("owner/tiny-eat")
    assert resolved.path == (tmp_path / "owner" / "tiny-eat").resolve() and resolved.hub_id is None


@pytest.mark.parametrize("spec", ["owner/absent-eat", "owner/tiny-eat@v2"])
def test_hub_id_missing_offline_says_how_to_download(tmp_path, offline_hub, spec):
    with pytest.raises(FileNotFoundError) as info:
        P.build_encoder(spec)
    message = str(info.value)
    hub_id = spec.split("@")[0]
    assert f"hf download {hub_id}" in message and "HF_HOME" in message
    assert str(tmp_path / "hf_home" / "hub") in message


def test_tuned_model_on_a_hub_backbone_rebuilds_through_the_cache(tmp_path, offline_hub, monkeypatch):
    model = _tuned(P.build_encoder("owner/tiny-eat"), "linear")
    path = tmp_path / "tuned.pth"
    C.save_tuned(path, model, LabelIndex(["a", "b", "c"]), {}, "owner/tiny-eat")
    backbone = torch.load(path, weights_only=True)["backbone"]
    assert (backbone["hub_id"], backbone["revision"], backbone["checkpoint"]) == (
        "owner/tiny-eat",
        COMMIT,
        str(offline_hub),
    )
    # another machine: the same commit in another cache, main now pointing elsewhere
    other = tmp_path / "other_home"
    write_hub_snapshot(other / "hub", "owner/tiny-eat")
    (other / "hub" / "models--owner--tiny-eat" / "refs" / "main").write_text("f" * 40)
    monkeypatch.setenv("HF_HOME", str(other))
    loaded, _, _ = C.load_tuned(path)
    with torch.no_grad():
        x = _fbank(64, 4)[None, None]
        assert torch.equal(loaded(x), model(x))
    assert base_encoder(loaded.encoder).source["checkpoint"] == str(
        other / "hub" / "models--owner--tiny-eat" / "snapshots" / COMMIT
    )
    # the cached copy is not the one it was tuned on -> refused
    snapshot_config = other / "hub" / "models--owner--tiny-eat" / "snapshots" / COMMIT / "config.json"
    config = json.loads(snapshot_config.read_text())
    snapshot_config.unlink()
    snapshot_config.write_text(json.dumps({**config, "num_classes": 11}))
    with pytest.raises(ValueError, match="different EAT checkpoint"):
        C.load_tuned(path)


# ----------------------------------------------------------------------------- fairseq files


def _fairseq_file(tmp_path, cfg, variant: str = "pretrain", name: str = "eat.pt", **extra):
    """A fairseq-layout file of the tiny weights; returns (path, the HF folder holding the same weights)."""
    folder = tmp_path / f"hf_{variant}"
    hf = write_eat_checkpoint(folder, variant=variant)
    torch.save(
        {"cfg": cfg, "model": fairseq_layout(hf, variant), "optimizer_history": [], **extra}, tmp_path / name
    )
    return tmp_path / name, folder


def _released_cfg(model_section: dict):
    from omegaconf import OmegaConf  # tests only: fairseq pickles its config as omegaconf objects

    return OmegaConf.create(
        {
            "common": {"seed": 1, "fp16": True},
            "task": {"_name": "mae_image_pretraining"},
            "model": model_section,
            "optimization": {"lr": [0.0005], "max_update": 400000},
        }
    )


def test_fairseq_file_with_omegaconf_cfg_matches_the_hf_layout(tmp_path, capsys, monkeypatch):
    model_section = {
        "_name": "data2vec_multi",
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 2,
        "modalities": {"image": {"in_chans": 1, "patch_size": 16}},
        "layers": [1, 2.5, None],
        "layer_norm_first": False,
        "interp": "${model.num_heads}",
        "missing": "???",
    }
    cfg = _released_cfg(model_section)
    assert type(cfg).__module__ == "omegaconf.dictconfig"
    path, folder = _fairseq_file(tmp_path, cfg, args=argparse.Namespace(arch="data2vec_multi", num_heads=2))
    for name in [name for name in sys.modules if name.split(".")[0] == "omegaconf"]:
        monkeypatch.setitem(sys.modules, name, None)  # reading needs no omegaconf: an import would fail
    raw = P._load_fairseq_pickle(path)
    assert P._plain(raw["cfg"])["model"] == model_section  # interpolations and "???" stay as written
    assert P._plain(raw["args"]) == {"arch": "data2vec_multi", "num_heads": 2}
    encoder = P.build_encoder(path)
    assert "read as a fairseq checkpoint (num_heads=2)" in capsys.readouterr().out
    assert (encoder.config.num_heads, encoder.config.depth, encoder.config.model_variant) == (
        2,
        2,
        "pretrain",
    )
    reference = P.build_encoder(folder)
    assert torch.equal(_outputs(encoder), _outputs(reference))
    assert encoder.source["checkpoint"] == str(path.resolve())


def test_fairseq_structured_cfg_naming_fairseq_dataclasses_loads(tmp_path, monkeypatch):
    """A cfg built from fairseq's config dataclasses pickles their names; they load as inert stand-ins."""
    import dataclasses
    import enum
    import types

    from omegaconf import OmegaConf

    module = types.ModuleType("fairseq.dataclass.configs")
    monkeypatch.setitem(sys.modules, "fairseq", types.ModuleType("fairseq"))
    monkeypatch.setitem(sys.modules, "fairseq.dataclass", types.ModuleType("fairseq.dataclass"))
    monkeypatch.setitem(sys.modules, "fairseq.dataclass.configs", module)
    module.Backend = enum.Enum("Backend", {"c10d": "c10d", "no_c10d": "no_c10d"}, module=module.__name__)
    module.ModelConfig = dataclasses.make_dataclass(
        "ModelConfig",
        [("num_heads", int, 2), ("embed_dim", int, 64), ("backend", module.Backend, module.Backend.c10d)],
    )
    module.Config = dataclasses.make_dataclass(
        "Config", [("model", module.ModelConfig, dataclasses.field(default_factory=module.ModelConfig))]
    )
    module.ModelConfig.__module__ = module.Config.__module__ = module.__name__
    path, folder = _fairseq_file(tmp_path, OmegaConf.structured(module.Config))
    for name in ("fairseq", "fairseq.dataclass", "fairseq.dataclass.configs"):
        monkeypatch.setitem(sys.modules, name, None)  # fairseq is not installed where the file is read
    assert P._plain(P._load_fairseq_pickle(path)["cfg"])["model"] == {
        "num_heads": 2,
        "embed_dim": 64,
        "backend": "c10d",
    }
    assert torch.equal(_outputs(P.build_encoder(path)), _outputs(P.build_encoder(folder)))


def test_finetuned_fairseq_file_reads_heads_from_pretrained_model_args(tmp_path):
    backbone = {"_name": "data2vec_multi", "num_heads": 2, "embed_dim": 64, "depth": 2}
    cfg = _released_cfg(
        {
            "_name": "mae_image_classification",
            "num_classes": 10,
            "pretrained_model_args": {"model": backbone, "task": {"_name": "mae_image_pretraining"}},
        }
    )
    path, folder = _fairseq_file(tmp_path, cfg, variant="finetune")
    encoder = P.build_encoder(path)
    assert encoder.config.num_heads == 2 and encoder.config.model_variant == "finetune"
    assert torch.equal(encoder.head.weight, P.build_encoder(folder).head.weight)
    assert torch.equal(_outputs(encoder), _outputs(P.build_encoder(folder)))


@pytest.mark.parametrize(
    "cfg, expected",
    [
        (
            {"model": {"embed_dim": 64}},
            r"records no head count \(neither cfg\.model\.num_heads nor "
            r"cfg\.model\.pretrained_model_args\.model\.num_heads\)",
        ),
        (None, r"records no head count"),
        (
            {"model": {"num_heads": "${oops}"}},
            r"cfg\.model\.num_heads is '\$\{oops\}', not a positive head count",
        ),
    ],
)
def test_fairseq_file_without_a_head_count_is_refused(tmp_path, cfg, expected):
    path, _ = _fairseq_file(tmp_path, cfg)
    with pytest.raises(ValueError, match=expected) as info:
        P.build_encoder(path)
    assert str(path) in str(info.value)


class _RunsCode:
    """What a malicious checkpoint pickles: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("container", ["torch_zip", "pickle_protocol_2", "pickle_protocol_5"])
def test_a_pickle_that_runs_code_is_refused(tmp_path, container):
    marker = tmp_path / "pwned"
    payload = {"cfg": _RunsCode(marker), "model": {"x": torch.zeros(2)}}
    path = tmp_path / "evil.pt"
    if container == "torch_zip":
        torch.save(payload, path)
        assert zipfile.is_zipfile(path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(container[-1])))
    with pytest.raises(ValueError, match="refusing to read") as info:
        P.build_encoder(path)
    message = str(info.value)
    assert str(path) in message and "weights_only=False" not in message
    if container != "pickle_protocol_5":  # the weights-only reader stops at protocol 5's first frame already
        assert "posix.system" in message or "os.system" in message
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["hf_folder_bin", "tuned_model"])
def test_a_pickle_in_any_torch_file_is_refused_in_one_line_that_never_suggests_loading_it_unsafely(
    tmp_path, kind
):
    marker = tmp_path / "pwned"
    write_eat_checkpoint(tmp_path / "eat", weights="bin")
    path = tmp_path / "eat" / "pytorch_model.bin" if kind == "hf_folder_bin" else tmp_path / "model.pth"
    torch.save({"format": C.TUNED_FORMAT, "settings": _RunsCode(marker)}, path)
    with pytest.raises(ValueError) as info:
        P.build_encoder(tmp_path / "eat") if kind == "hf_folder_bin" else C.load_tuned(path)
    message = str(info.value)
    assert message.startswith("cannot read") and str(path) in message and "\n" not in message
    assert "weights_only" not in message and "posix.system" in message or "os.system" in message
    assert not marker.exists()


# ----------------------------------------------------------------------------- tuned files


def _tuned(encoder: M.EATEncoder, head: str = "arcface") -> M.ASDModel:
    wrapped = M.add_lora(encoder, rank=4, alpha=8, dropout=0.0, unfreeze_last_norms=1)
    model = M.ASDModel(wrapped, heads.make_head(head, encoder.embed_dim, 3))
    with torch.no_grad():  # pretend training moved the adapters
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("backbone", ["random", "hf"])
def test_save_and_load_tuned_gives_identical_embeddings(tmp_path, backbone):
    checkpoint = None
    if backbone == "hf":
        checkpoint = tmp_path / "eat"
        write_eat_checkpoint(checkpoint)
    encoder = P.build_encoder(checkpoint, "tiny", init_seed=7)
    model = _tuned(encoder, "arcface" if backbone == "random" else "linear")
    labels = LabelIndex(["fan/section_00/a", "fan/section_00/b", "pump/section_01/noAttribute"])
    path = tmp_path / "best_encoder_model.pth"
    C.save_tuned(path, model, labels, {"epochs": 2, "target_frames": 256}, checkpoint)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    fbanks = [_fbank(300, 5), _fbank(120, 6)]
    expected = embed_fbanks(model, fbanks, 256, amp=False)
    loaded, loaded_labels, settings = C.load_tuned(path)
    assert loaded_labels == labels and settings["epochs"] == 2 and not loaded.training
    assert torch.equal(embed_fbanks(loaded, fbanks, 256, amp=False), expected)
    with torch.no_grad():
        x = fbanks[0][None, None, :256]
        assert torch.equal(loaded(x), model(x))
    size = path.stat().st_size
    frozen_bytes = 4 * sum(p.numel() for p in encoder.parameters() if not p.requires_grad)
    assert size < frozen_bytes / 4  # the frozen backbone is not copied into the file


def test_load_tuned_checks_the_backbone(tmp_path):
    checkpoint = tmp_path / "eat"
    write_eat_checkpoint(checkpoint)
    model = _tuned(P.build_encoder(checkpoint), "linear")
    path = tmp_path / "tuned.pth"
    C.save_tuned(path, model, LabelIndex(["a", "b", "c"]), {}, checkpoint)
    fingerprint = freshness.file_key(path)
    assert fingerprint == freshness.file_key(path)
    with pytest.raises(ValueError, match="not the checkpoint"):
        C.save_tuned(tmp_path / "other.pth", model, LabelIndex(["a"]), {}, None)
    # the backbone changes underneath the tuned file -> refused
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "num_classes": 11}))
    with pytest.raises(ValueError, match="different EAT checkpoint"):
        C.load_tuned(path)
    (checkpoint / "config.json").write_text(json.dumps(config))
    # weights edited in place, same size and modification time -> still refused (content key)
    weights = checkpoint / "model.safetensors"
    stat, data = weights.stat(), bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    freshness._memo.clear()  # a later process: the helper hashes a file once per (size, mtime, inode) in one
    with pytest.raises(ValueError, match="different EAT checkpoint.*weights_key"):
        C.load_tuned(path)
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    # moved -> named, and an override path works
    moved = tmp_path / "moved"
    (checkpoint / "config.json").write_text(json.dumps(config))
    os.rename(checkpoint, moved)
    with pytest.raises(FileNotFoundError, match="not there any more"):
        C.load_tuned(path)
    loaded, _, _ = C.load_tuned(path, backbone_checkpoint=moved)
    assert isinstance(loaded, M.ASDModel)
    # re-saving changes the fingerprint
    C.save_tuned(path, _tuned(P.build_encoder(moved), "linear"), LabelIndex(["a", "b", "c"]), {}, moved)
    assert freshness.file_key(path) != fingerprint


def test_load_tuned_rejects_other_files(tmp_path):
    bogus = tmp_path / "bogus.pth"
    torch.save({"hello": 1}, bogus)
    with pytest.raises(ValueError, match="not a tuned EAT-LoRA model"):
        C.load_tuned(bogus)
    with pytest.raises(FileNotFoundError, match="run train.py"):
        C.load_tuned(tmp_path / "absent.pth")
