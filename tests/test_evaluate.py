"""End to end on a tiny generated tree with obvious anomalies: train -> embed -> Deep SVDD -> ensemble.

Also: the embedding files are rebuilt (never reused) when the tuned model, the data or the embedding
settings change; the scorers read only those files, refuse stale or disagreeing ones naming the
command to run, and refuse a Deep SVDD fitted on other embeddings.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
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
from asd.base import freshness  # noqa: E402
from eat_checkpoint_support import write_eat_checkpoint  # noqa: E402

MACHINES = ["fan", "pump"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A 2-machine tree (2 s clips, anomalies at 0.8-1.0 strength), a tiny EAT checkpoint and a
    1-epoch tuned model; returns the common paths."""
    root = tmp_path_factory.mktemp("e2e")
    data = make_demo_data.main(
        [
            "--out_dir",
            str(root / "data"),
            "--machine_types",
            ",".join(MACHINES),
            "--clip_seconds",
            "2",
            "--source_train",
            "12",
            "--target_train",
            "4",
            "--test_normal",
            "6",
            "--test_anomaly",
            "6",
            "--min_strength",
            "0.8",
            "--progress",
            "false",
        ]
    )
    write_eat_checkpoint(root / "eat")
    paths = {
        "data": str(data),
        "model": str(root / "best.pth"),
        "embed": str(root / "embed"),
        "cache": str(root / "cache"),
        "root": root,
    }
    train.main(
        [
            "--data_dir",
            paths["data"],
            "--eat_checkpoint",
            str(root / "eat"),
            "--epochs",
            "1",
            "--batch_size",
            "8",
            "--target_frames",
            "0",
            "--num_workers",
            "0",
            "--lora_rank",
            "2",
            "--feature_cache",
            paths["cache"],
            "--output",
            paths["model"],
            "--last_checkpoint",
            str(root / "last.pth"),
            "--val_fraction",
            "0.25",
            "--clip_seconds",
            "whole",
            "--mixup",
            "batch_fbank",
        ]
    )
    return paths


def _extract(p: dict, *extra: str) -> dict:
    return extract_embeddings.main(
        [
            "--data_dir",
            p["data"],
            "--model_path",
            p["model"],
            "--embed_dir",
            p["embed"],
            "--feature_cache",
            p["cache"],
            "--embed_batch_size",
            "8",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def run_folder(pipeline):
    """Embeddings, both scorers and their results in run_all's layout: (run folder, outputs)."""
    p = pipeline
    run = p["root"] / "run"
    out = _extract({**p, "embed": str(run)})
    svdd_dir = run / "svdd_models_per_type"
    written = train_deepSVDD.main(
        ["--embed_dir", str(run), "--svdd_dir", str(svdd_dir), "--use_stats", "true"]
    )
    svdd = evaluate_deepSVDD.main(
        [
            "--embed_dir",
            str(run),
            "--svdd_dir",
            str(svdd_dir),
            "--results_dir",
            str(run / "results" / "deepsvdd"),
            "--plots",
            "false",
        ]
    )
    ensemble = evaluate.main(
        ["--embed_dir", str(run), "-k", "3", "--w", "0.7", "--results_dir", str(run / "results" / "ensemble")]
    )
    # a registry back end beside it, where run_all writes the others (results/backends/<name>)
    evaluate.main(
        ["--embed_dir", str(run), "--backends", "knn", "-k", "2", "--plots", "false"]
        + [
            "--results_dir",
            str(run / "results" / "ensemble"),
            "--backends_dir",
            str(run / "results" / "backends"),
        ]
    )
    return run, {"extract": out, "svdd_models": written, "deepsvdd": svdd, "ensemble": ensemble}


def test_pipeline_end_to_end_scores_easy_anomalies_well(pipeline, run_folder):
    p = pipeline
    run, outputs = run_folder
    normal_emb, normal_stats = outputs["extract"]["train"]
    test_emb, test_stats = outputs["extract"]["test"]
    assert normal_emb["matrix"].shape[0] == normal_stats["matrix"].shape[0] == 2 * 16
    assert normal_stats["columns"] and len(normal_stats["columns"]) == normal_stats["matrix"].shape[1]
    assert {r["label"] for r in normal_emb["records"]} == {"normal"}
    assert {r["domain"] for r in normal_emb["records"]} == {"source", "target"}
    assert test_emb["matrix"].shape[0] == 2 * 24 and torch.isfinite(test_emb["matrix"]).all()
    for name in ("normal_embeddings.pt", "normal_stats.pt", "test_embeddings.pt", "test_stats.pt"):
        assert (run / name).is_file()
    written = outputs["svdd_models"]
    assert sorted(written) == MACHINES and all(path.is_file() for path in written.values())
    svdd, ensemble = outputs["deepsvdd"], outputs["ensemble"]
    for summary in (svdd, ensemble):
        aucs = [s["values"][key] for s in summary["sections"] for key in ("AUC (source)", "AUC (target)")]
        print(summary["scorer"], summary["official_score"], aucs)
        assert summary["dcase_year"] == "2022+" and summary["complete"]
        assert sum(aucs) / len(aucs) > 0.8, summary
        assert summary["official_score"] > 0.6, summary
    assert ensemble["settings"]["k"] == 3 and ensemble["settings"]["w"] == 0.7
    rows = list(csv.reader(open(run / "results" / "ensemble" / "anomaly_score_fan_section_00_test.csv")))
    assert len(rows) == 24 and all(r[0].endswith(".wav") and len(r) == 2 for r in rows)
    assert (run / "results" / "ensemble" / "roc_pump.png").is_file()
    assert (run / "results" / "ensemble" / "evaluator_result.csv").is_file()
    assert not (run / "results" / "deepsvdd" / "roc_pump.png").exists()
    for scorer in ("deepsvdd", "ensemble"):  # training curves found through the model the embeddings name
        page = (run / "results" / scorer / "report.html").read_text()
        assert 'alt="training curves"' in page and "1 epoch of" in page and "training and validation" in page
        assert str(Path(p["model"]).resolve()) in page

    grid = evaluate.main(
        [
            "--embed_dir",
            str(run),
            "--sweep",
            "true",
            "--sweep_ks",
            "1,3",
            "--sweep_ws",
            "0,0.5,1",
            "--results_dir",
            str(p["root"] / "res_sweep"),
        ]
    )
    assert len(grid["sweep"]) == 2 and len(grid["sweep"][0]) == 3
    assert not (p["root"] / "res_sweep").exists()


def test_stale_files_are_rebuilt_and_refused_by_the_scorers(pipeline, tmp_path, capsys):
    small = make_demo_data.main(
        [
            "--out_dir",
            str(tmp_path / "data"),
            "--machine_types",
            "fan,pump",
            "--clip_seconds",
            "1",
            "--source_train",
            "3",
            "--target_train",
            "2",
            "--test_normal",
            "2",
            "--test_anomaly",
            "1",
            "--progress",
            "false",
        ]
    )
    p = {**pipeline, "data": str(small), "embed": str(tmp_path / "embed"), "cache": str(tmp_path / "cache")}
    first = _extract(p)["test"][0]
    assert "missing" in capsys.readouterr().out
    again = _extract(p)["test"][0]
    assert "up to date" in capsys.readouterr().out and torch.equal(first["matrix"], again["matrix"])

    # other embedding settings -> rebuilt
    other = _extract(p, "--long_clip", "crop", "--pooling", "mean")["test"][0]
    assert "other embedding settings" in capsys.readouterr().out
    assert not torch.equal(other["matrix"], first["matrix"])
    _extract(p)
    capsys.readouterr()

    # a Deep SVDD fitted on these embeddings
    svdd_dir = tmp_path / "svdd"
    train_deepSVDD.main(
        [
            "--embed_dir",
            p["embed"],
            "--svdd_dir",
            str(svdd_dir),
            "--svdd_epochs",
            "2",
            "--hidden_neurons",
            "16,4",
        ]
    )

    # the tuned model changes on disk: the scorers stop and name the command; extraction rebuilds
    model_copy = tmp_path / "best.pth"
    model_copy.write_bytes(Path(p["model"]).read_bytes())
    p["model"] = str(model_copy)
    _extract(p)
    payload = torch.load(model_copy, weights_only=True)
    payload["trainable_state"] = {k: v + 0.05 for k, v in payload["trainable_state"].items()}
    torch.save(payload, model_copy)
    with pytest.raises(ValueError, match="changed .* since extraction; run python extract_embeddings.py"):
        evaluate.main(["--embed_dir", p["embed"], "--results_dir", str(tmp_path / "res")])
    changed = _extract(p)["test"][0]
    assert "another tuned model" in capsys.readouterr().out
    assert not torch.equal(changed["matrix"], first["matrix"])
    # ... and the Deep SVDD fitted on the old embeddings is refused
    with pytest.raises(ValueError, match="rerun train_deepSVDD.py"):
        evaluate_deepSVDD.main(
            ["--embed_dir", p["embed"], "--svdd_dir", str(svdd_dir), "--results_dir", str(tmp_path / "res")]
        )

    # a clip edited in place, same size and modification time -> the scorers refuse, extraction rebuilds
    clip = Path(changed["records"][0]["path"])
    stat = clip.stat()
    data = bytearray(clip.read_bytes())
    data[-2:] = bytes([data[-2] ^ 0x55, data[-1] ^ 0x55])  # the last sample changes
    clip.write_bytes(bytes(data))
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert clip.stat().st_size == stat.st_size and clip.stat().st_mtime_ns == stat.st_mtime_ns
    freshness._memo.clear()  # each pipeline step is a new process: nothing is remembered between them
    with pytest.raises(ValueError, match="clips in .* changed"):
        evaluate.main(["--embed_dir", p["embed"], "--results_dir", str(tmp_path / "res")])
    _extract(p)
    assert "other data" in capsys.readouterr().out

    # a missing statistics file is named with the command to run
    (Path(p["embed"]) / "test_stats.pt").unlink()
    with pytest.raises(FileNotFoundError, match="test_stats.pt is missing.*extract_embeddings.py --data_dir"):
        evaluate.main(["--embed_dir", p["embed"], "--results_dir", str(tmp_path / "res")])
    assert not (tmp_path / "res").exists()


def test_scorers_do_not_import_the_model():
    code = (
        "import sys, evaluate, evaluate_deepSVDD, train_deepSVDD, score_clips, asd.report.results; "
        "assert 'model' not in sys.modules and 'peft' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("scorer", ["ensemble", "deepsvdd", "knn"])
def test_score_clips_gives_renamed_clips_the_evaluators_scores(run_folder, tmp_path, scorer, capsys):
    import score_clips

    run, _ = run_folder
    results = run / "results" / ("backends/knn" if scorer == "knn" else scorer)
    expected = {
        row[0]: (float(row[1]), int(d[1]))
        for row, d in zip(
            csv.reader(open(results / "anomaly_score_pump_section_00_test.csv")),
            csv.reader(open(results / "decision_result_pump_section_00_test.csv")),
        )
    }
    data = Path(run_folder[1]["extract"]["test"][0]["records"][0]["path"]).parents[2]
    originals = sorted((data / "pump" / "test").glob("*.wav"))[:5]
    renamed = []
    for i, clip in enumerate(originals):  # arbitrary names, as a plant engineer's recorder gives
        renamed.append(tmp_path / f"recording {i} from line 3.wav")
        renamed[-1].write_bytes(clip.read_bytes())
    out = tmp_path / "scores.csv"
    rows = score_clips.main(
        [
            "--run",
            str(run),
            "--machine_type",
            "pump",
            "--section",
            "00",
            "--scorer",
            scorer,
            "--output",
            str(out),
            *map(str, renamed),
        ]
    )
    summary = json.loads((results / "summary.json").read_text())
    (pooled,) = [
        t["threshold"]
        for t in summary["decision_thresholds"]
        if (t["machine_type"], t["section"], t["domain"]) == ("pump", "00", "all")
    ]
    for (_, score, decision), original in zip(rows, originals):
        # equal up to float32 rounding: a clip's embedding differs in the last bits with its batch's make-up
        assert score == pytest.approx(expected[original.name][0], rel=1e-3, abs=1e-4)
        # a new recording's domain is unknown: judged by the section's threshold over all its normals
        assert decision == int(score > pooled)
    printed = capsys.readouterr().out
    assert f"threshold {pooled:.4g}" in printed and "5 clips of pump section 00" in printed
    lines = out.read_text().splitlines()
    assert (
        lines[0] == "file,score,decision"
        and len(lines) == 6
        and lines[1].startswith("recording 0 from line 3.wav,")
    )
    with pytest.raises(ValueError, match="never saw valve section 00"):
        score_clips.main(
            ["--run", str(run), "--machine_type", "valve", "--output", str(out), str(renamed[0])]
        )


def test_a_relative_data_folder_gives_files_the_scorers_accept(pipeline, tmp_path, monkeypatch):
    from asd.embed import embedding_files

    data = Path(pipeline["data"])
    monkeypatch.chdir(data.parent)
    _extract({**pipeline, "data": data.name, "embed": str(tmp_path / "embed")})
    features = embedding_files.load_features(tmp_path / "embed")
    assert features.data_dir == str(data.resolve()) and len(features.normal) == 2 * 16


def test_missing_test_clips_are_named_not_hidden_in_the_score(pipeline, tmp_path, capsys):
    """One machine type without test/ and another without anomalies: the table names both and the
    number is not called the official score."""
    data = tmp_path / "data"
    shutil.copytree(pipeline["data"], data)
    shutil.rmtree(data / "pump" / "test")
    for clip in (data / "fan" / "test").glob("*target_test_anomaly*"):
        clip.unlink()
    for clip in (data / "fan" / "test").glob("*source_test_anomaly*"):
        clip.unlink()
    p = {**pipeline, "data": str(data), "embed": str(tmp_path / "embed"), "cache": str(tmp_path / "cache")}
    _extract(p)
    capsys.readouterr()
    summary = evaluate.main(
        ["--embed_dir", p["embed"], "--results_dir", str(tmp_path / "res"), "--plots", "false"]
    )
    out = capsys.readouterr().out
    assert summary["official_score"] is None and not summary["complete"]
    assert summary["missing"] == ["fan section 00: no anomalous test clips", "pump section 00: no test clips"]
    assert "NOT the official score" in out and "pump section 00: no test clips" in out
    assert "\nofficial score" not in out


def _anonymise(source: Path, target: Path, truth: Path) -> dict[str, str]:
    """A copy of a DCASE folder whose test clips carry evaluation-set names (section_00_NNNN.wav, no label,
    no domain; the attributes tables keep only training rows) and the evaluator's ground-truth files
    for it. Returns {new name: old name} per machine type (keys 'machine/new')."""
    shutil.copytree(source, target)
    renamed = {}
    for machine_dir in sorted(p for p in target.iterdir() if p.is_dir()):
        machine = machine_dir.name
        rows = {"data": [], "domain": []}
        for i, clip in enumerate(sorted((machine_dir / "test").glob("*.wav"))):
            new = f"section_00_{i:04d}.wav"
            clip.rename(clip.with_name(new))
            renamed[f"{machine}/{new}"] = clip.name
            rows["data"].append(f"{new},{int('_anomaly_' in clip.name)}")
            rows["domain"].append(f"{new},{int('_target_' in clip.name)}")
        for table in machine_dir.glob("attributes*.csv"):
            lines = table.read_text().splitlines()
            table.write_text("\n".join(line for line in lines if "/test/" not in line) + "\n")
        for kind, lines in rows.items():
            folder = truth / f"ground_truth_{kind}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"ground_truth_{machine}_section_00_test.csv").write_text("\n".join(lines) + "\n")
    return renamed


def test_unlabelled_evaluation_names_are_scored_and_measured_with_the_ground_truth(
    pipeline, run_folder, tmp_path, capsys
):
    run, outputs = run_folder
    data, truth = tmp_path / "data", tmp_path / "ground_truth"
    renamed = _anonymise(Path(pipeline["data"]), data, truth)
    p = {**pipeline, "data": str(data), "embed": str(tmp_path / "embed"), "cache": str(tmp_path / "cache")}
    _extract(p)
    capsys.readouterr()
    ensemble = ["--embed_dir", p["embed"], "-k", "3", "--w", "0.7", "--plots", "false", "--report", "false"]
    # without labels: the submission is written, no metric is computed, nothing is called a score
    blind = evaluate.main(ensemble + ["--results_dir", str(tmp_path / "blind")])
    out = capsys.readouterr().out
    assert "no metric can be computed without them" in out and "official score" not in out
    assert blind["score"] is None and blind["official_score"] is None
    assert blind["score_label"] == "no metric (the test clips carry no labels)"
    written = sorted(f.name for f in (tmp_path / "blind").glob("*_section_00_test.csv"))
    assert written == sorted(
        f"{k}_{m}_section_00_test.csv" for k in ("anomaly_score", "decision_result") for m in MACHINES
    )
    # with the ground truth: the same tables as the labelled names give
    known = evaluate.main(ensemble + ["--results_dir", str(tmp_path / "known"), "--ground_truth", str(truth)])
    labelled = outputs["ensemble"]
    assert known["score_label"] == labelled["score_label"] == "official score"
    for ours, theirs in zip(known["sections"], labelled["sections"]):
        assert ours["values"] == pytest.approx(theirs["values"], abs=1e-6)
    scores = {
        renamed[f"pump/{row[0]}"]: float(row[1])
        for row in csv.reader(open(tmp_path / "known" / "anomaly_score_pump_section_00_test.csv"))
    }
    original = dict(csv.reader(open(run / "results" / "ensemble" / "anomaly_score_pump_section_00_test.csv")))
    assert all(
        score == pytest.approx(float(original[name]), rel=1e-3, abs=1e-4) for name, score in scores.items()
    )
    # Deep SVDD: the same two ways
    svdd_dir = tmp_path / "svdd"
    train_deepSVDD.main(["--embed_dir", p["embed"], "--svdd_dir", str(svdd_dir), "--svdd_epochs", "2"])
    svdd = ["--embed_dir", p["embed"], "--svdd_dir", str(svdd_dir), "--plots", "false", "--report", "false"]
    assert evaluate_deepSVDD.main(svdd + ["--results_dir", str(tmp_path / "sb")])["score"] is None
    measured = evaluate_deepSVDD.main(
        svdd + ["--results_dir", str(tmp_path / "sk"), "--ground_truth", str(truth)]
    )
    assert measured["complete"] and measured["official_score"] is not None
    # a ground-truth row without a clip is an error naming both
    gt_file = truth / "ground_truth_data" / "ground_truth_fan_section_00_test.csv"
    gt_file.write_text(gt_file.read_text() + "section_00_9999.wav,1\n")
    domain_file = truth / "ground_truth_domain" / gt_file.name
    domain_file.write_text(domain_file.read_text() + "section_00_9999.wav,0\n")
    with pytest.raises(ValueError, match="lists section_00_9999.wav"):
        evaluate.main(ensemble + ["--results_dir", str(tmp_path / "bad"), "--ground_truth", str(truth)])


def test_an_anonymised_real_folder_scores_without_labels_and_as_its_original_with_the_ground_truth(
    pipeline, samples_dir, tmp_path, capsys
):
    """Issue 18 on real audio: the real DCASE 2023 sample folder with its test clips renamed
    section_00_NNNN.wav (ground truth in the evaluator's layout) is scored without labels (the
    submission CSVs, no metric) and, with --ground_truth, gives exactly the labelled folder's tables."""
    real = samples_dir / "dcase2023_dev"
    data, truth = tmp_path / "anonymised", tmp_path / "ground_truth"
    renamed = _anonymise(real, data, truth)
    machines = sorted(p.name for p in real.iterdir() if p.is_dir())
    runs = {}
    for name, folder in (("labelled", real), ("anonymised", data)):
        embed = tmp_path / name
        _extract({**pipeline, "data": str(folder), "embed": str(embed), "cache": str(tmp_path / "cache")})
        train_deepSVDD.main(
            ["--embed_dir", str(embed), "--svdd_dir", str(embed / "svdd"), "--svdd_epochs", "2"]
            + ["--threshold_folds", "0"]  # 2 training normals per machine type: too few to refit
        )
        runs[name] = embed
    quiet = ["--plots", "false", "--report", "false"]
    scorers = {
        "ensemble": lambda embed, *extra: evaluate.main(["--embed_dir", str(embed), *quiet, *extra]),
        "deepsvdd": lambda embed, *extra: evaluate_deepSVDD.main(
            ["--embed_dir", str(embed), "--svdd_dir", str(embed / "svdd"), *quiet, *extra]
        ),
    }
    for scorer, run in scorers.items():
        labelled = run(runs["labelled"], "--results_dir", str(tmp_path / f"{scorer}_labelled"))
        capsys.readouterr()
        blind = run(runs["anonymised"], "--results_dir", str(tmp_path / f"{scorer}_blind"))
        out = capsys.readouterr().out
        assert "no metric can be computed without them" in out and "official score" not in out
        assert blind["score"] is None and blind["official_score"] is None
        assert blind["sections"] and not any(section["values"] for section in blind["sections"])
        written = sorted(f.name for f in (tmp_path / f"{scorer}_blind").glob("*_section_00_test.csv"))
        assert written == sorted(
            f"{k}_{m}_section_00_test.csv" for k in ("anomaly_score", "decision_result") for m in machines
        )
        known = run(
            runs["anonymised"],
            "--results_dir",
            str(tmp_path / f"{scorer}_known"),
            "--ground_truth",
            str(truth),
        )
        for key in ("score_label", "score", "official_score", "complete", "missing", "sections"):
            assert known[key] == labelled[key], (scorer, key)
        assert labelled["sections"] and labelled["missing"]  # 1-2 test clips per machine type: not complete
        for machine in machines:  # every clip's score and decision, under its anonymised name
            for kind in ("anomaly_score", "decision_result"):
                csv_name = f"{kind}_{machine}_section_00_test.csv"
                ours = dict(csv.reader(open(tmp_path / f"{scorer}_known" / csv_name)))
                theirs = dict(csv.reader(open(tmp_path / f"{scorer}_labelled" / csv_name)))
                blind_rows = dict(csv.reader(open(tmp_path / f"{scorer}_blind" / csv_name)))
                assert ours == blind_rows
                assert {renamed[f"{machine}/{n}"]: v for n, v in ours.items()} == theirs
