"""Score new recordings of a machine with a finished run: a score and a normal/anomalous decision each.

    python score_clips.py --run runs/dev_data-3f2a9c1e --machine_type fan --section 00 new_clips/*.wav

The clips (any file names; other sample rates, stereo and odd lengths are handled as in training)
are embedded with the run's tuned encoder and embedding settings, scored by the run's scorer against
that section's normal embeddings and statistics (the ensemble with the settings its evaluation used,
or the run's Deep SVDD of the machine type), and judged by the same decision threshold the
evaluator applied. Writes OUTPUT (file,score,decision) and prints a one-line summary. Refuses a run
whose files do not agree and a machine type or section the run never saw, and channel settings
(CHANNELS, RESIDUAL_WEIGHT, CHANNEL_COMBINE) other than the run's.
"""

from __future__ import annotations

import json
from pathlib import Path

from asd.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import numpy as np

from asd.backends import ensemble_factory
from asd.cli import parse_config
from asd.embed import embed_records, feature_caches, stat_columns, stats_records, tuned_model
from asd.embedding_files import Split, embedding_channels, feature_paths, file_sha256, load_features
from asd.files import atomic_write_text
from asd.runtime import resolve_device
from asd.scoring import score_by_group
from asd.svdd import svdd_factory
from asd.thresholds import gamma_threshold
from dataset import ClipRecord
from preprocessing import channel_record, check_channel_record

RUN = ""  # run folder of run_all.py (runs/<data>-<hash>/): tuned model, embeddings, results
MACHINE_TYPE = ""  # machine type the clips come from (as named in the run's data)
SECTION = "00"  # section (2020 data: machine ID) the clips belong to
SCORER = "ensemble"  # ensemble (k-NN + Mahalanobis) | deepsvdd
OUTPUT = "clip_scores.csv"  # CSV written: file,score,decision
CLIPS = []  # the .wav files to score (positional arguments)
DEVICE = "auto"  # auto | cpu | cuda (for embedding the clips)
CHANNELS = "near"  # microphone(s) heard, as the run's: near (channel 0) | far | mix | residual | both
RESIDUAL_WEIGHT = 0.5  # weight of the far channel in residual and in CHANNEL_COMBINE residual, as the run's
CHANNEL_COMBINE = "concat"  # both: concat | residual combination of the two embeddings, as the run's
# allowed values of the constants above, checked by asd.cli.parse_config
_LIMITS = {
    "SCORER": ("ensemble", "deepsvdd"),
    "CHANNELS": ("near", "far", "mix", "residual", "both"),
    "RESIDUAL_WEIGHT": (0.0, None),
    "CHANNEL_COMBINE": ("concat", "residual"),
}


def scorer_factory(run: Path, scorer: str, fingerprint: dict):
    """The scorer the run's evaluation used, as a ``scoring.score_by_group`` factory, and its grouping."""
    summary_path = run / "results" / scorer / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(
            f"{summary_path} not found: the run has no {scorer} evaluation (run run_all.py)"
        )
    settings = json.loads(summary_path.read_text())["settings"]
    if scorer == "ensemble":
        return ensemble_factory(settings), "section"
    return svdd_factory(run / "svdd_models_per_type", fingerprint), "machine_type"


def embed_clips(paths: list[str], machine_type: str, section: str, fingerprint: dict, device_name: str):
    """A scoring.Split of the new clips, embedded exactly like the run's normals."""
    model_path = Path(fingerprint["model_path"])
    if not model_path.is_file() or file_sha256(model_path) != fingerprint["model_sha256"]:
        raise ValueError(f"{model_path} is missing or is not the tuned model the run's embeddings came from")
    records = [ClipRecord(str(Path(p)), machine_type, section, None, "test", "unknown") for p in paths]
    device = resolve_device(device_name)
    channels = fingerprint["settings"]["channels"]
    caches = feature_caches(None, channels)
    model, _, trained = tuned_model(model_path, device)
    embeddings = embed_records(records, model, trained, fingerprint["settings"], device, 16, caches)
    stats = stats_records(records, caches)
    return Split(embeddings.numpy().astype(np.float32), stats.numpy(), stat_columns(channels), records)


def main(argv: list[str] | None = None) -> list[tuple[str, float, int]]:
    cfg = parse_config(globals(), argv, description=__doc__, aliases={"clips": "CLIPS"})
    run = Path(cfg.run)
    if not cfg.run or not run.is_dir():
        raise FileNotFoundError(f"run folder {cfg.run!r} not found (give --run runs/<data>-<hash>)")
    if not cfg.clips:
        raise ValueError("no clips given: pass the .wav files to score as arguments")
    missing = [c for c in cfg.clips if not Path(c).is_file()]
    if missing:
        raise FileNotFoundError(f"no such clip file(s): {', '.join(missing)}")
    features = load_features(run, splits=("train",))
    check_channel_record(
        embedding_channels(features.fingerprint),
        channel_record(cfg.channels, cfg.residual_weight, cfg.channel_combine),
        feature_paths(run, "train")[0],
        "score_clips.py",
    )
    seen = sorted({(r.machine_type, r.section) for r in features.normal.records})
    if (cfg.machine_type, cfg.section) not in seen:
        raise ValueError(
            f"the run never saw {cfg.machine_type} section {cfg.section}; it knows "
            + ", ".join(f"{m} section {s}" for m, s in seen)
        )
    factory, by = scorer_factory(run, cfg.scorer, features.fingerprint)
    clips = embed_clips(cfg.clips, cfg.machine_type, cfg.section, features.fingerprint, cfg.device)
    wanted = [
        i
        for i, r in enumerate(features.normal.records)
        if r.machine_type == cfg.machine_type and (by == "machine_type" or r.section == cfg.section)
    ]
    scores, train_scores = score_by_group(features.normal.rows(wanted), clips, factory, by)
    threshold = gamma_threshold(train_scores[(cfg.machine_type, cfg.section)])
    rows = [(Path(r.path).name, scores[r.path], int(scores[r.path] > threshold)) for r in clips.records]
    atomic_write_text("file,score,decision\n" + "".join(f"{n},{s:.8g},{d}\n" for n, s, d in rows), cfg.output)
    anomalous = sum(d for _, _, d in rows)
    print(
        f"{len(rows)} clips of {cfg.machine_type} section {cfg.section} scored with {cfg.scorer}: "
        f"{anomalous} anomalous, {len(rows) - anomalous} normal (threshold {threshold:.4g}) -> {cfg.output}"
    )
    return rows


if __name__ == "__main__":
    main()
