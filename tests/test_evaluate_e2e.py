"""End to end on a tiny generated tree with obvious anomalies: train -> embed -> Deep SVDD -> ensemble.

Also: the embedding cache is rebuilt (never reused) when the checkpoint, the data or the embedding
settings change, and a Deep SVDD fitted on other embeddings is refused.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evaluate  # noqa: E402
import evaluate_deepSVDD  # noqa: E402
import extract_embeddings  # noqa: E402
import make_demo_data  # noqa: E402
import train  # noqa: E402
import train_deepSVDD  # noqa: E402
from eat_checkpoint_support import write_eat_checkpoint  # noqa: E402

MACHINES = ["fan", "pump"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A 2-machine tree (2 s clips, anomalies at 0.8-1.0 strength), a tiny EAT checkpoint and a
    1-epoch tuned model; returns the common paths."""
    root = tmp_path_factory.mktemp("e2e")
    data = make_demo_data.main(["--out_dir", str(root / "data"), "--machine_types", ",".join(MACHINES),
                                "--clip_seconds", "2", "--source_train", "12", "--target_train", "4",
                                "--test_normal", "6", "--test_anomaly", "6", "--min_strength", "0.8",
                                "--progress", "false"])
    write_eat_checkpoint(root / "eat")
    paths = {"data": str(data), "model": str(root / "best.pth"), "embed": str(root / "embed"),
             "cache": str(root / "cache"), "root": root}
    train.main(["--data_dir", paths["data"], "--eat_checkpoint", str(root / "eat"), "--epochs", "1",
                "--batch_size", "8", "--target_frames", "208", "--num_workers", "0", "--lora_rank", "2",
                "--feature_cache", paths["cache"], "--output", paths["model"],
                "--last_checkpoint", str(root / "last.pth"), "--val_fraction", "0.25"])
    return paths


def _common(p: dict) -> list[str]:
    return ["--data_dir", p["data"], "--model_path", p["model"], "--embed_dir", p["embed"]]


def test_pipeline_end_to_end_scores_easy_anomalies_well(pipeline):
    p = pipeline
    out = extract_embeddings.main(_common(p) + ["--cache_dir", p["cache"], "--batch_size", "8"])
    normal_emb, normal_stats = out["train"]
    test_emb, test_stats = out["test"]
    assert normal_emb["matrix"].shape[0] == normal_stats["matrix"].shape[0] == 2 * 16
    assert normal_stats["columns"] and len(normal_stats["columns"]) == normal_stats["matrix"].shape[1]
    assert {r["label"] for r in normal_emb["records"]} == {"normal"}
    assert {r["domain"] for r in normal_emb["records"]} == {"source", "target"}
    assert test_emb["matrix"].shape[0] == 2 * 24 and torch.isfinite(test_emb["matrix"]).all()
    for name in ("normal_embeddings.pt", "normal_stats.pt", "test_embeddings.pt", "test_stats.pt"):
        assert (Path(p["embed"]) / name).is_file()

    svdd_dir = p["root"] / "svdd"
    written = train_deepSVDD.main(_common(p) + ["--svdd_dir", str(svdd_dir), "--use_stats", "true"])
    assert sorted(written) == MACHINES and all(path.is_file() for path in written.values())
    svdd = evaluate_deepSVDD.main(_common(p) + ["--svdd_dir", str(svdd_dir),
                                                "--results_dir", str(p["root"] / "res_svdd"), "--plots", "false"])
    ensemble = evaluate.main(_common(p) + ["-k", "3", "--w", "0.7", "--results_dir", str(p["root"] / "res_ens")])

    for summary in (svdd, ensemble):
        aucs = [s[key] for s in summary["sections"] for key in ("auc_source", "auc_target")]
        print(summary["scorer"], summary["official_score"], aucs)
        assert sum(aucs) / len(aucs) > 0.8, summary
        assert summary["official_score"] > 0.6, summary
    assert ensemble["settings"]["k"] == 3 and ensemble["settings"]["w"] == 0.7
    rows = list(csv.reader(open(p["root"] / "res_ens" / "anomaly_score_fan_section_00_test.csv")))
    assert len(rows) == 24 and all(r[0].endswith(".wav") and len(r) == 2 for r in rows)
    assert (p["root"] / "res_ens" / "roc_pump.png").is_file()
    assert not (p["root"] / "res_svdd" / "roc_pump.png").exists()

    grid = evaluate.main(_common(p) + ["--sweep", "true", "--sweep_ks", "1,3", "--sweep_ws", "0,0.5,1",
                                       "--results_dir", str(p["root"] / "res_sweep")])
    assert len(grid["sweep"]) == 2 and len(grid["sweep"][0]) == 3
    assert not (p["root"] / "res_sweep").exists()


def test_stale_caches_are_rebuilt_and_stale_svdd_refused(pipeline, tmp_path, capsys):
    small = make_demo_data.main(["--out_dir", str(tmp_path / "data"), "--machine_types", "fan,pump",
                                 "--clip_seconds", "1", "--source_train", "3", "--target_train", "2",
                                 "--test_normal", "2", "--test_anomaly", "1", "--progress", "false"])
    p = {**pipeline, "data": str(small), "embed": str(tmp_path / "embed"), "cache": str(tmp_path / "cache")}
    load = lambda **kw: extract_embeddings.load_split_features(
        "test", p["data"], p["model"], p["embed"], cache_dir=p["cache"], **kw)
    first, _ = load()
    assert "missing" in capsys.readouterr().out
    again, _ = load()
    assert "up to date" in capsys.readouterr().out and torch.equal(first["matrix"], again["matrix"])

    # other embedding settings -> rebuilt
    crop = extract_embeddings.embedding_settings(long_clip="crop", pooling="mean")
    other, _ = load(settings=crop)
    assert "other embedding settings" in capsys.readouterr().out
    assert not torch.equal(other["matrix"], first["matrix"])

    # another checkpoint at the same path -> rebuilt, with different numbers
    model_copy = tmp_path / "best.pth"
    model_copy.write_bytes(Path(p["model"]).read_bytes())
    p["model"] = str(model_copy)
    load()                                   # settings from normal file (none here) -> defaults
    capsys.readouterr()
    payload = torch.load(model_copy, weights_only=True)
    payload["trainable_state"] = {k: v + 0.05 for k, v in payload["trainable_state"].items()}
    torch.save(payload, model_copy)
    changed, _ = load()
    assert "another checkpoint" in capsys.readouterr().out
    assert not torch.equal(changed["matrix"], first["matrix"])

    # a changed clip (the data) -> rebuilt
    clip = Path(changed["records"][0]["path"])
    stat = clip.stat()
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load()
    assert "other data" in capsys.readouterr().out

    # a Deep SVDD fitted on other embeddings is refused
    svdd_dir = tmp_path / "svdd"
    train_deepSVDD.main(["--data_dir", p["data"], "--model_path", p["model"], "--embed_dir", p["embed"],
                         "--svdd_dir", str(svdd_dir), "--epochs", "2", "--hidden_neurons", "16,4"])
    payload["trainable_state"] = {k: v - 0.05 for k, v in payload["trainable_state"].items()}
    torch.save(payload, model_copy)
    with pytest.raises(ValueError, match="rerun train_deepSVDD.py"):
        evaluate_deepSVDD.main(["--data_dir", p["data"], "--model_path", p["model"], "--embed_dir", p["embed"],
                                "--svdd_dir", str(svdd_dir), "--results_dir", str(tmp_path / "res")])
