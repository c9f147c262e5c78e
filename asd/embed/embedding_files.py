"""The one owner of the embedding files: the contract between the encoder and the scorers.

extract_embeddings.py writes four files into a run folder (nothing else reads or writes them
except through this module):
  normal_embeddings.pt, normal_stats.pt    the training normals
  test_embeddings.pt,   test_stats.pt      the test clips
each {"matrix": Tensor[N, F], "records": [ClipRecord dicts], "columns": stat names or None,
"fingerprint": {...}}. The fingerprint holds content keys (asd/base/freshness.py) of the clips, of the
tuned model and of the settings, so a clip or model edited in place (even with the same size and
modification time) makes the files stale. ``load_features`` reads them and checks that they agree
(same tuned model, same data folder, same settings, same clips in embeddings and statistics) and
are current; otherwise it stops naming the command to run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asd.base.files import atomic_torch_save, load_plain
from asd.base.freshness import changes, file_key, settings_key
from asd.base.locks import run_folder_of
from asd.data.dataset import discover_clips
from asd.data.names import ClipRecord

FEATURES_FORMAT = "eat-lora-asd/features-v3"
FEATURE_FILES = {
    "train": ("normal_embeddings.pt", "normal_stats.pt"),
    "test": ("test_embeddings.pt", "test_stats.pt"),
}
EMBEDDING_FILE_NAMES = FEATURE_FILES["train"] + FEATURE_FILES["test"]  # the four files, in run_all's order
_CHANGE_NAMES = {  # fingerprint key -> what a change of it means
    "model_key": "another tuned model",
    "model_path": "another tuned model path",
    "clips": "other data (files added, removed or changed)",
    "data_dir": "another data folder",
    "settings": "other embedding settings",
    "precision": "another precision",
    "features": "other feature settings",
}


def feature_paths(embed_dir: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(embeddings file, statistics file) of a split ("train" = the normals, or "test")."""
    if split not in FEATURE_FILES:
        raise ValueError(f"split must be one of {sorted(FEATURE_FILES)}, got {split!r}")
    return tuple(Path(embed_dir) / name for name in FEATURE_FILES[split])


def split_records(data_dir: str | os.PathLike, split: str, channels: str = "near") -> list[ClipRecord]:
    """The clips of a split, sorted by path: the training normals, or every test clip (each refused
    naming it, before anything is computed, when it has too few channels for ``channels``)."""
    records = discover_clips(data_dir, splits=(split,), channels=channels)
    if split == "train":
        records = [r for r in records if r.label == "normal"]
    if not records:
        raise ValueError(f"{data_dir}: no {'normal training' if split == 'train' else 'test'} clips found")
    return records


def clips_key(records: Sequence[ClipRecord]) -> str:
    """Content key of the clips: each clip's resolved path, the key of its bytes and its parsed metadata."""
    items = []
    for record in records:
        metadata = {key: value for key, value in record.to_dict().items() if key != "path"}
        items.append([str(Path(record.path).resolve()), file_key(record.path), metadata])
    return settings_key(items)


def _data_part(split: str, records: Sequence[ClipRecord], data_dir: str | os.PathLike) -> dict:
    return {
        "format": FEATURES_FORMAT,
        "split": split,
        "clips": clips_key(records),
        "data_dir": str(Path(data_dir).resolve()),
    }


def stored_model_path(model_path: str | os.PathLike, embed_dir: str | os.PathLike) -> str:
    """How an embeddings file in ``embed_dir`` records its tuned model: relative to ``embed_dir`` when
    the model lies in the same run folder (asd.base.locks) or in ``embed_dir``, so a moved or copied run
    folder keeps working; else its absolute path."""
    model, folder = Path(model_path).resolve(), Path(embed_dir).resolve()
    anchor = run_folder_of(folder) or folder
    return os.path.relpath(model, folder) if model.is_relative_to(anchor) else str(model)


def recorded_model_path(fingerprint: dict, embed_dir: str | os.PathLike) -> Path:
    """The tuned model an embeddings file in ``embed_dir`` records (a relative record is read from
    ``embed_dir``)."""
    return Path(embed_dir) / fingerprint["model_path"]


def embedding_fingerprint(
    split: str,
    records: Sequence[ClipRecord],
    data_dir,
    model_path,
    settings: dict,
    precision: str,
    embed_dir: str | os.PathLike,
) -> dict:
    """What an embeddings file in ``embed_dir`` was built from: the clips, the tuned model, the
    settings, the precision."""
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"tuned model {model_path} not found: run train.py first")
    return {
        **_data_part(split, records, data_dir),
        "model_path": stored_model_path(model_path, embed_dir),
        "model_key": file_key(model_path),
        "settings": settings,
        "precision": precision,
    }


def stats_fingerprint(
    split: str, records: Sequence[ClipRecord], data_dir, channels: dict | None = None
) -> dict:
    """What a statistics file was built from: the clips and the feature settings (of the channel
    views of the record ``channels``; None = the default 'near')."""
    from asd.data.preprocessing import feature_settings  # lazy: the scorers never need the audio front end

    views = views_record(channels) if channels else {}
    return {**_data_part(split, records, data_dir), "features": {**feature_settings(), **views}}


def embedding_channels(fingerprint: dict) -> dict:
    """The channel record of an embeddings file (files from before the CHANNELS setting: the mix)."""
    from asd.data.preprocessing import LEGACY_CHANNEL_RECORD

    return dict(fingerprint.get("settings", {}).get("channels") or LEGACY_CHANNEL_RECORD)


def views_record(record: dict) -> dict:
    """The part of a channel record that says what the encoder hears (what a tuned model records):
    the mode and, for 'residual', its weight; not how 'both' combines its two embeddings."""
    from asd.data.preprocessing import RESIDUAL_WEIGHT, channel_record

    return channel_record(record["channels"], record.get("residual_weight", RESIDUAL_WEIGHT))


def model_channels(model_path: str | os.PathLike) -> dict | None:
    """The channel views a tuned model was trained on (None: made before the CHANNELS setting)."""
    payload = load_plain(model_path, "tuned model")
    settings = payload.get("settings", {}) if isinstance(payload, dict) else {}
    return views_record(settings) if "channels" in settings else None


def check_model_channels(model_path: str | os.PathLike, record: dict, reader: str) -> None:
    """ValueError naming the tuned model and ``reader`` when they hear different channels.

    How 'both' combines its embeddings is not compared: it does not change the tuned model.
    """
    from asd.data.preprocessing import check_channel_record

    check_channel_record(model_channels(model_path), views_record(record), model_path, reader)


def stale_reason(payload: dict | None, fingerprint: dict) -> str | None:
    """Why a saved file cannot be reused for ``fingerprint`` (None when it can)."""
    if payload is None:
        return "missing"
    changed = changes(payload["fingerprint"], fingerprint)
    if not changed:
        return None
    return "built from " + ", ".join(dict.fromkeys(_CHANGE_NAMES.get(key, key) for key in changed))


def read_feature_file(path: Path) -> dict | None:
    """A features file, or None when it is missing or unreadable (never unpickles code)."""
    if not path.is_file():
        return None
    try:
        payload = load_plain(path, "embedding file")
    except ValueError as error:
        print(f"note: {error}")
        return None
    ok = isinstance(payload, dict) and payload.get("fingerprint", {}).get("format") == FEATURES_FORMAT
    return payload if ok else None


def write_feature_file(
    path: str | os.PathLike,
    matrix: torch.Tensor,
    records: Sequence[ClipRecord],
    columns: list[str] | None,
    fingerprint: dict,
) -> dict:
    """Write one of the four files atomically; returns its payload."""
    payload = {
        "matrix": matrix,
        "records": [r.to_dict() for r in records],
        "columns": columns,
        "fingerprint": fingerprint,
    }
    atomic_torch_save(payload, path)
    return payload


def saved_settings(embed_dir: str | os.PathLike) -> dict | None:
    """The embedding settings recorded in EMBED_DIR/normal_embeddings.pt, if any."""
    payload = read_feature_file(feature_paths(embed_dir, "train")[0])
    return None if payload is None else payload["fingerprint"]["settings"]


@dataclass
class Split:
    """Embeddings, statistics and ClipRecords of the same clips, row for row."""

    embeddings: np.ndarray  # [N, D] float32
    stats: np.ndarray  # [N, S] float32
    stat_names: list[str]
    records: list[ClipRecord]

    def rows(self, rows: Sequence[int]) -> Split:
        rows = list(rows)
        return Split(
            self.embeddings[rows], self.stats[rows], self.stat_names, [self.records[i] for i in rows]
        )

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class Features:
    """Both splits and what they were built from (tuned model, data folder, settings)."""

    normal: Split
    test: Split | None
    fingerprint: dict  # the normal embeddings' fingerprint
    model_path: Path  # the tuned model they came from (a relative record read from their folder)

    @property
    def data_dir(self) -> str:
        return self.fingerprint["data_dir"]

    def embedding_maps(self) -> dict[str, dict]:
        """{"train"/"test": {"matrix", "records"}}: what report.py maps."""
        return {
            name: {"matrix": split.embeddings, "records": split.records}
            for name, split in (("train", self.normal), ("test", self.test))
            if split is not None
        }


def extract_command(embed_dir, fingerprint: dict | None) -> str:
    data = (fingerprint or {}).get("data_dir", "<data folder>")
    model = recorded_model_path(fingerprint, embed_dir) if fingerprint else "<best_encoder_model.pth>"
    return f"python extract_embeddings.py --data_dir {data} --model_path {model} --embed_dir {embed_dir}"


def _disagreement(split: str, emb: dict, stats: dict, reference: dict) -> str | None:
    """Why a split's two files do not go with each other or with the normal embeddings."""
    fp, st = emb["fingerprint"], stats["fingerprint"]
    same_paths = [r["path"] for r in emb["records"]] == [r["path"] for r in stats["records"]]
    if not same_paths or fp["clips"] != st["clips"]:
        return f"the {split} embeddings and statistics describe different clips"
    recorded, features = fp.get("settings", {}).get("channels"), st.get("features") or {}
    heard = {key: features[key] for key in ("channels", "residual_weight") if key in features}
    if recorded and heard and heard != views_record(recorded):  # files from before CHANNELS: no record
        return f"the {split} statistics were computed from other channels than its embeddings"
    for key, what in (
        ("model_key", "another tuned model"),
        ("settings", "other embedding settings"),
        ("precision", "another precision"),
        ("data_dir", "another data folder"),
    ):
        if fp.get(key) != reference.get(key):
            return f"the {split} embeddings come from {what} than the normal embeddings"
    return None


def _stale(fingerprint: dict, split: str, embed_dir: Path) -> str | None:
    """Why the files no longer describe what is on disk (None when they do)."""
    data_dir, model_path = Path(fingerprint["data_dir"]), recorded_model_path(fingerprint, embed_dir)
    if data_dir.is_dir():
        try:
            if clips_key(split_records(data_dir, split)) != fingerprint["clips"]:
                return (
                    f"the {split} clips in {data_dir} changed (added, removed or rewritten) since extraction"
                )
        except (ValueError, FileNotFoundError) as error:
            return f"{data_dir}: {error}"
    if model_path.is_file() and file_key(model_path) != fingerprint["model_key"]:
        return f"{model_path} changed (retrained?) since extraction"
    return None


def load_features(embed_dir: str | os.PathLike, splits: Sequence[str] = ("train", "test")) -> Features:
    """Read and check the embedding and statistics files of ``splits`` in ``embed_dir``.

    Raises FileNotFoundError / ValueError naming the file, what is wrong and the command to run.
    """
    embed_dir = Path(embed_dir)
    loaded = {}
    for split in splits:
        emb_path, stats_path = feature_paths(embed_dir, split)
        emb, stats = read_feature_file(emb_path), read_feature_file(stats_path)
        for path, payload in ((emb_path, emb), (stats_path, stats)):
            if payload is None:
                reference = next((p["fingerprint"] for p, _ in loaded.values()), None)
                raise FileNotFoundError(
                    f"{path} is missing, unreadable or in an older format: run "
                    f"{extract_command(embed_dir, reference)}"
                )
        loaded[split] = (emb, stats)
    reference = loaded[splits[0]][0]["fingerprint"]
    for split, (emb, stats) in loaded.items():
        problem = _disagreement(split, emb, stats, reference) or _stale(emb["fingerprint"], split, embed_dir)
        if problem:
            raise ValueError(f"{embed_dir}: {problem}; run {extract_command(embed_dir, emb['fingerprint'])}")
    model_path = recorded_model_path(reference, embed_dir)
    if model_path.is_file():  # the same model: _stale compared its sha256
        emb_path = feature_paths(embed_dir, splits[0])[0]
        check_model_channels(model_path, embedding_channels(reference), f"the embeddings {emb_path}")

    def to_split(pair) -> Split:
        emb, stats = pair
        return Split(
            emb["matrix"].float().numpy(),
            stats["matrix"].float().numpy(),
            list(stats["columns"]),
            [ClipRecord.from_dict(d) for d in emb["records"]],
        )

    return Features(
        to_split(loaded["train"]) if "train" in loaded else None,
        to_split(loaded["test"]) if "test" in loaded else None,
        reference,
        model_path,
    )
