"""Score new recordings of a machine with a finished run: a score and a normal/anomalous decision each.

    python score_clips.py --run runs/dev_data-3f2a9c1e --machine_type fan --section 00 new_clips/*.wav

The clips (any file names; other sample rates, stereo and odd lengths are handled as in training)
are embedded with the run's tuned encoder and embedding settings, scored by the run's scorer against
that section's normal embeddings and statistics (SCORER: any back end the run's evaluation scored, with
the settings that evaluation used, e.g. the recipe's smote_knn, or the run's Deep SVDD of the machine type;
calibrated as its CALIBRATION did), and judged by the decision threshold the evaluator recorded for the
section over all its training normals (summary.json; a new recording's domain is unknown). Writes OUTPUT (file,score,decision) and prints a one-line summary.

Long recordings (longer than LONG_SECONDS; by default the encoder's reach, about 123 s) are scored
as consecutive windows of WINDOW_SECONDS (by default as long as the run's training clips) every
HOP_SECONDS, each window like a clip of its samples,
read from disk EMBED_BATCH_SIZE windows at a time (memory stays bounded for an hour or a day). Their
windows go to WINDOW_OUTPUT (file,window,start_s,end_s,score,decision), a timeline plot of each to
TIMELINE_DIR/<name>_timeline.png, and their row in OUTPUT holds the AGGREGATE (max: the worst
window) of the window scores, judged by the same threshold. Refuses a run
whose files do not agree and a machine type or section the run never saw, and channel settings
(CHANNELS, RESIDUAL_WEIGHT, CHANNEL_COMBINE) other than the run's.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from asd.base.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

import numpy as np
import soundfile as sf

from asd.backends import registry
from asd.backends.registry import backend_factory
from asd.base.cli import parse_config, print_config
from asd.base.errors import run_script
from asd.base.files import atomic_write_text
from asd.base.freshness import file_key
from asd.base.locks import hold_run_folder_lock
from asd.base.runtime import resolve_device
from asd.data import preprocessing
from asd.data.clips import window_spans
from asd.data.names import ClipRecord
from asd.data.preprocessing import channel_record, check_channel_record
from asd.embed.embed import embed_records, feature_caches, stat_columns, stats_records, tuned_model
from asd.embed.embedding_files import (
    Split,
    embedding_channels,
    feature_paths,
    load_features,
    recorded_model_path,
)
from asd.embed.long_clips import (
    aggregate,
    embed_windows,
    is_long,
    timeline_path,
    training_clip_seconds,
    write_window_table,
)
from asd.report.plots import plot_timeline
from asd.report.tables import csv_text
from asd.score.calibration import recorded_calibration
from asd.score.scoring import score_by_group
from asd.score.svdd import svdd_factory

# run folder of run_all.py (runs/<data>-<hash>/): tuned model, embeddings, results
RUN = ""
# machine type the clips come from (as named in the run's data)
MACHINE_TYPE = ""
# section (2020 data: machine ID) the clips belong to
SECTION = "00"
# deepsvdd | a back end the run's evaluation scored (asd/backends/registry.py: ensemble, smote_knn, ...,
# baseline_ae, which trains again on the section's normals)
SCORER = "ensemble"
# CSV written: file,score,decision
OUTPUT = "clip_scores.csv"
# the .wav files to score (positional arguments)
CLIPS = []
# auto | cpu | cuda (for embedding the clips)
DEVICE = "auto"
# microphone(s) heard, as the run's: near (channel 0) | far | mix | residual | both
CHANNELS = preprocessing.CHANNELS
# weight of the far channel in residual and in CHANNEL_COMBINE residual, as the run's
RESIDUAL_WEIGHT = preprocessing.RESIDUAL_WEIGHT
# both: concat | residual combination of the two embeddings, as the run's
CHANNEL_COMBINE = preprocessing.CHANNEL_COMBINE
# clips longer than this (s) are scored as windows; 0 = the encoder's reach (about 123 s)
LONG_SECONDS = 0.0
# window length of long recordings (s); 0 = the length of the run's training clips of the machine type
WINDOW_SECONDS = 0.0
# a window starts every this many seconds (the last one ends at the recording's end)
HOP_SECONDS = 5.0
# a long recording's score from its windows' scores: max (worst window) | mean
AGGREGATE = "max"
# clips or windows embedded at once (bounds the memory of long recordings)
EMBED_BATCH_SIZE = 16
# per-window table of the long recordings
WINDOW_OUTPUT = "window_scores.csv"
# where each long recording's timeline plot (<name>_timeline.png) goes
TIMELINE_DIR = "."
# allowed values of the constants above, checked by asd.base.cli.parse_config
_LIMITS = {
    "SCORER": ("deepsvdd", *registry.REGISTRY),
    "CHANNELS": preprocessing.CHANNEL_MODES,
    "RESIDUAL_WEIGHT": (0.0, None),
    "CHANNEL_COMBINE": preprocessing.CHANNEL_COMBINES,
    "LONG_SECONDS": (0.0, None),
    "WINDOW_SECONDS": (0.0, None),
    "HOP_SECONDS": (">0", None),
    "AGGREGATE": ("max", "mean"),
    "EMBED_BATCH_SIZE": (1, None),
}


def summary_path_of(run: Path, scorer: str) -> Path:
    """The summary.json of the run's evaluation by ``scorer`` (results/deepsvdd, results/ensemble,
    results/backends/<name>, results/baseline/<name>: wherever run_all or evaluate.py wrote it)."""
    results = run / "results"
    if scorer == "deepsvdd":
        candidates = [results / "deepsvdd" / "summary.json"]
    else:
        candidates = sorted(results.glob(f"**/{scorer}/summary.json"), key=lambda p: len(p.parts))
    for path in candidates:
        if path.is_file() and (
            scorer == "deepsvdd" or json.loads(path.read_text())["settings"].get("backend") == scorer
        ):
            return path
    raise FileNotFoundError(
        f"{results} holds no {scorer} evaluation: run run_all.py (or evaluate.py --backends {scorer}) first"
    )


def scorer_factory(run: Path, scorer: str, fingerprint: dict):
    """The scorer the run's evaluation used, as a ``scoring.score_by_group`` factory, its grouping, the
    evaluation's summary (its settings and decision thresholds) and where that summary is."""
    summary_path = summary_path_of(run, scorer)
    summary = json.loads(summary_path.read_text())
    if scorer == "deepsvdd":
        return svdd_factory(run / "svdd_models_per_type", fingerprint), "machine_type", summary, summary_path
    return (*backend_factory(scorer, summary["settings"]), summary, summary_path)


def section_threshold(summary: dict, machine_type: str, section: str, path: Path) -> float:
    """The section's decision threshold over all its training normals, as the evaluation recorded it
    (a new recording's domain is unknown, so no domain threshold applies)."""
    for entry in summary.get("decision_thresholds", []):
        if (entry["machine_type"], entry["section"], entry["domain"]) == (machine_type, section, "all"):
            return float(entry["threshold"])
    raise ValueError(
        f"{path} records no decision threshold for {machine_type} section {section}: rerun the evaluation"
    )


def run_model(fingerprint: dict, run: Path, device):
    """The run's tuned model (checked to be the one its embeddings came from)."""
    model_path = recorded_model_path(fingerprint, run)
    if not model_path.is_file() or file_key(model_path) != fingerprint["model_key"]:
        raise ValueError(f"{model_path} is missing or is not the tuned model the run's embeddings came from")
    return tuned_model(model_path, device)


def embed_clips(
    cfg, fingerprint: dict, window_seconds: float
) -> tuple[Split, dict[str, list[tuple[float, float]]]]:
    """A scoring.Split of the new clips, embedded exactly like the run's normals (long recordings as
    windows ``<path>#<i>`` of ``window_seconds``), and each long recording's window times in seconds."""
    settings, device = fingerprint["settings"], resolve_device(cfg.device)
    model, _, trained = run_model(fingerprint, Path(cfg.run), device)
    record = ClipRecord("", cfg.machine_type, cfg.section, None, "test", None)
    columns = stat_columns(settings["channels"])
    short = [replace(record, path=str(Path(p))) for p in cfg.clips if not is_long(p, cfg.long_seconds)]
    parts, times = [], {}
    if short:
        caches = feature_caches(None, settings["channels"])
        embeddings = embed_records(short, model, trained, settings, device, cfg.embed_batch_size, caches)
        stats = stats_records(short, caches)
        parts.append(Split(embeddings.numpy().astype(np.float32), stats.numpy(), columns, short))
    for path in (str(Path(p)) for p in cfg.clips if is_long(p, cfg.long_seconds)):
        info = sf.info(path)
        spans = window_spans(info.frames, info.samplerate, window_seconds, cfg.hop_seconds)
        times[path] = [(a / info.samplerate, b / info.samplerate) for a, b in spans]
        parts.append(
            embed_windows(
                path, record, spans, model, trained, settings, device, cfg.embed_batch_size, columns
            )
        )
    return join_splits(parts), times


def join_splits(parts: list[Split]) -> Split:
    return Split(
        np.concatenate([p.embeddings for p in parts]),
        np.concatenate([p.stats for p in parts]),
        parts[0].stat_names,
        [r for p in parts for r in p.records],
    )


def long_rows(cfg, scores: dict, times: dict, threshold: float) -> tuple[list, list]:
    """(one OUTPUT row per long recording, every window's row), and a timeline plot of each."""
    rows, window_rows = [], []
    for path, spans in times.items():
        values = [scores[f"{path}#{i}"] for i in range(len(spans))]
        name = Path(path).name
        window_rows += [
            (name, i, a, b, v, int(v > threshold)) for i, ((a, b), v) in enumerate(zip(spans, values))
        ]
        score = aggregate(values, cfg.aggregate)
        rows.append((name, score, int(score > threshold)))
        plot_timeline(timeline_path(cfg.timeline_dir, path), name, spans, values, threshold)
    return rows, window_rows


def main(argv: list[str] | None = None) -> list[tuple[str, float, int]]:
    cfg = parse_config(globals(), argv, description=__doc__, aliases={"clips": "CLIPS"})
    print_config(cfg)
    hold_run_folder_lock([cfg.output, cfg.window_output, cfg.timeline_dir], "score_clips.py")
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
    factory, by, summary, summary_path = scorer_factory(run, cfg.scorer, features.fingerprint)
    threshold = section_threshold(summary, cfg.machine_type, cfg.section, summary_path)
    window_seconds = cfg.window_seconds
    if not window_seconds and any(is_long(p, cfg.long_seconds) for p in cfg.clips):
        window_seconds = training_clip_seconds(
            [r.path for r in features.normal.records if r.machine_type == cfg.machine_type]
        )
    clips, times = embed_clips(cfg, features.fingerprint, window_seconds)
    wanted = [
        i
        for i, r in enumerate(features.normal.records)
        if r.machine_type == cfg.machine_type and (by == "machine_type" or r.section == cfg.section)
    ]
    calibration = recorded_calibration(summary["settings"])
    scores, _ = score_by_group(features.normal.rows(wanted), clips, factory, by, **calibration)
    windows = {f"{path}#{i}" for path, spans in times.items() for i in range(len(spans))}
    short = {
        r.path: (Path(r.path).name, scores[r.path], int(scores[r.path] > threshold))
        for r in clips.records
        if r.path not in windows
    }
    recordings, window_rows = long_rows(cfg, scores, times, threshold)
    by_path = {**short, **dict(zip(times, recordings))}
    rows = [by_path[str(Path(p))] for p in cfg.clips]
    table = [(n, f"{s:.8g}", d) for n, s, d in rows]
    atomic_write_text(csv_text([("file", "score", "decision"), *table]), cfg.output)
    if times:
        write_window_table(cfg.window_output, window_rows)
        print(
            f"{len(times)} long recording(s) scored as {len(window_rows)} windows of {window_seconds:g} s "
            f"every {cfg.hop_seconds:g} s (score = {cfg.aggregate} of the windows) -> {cfg.window_output}, "
            f"timelines in {cfg.timeline_dir}"
        )
    anomalous = sum(d for _, _, d in rows)
    print(
        f"{len(rows)} clips of {cfg.machine_type} section {cfg.section} scored with {cfg.scorer}: "
        f"{anomalous} anomalous, {len(rows) - anomalous} normal (threshold {threshold:.4g}) -> {cfg.output}"
    )
    return rows


if __name__ == "__main__":
    sys.exit(run_script(main))
