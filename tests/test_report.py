"""asd/report/report.py: the self-contained results page, its content and its rendering in a real browser."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import numpy as np
import pytest

import asd.report.evaluation as ev
import asd.score.thresholds as asd_thresholds
from asd.data.names import ClipRecord
from asd.report import plots, report, tables

MACHINES = ["fan", "valve<&>"]  # a name with HTML's special characters must come out escaped
TITLE = 'deep <script>alert("x")</script> & SVDD'


def _records(machine: str) -> list[ClipRecord]:
    out = []
    for domain in ("source", "target"):
        for label in ("normal", "anomaly"):
            for i in range(6):
                attrs = (("speed", str(i % 2)),)
                path = f"/data/{machine}/test/section_00_{domain}_test_{label}_{i:04d}_speed_{i % 2}.wav"
                out.append(ClipRecord(path, machine, "00", domain, "test", label, attrs))
    return out


def _train_records(machine: str, count: int = 20) -> list[ClipRecord]:
    return [
        ClipRecord(
            f"/data/{machine}/train/section_00_{'source' if i < 16 else 'target'}_train_normal_{i:04d}.wav",
            machine,
            "00",
            "source" if i < 16 else "target",
            "train",
            "normal",
            (("speed", str(i % 2)),),
        )
        for i in range(count)
    ]


@pytest.fixture()
def results(tmp_path):
    """Scores, the official table, thresholds, metrics' PNGs and embedding payloads of two machine types."""
    rng = np.random.default_rng(0)
    records = [r for m in MACHINES for r in _records(m)]
    scores = {r.path: float(rng.normal(1.0 if r.label == "anomaly" else 0.0, 0.6)) for r in records}
    evaluation = ev.compute_official(scores, records)
    thresholds = {
        key: asd_thresholds.threshold_info(rng.gamma(4.0, 0.1 + 0.03 * i, 40))
        for i, key in enumerate(ev.group_by_section(records))
    }
    for machine in MACHINES:
        plots.plot_machine(
            machine, [r for r in records if r.machine_type == machine], scores, tmp_path, threshold=0.5
        )
    train = [r for m in MACHINES for r in _train_records(m)]
    embeddings = {
        "test": {
            "matrix": rng.normal(size=(len(records), 16)).astype(np.float32),
            "records": [r.to_dict() for r in records],
        },  # the dict form stored in the .pt files
        "train": {"matrix": rng.normal(size=(len(train), 16)).astype(np.float32), "records": train},
    }
    return {
        "results_dir": tmp_path,
        "evaluation": evaluation,
        "scores": scores,
        "records": records,
        "thresholds": thresholds,
        "embeddings": embeddings,
    }


def _write(results, **changes) -> str:
    args = {**results, "title": TITLE, **changes}
    path = report.write_report(**args)
    assert path == results["results_dir"] / report.REPORT_NAME
    return path.read_text()


def _results_table(page: str) -> str:
    return re.search(r'<table class="results">.*?</table>', page, re.S).group(0)


def test_table_holds_every_official_value(results):
    page = _write(results)
    table_html = _results_table(page)
    header, rows = tables.table_rows(results["evaluation"])
    assert all(f"<th>{name}</th>" in table_html for name in ["AUC (source)", "AUC (target)", "pAUC"])
    cells = re.findall(r'<td class="num">([^<]*)</td>', table_html)
    expected = [("&ndash;" if v is None else f"{v:.4f}") for row in rows for v in row[2:]]
    assert cells == expected
    assert f"official score: {results['evaluation'].official_score:.4f}" in page
    assert "DCASE 2022-2025 rules" in page and "McClish" in page
    assert table_html.count('<tr class="official">') == 1
    for section in results["evaluation"].sections:  # each section's AUC (source) sits in its own row
        assert f"{section.values['AUC (source)']:.4f}" in table_html


def test_thresholds_and_flag_counts(results):
    page = _write(results)
    thresholds_html = re.search(r'<table class="thresholds">.*?</table>', page, re.S).group(0)
    for (machine, section), info in results["thresholds"].items():
        threshold = info["threshold"]
        recs = [r for r in results["records"] if r.machine_type == machine]
        flagged = sum(results["scores"][r.path] > threshold for r in recs)
        anomalies = sum(results["scores"][r.path] > threshold for r in recs if r.label == "anomaly")
        row = re.search(
            rf"<tr><td>{re.escape(report._esc(machine))}</td><td>{section}</td>(.*?)</tr>", thresholds_html
        ).group(1)
        assert f"{threshold:.6g}" in row and f">{flagged}<" in row and f"{anomalies} / 12" in row
        assert "<td>all</td>" in row and info["method"] in row and "10%" in row


def test_self_contained_and_escaped(results):
    page = _write(results)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"//[a-z0-9]", text, re.I)  # no URL of any scheme, none protocol-relative
    assert "url(" not in text and "@import" not in text and "<link" not in text
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    assert "<script" not in page  # the title's script tag is text, not a tag
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; SVDD" in page
    assert "valve&lt;&amp;&gt;" in page and "valve<&>" not in page
    assert not list(results["results_dir"].glob(".*.tmp"))


def test_images_are_embedded_pngs(results):
    page = _write(results)
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)"', page)
    alts = [alt for _, alt in images]
    for machine in MACHINES:
        name = report._esc(machine)
        assert f"ROC curves of {name}" in alts and f"score histogram of {name}" in alts
        assert f"t-SNE map of {name}" in alts
    roc = base64.b64decode(images[alts.index("ROC curves of fan")][0])
    assert roc == (results["results_dir"] / "roc_fan.png").read_bytes()
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for data, _ in images)


def test_without_embeddings_or_plots(results):
    for path in results["results_dir"].glob("*.png"):
        path.unlink()
    page = _write(results, embeddings=None)
    assert "<img" not in page and "t-SNE" not in page
    assert page.count("no plots in the results folder") == len(MACHINES)


def _history(path, val: bool) -> None:
    from asd.train.history import write_history

    history = {"epochs": [1, 2, 3], "train_loss": [2.0, 1.5, 1.25], "train_acc": [0.25, 0.5, 0.75]}
    history |= {"lr": [1e-4, 5e-5, 1e-5], "scale": [30.0, 30.0, 30.0], "seconds": [1.5, 1.25, 1.0]}
    if val:
        history |= {"val_loss": [2.5, 2.0, 1.75], "val_acc": [0.125, 0.25, 0.5]}
    write_history(path, history)


def test_training_curves_are_drawn_from_the_history_beside_the_model(results, tmp_path_factory):
    """The history CSV train.py writes beside the model is found through the model path and drawn;
    a missing, empty or unreadable history (or no model at all) is stated, not an error."""
    from asd.train.history import history_path

    models = tmp_path_factory.mktemp("models")
    model = models / "best_encoder_model.pth"
    _history(history_path(model), val=True)
    assert history_path(model).name == "best_encoder_model_history.csv"
    page = _write(results, model_path=model)
    assert "<h2>Training curves</h2>" in page and "3 epochs of" in page and "training and validation" in page
    curves = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="training curves"', page)
    assert base64.b64decode(curves.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    page = _write(results, model_path=models / "other.pth")  # no history beside it
    assert "No training history beside the tuned model" in page and "other_history.csv" in page
    assert 'alt="training curves"' not in page
    assert "No tuned model is recorded" in _write(results)
    history_path(model).write_text("epoch,loss,accuracy,val_loss,val_accuracy,learning_rate,scale,seconds\n")
    assert "holds no epochs" in _write(results, model_path=model)
    history_path(model).write_text("epoch,loss\n1,not-a-number\n")
    assert "cannot be read" in _write(results, model_path=model)


def test_training_curves_plot_the_csv_values(tmp_path):
    import matplotlib.pyplot as plt

    from asd.train.history import read_history

    _history(tmp_path / "h.csv", val=True)
    fig = plots.training_curves_figure(read_history(tmp_path / "h.csv"))
    loss, accuracy, rate = fig.axes
    lines = {(ax.get_ylabel(), line.get_label()): line for ax in fig.axes for line in ax.lines}
    assert sorted(lines) == [
        ("accuracy", "train"),
        ("accuracy", "validation"),
        ("learning rate", "learning rate"),
        ("loss", "train"),
        ("loss", "validation"),
    ]
    np.testing.assert_allclose(lines["loss", "train"].get_ydata(), [2.0, 1.5, 1.25])
    np.testing.assert_allclose(lines["loss", "validation"].get_ydata(), [2.5, 2.0, 1.75])
    np.testing.assert_allclose(lines["accuracy", "validation"].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(rate.lines[0].get_ydata(), [1e-4, 5e-5, 1e-5])
    plt.close(fig)
    _history(tmp_path / "h.csv", val=False)  # no validation split: training lines only
    fig = plots.training_curves_figure(read_history(tmp_path / "h.csv"))
    assert [line.get_label() for line in fig.axes[0].lines] == ["train"]
    plt.close(fig)


def test_map_points_subsample_training_normals(results):
    matrix, points = report._map_points(results["embeddings"], "fan", max_train=5, seed=0)
    assert matrix.shape == (5 + 24, 16)
    assert [split for split, _ in points].count("train") == 5
    assert all(r.machine_type == "fan" for _, r in points)
    groups = report._point_groups(points)
    assert groups["label"].count("test anomaly") == 12 and groups["label"].count("train normal") == 5
    assert set(groups["domain"]) == {"source", "target"}


def test_tsne_caps_perplexity_and_is_seeded():
    rng = np.random.default_rng(1)
    small = rng.normal(size=(4, 8))  # perplexity 30 would be refused by scikit-learn
    assert report.tsne_coordinates(small).shape == (4, 2)
    clusters = np.concatenate([rng.normal(0, 0.1, (20, 8)), rng.normal(5, 0.1, (20, 8))])
    first, second = report.tsne_coordinates(clusters, seed=3), report.tsne_coordinates(clusters, seed=3)
    np.testing.assert_allclose(first, second)
    # the two clusters stay apart in the map
    gap = np.linalg.norm(first[:20].mean(0) - first[20:].mean(0))
    assert gap > 3 * max(first[:20].std(0).max(), first[20:].std(0).max())
    with pytest.raises(ValueError, match="at least 2 points"):
        report.tsne_coordinates(small[:1])


# -----------------------------------------------------------------------------
# a real browser


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium not found: apt-get install chromium (the report is checked in a real browser)")
    return found


def _screenshot(chromium: str, page_path, out_png, profile) -> np.ndarray:
    from PIL import Image

    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-color-profile=srgb",
            f"--user-data-dir={profile}",
            f"--screenshot={out_png}",
            "--window-size=1200,2000",
            page_path.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return np.asarray(Image.open(out_png).convert("RGB")).astype(int)


def _pixels_of(image: np.ndarray, hex_colour: str, tolerance: int = 2) -> int:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image - rgb).max(axis=2) <= tolerance).sum())


def test_page_renders_in_headless_chromium(results, tmp_path_factory):
    chromium = _chromium()
    # a solid colour no plot uses, as the fan ROC image, to see the data: URIs decode and draw
    from PIL import Image

    Image.new("RGB", (200, 150), (255, 0, 255)).save(results["results_dir"] / "roc_fan.png")
    page = _write(results, embeddings=None)
    work = tmp_path_factory.mktemp("browser")
    image = _screenshot(
        chromium, results["results_dir"] / report.REPORT_NAME, work / "page.png", work / "profile"
    )
    assert image.shape[:2] == (2000, 1200)

    # the same page without the results table: the check below must tell the two apart
    control = work / "control.html"
    control.write_text(page.replace(_results_table(page), ""))
    without_table = _screenshot(chromium, control, work / "control.png", work / "profile")

    cell_rows = len(re.findall(r"<tr class=\"section\">", _results_table(page)))
    assert cell_rows == 2
    with_cells = _pixels_of(image, report.TABLE_CELL_BACKGROUND)
    assert with_cells > 2 * 5 * 100 * 10  # 2 section rows x 5 cells, each well over 100 x 10 px
    assert _pixels_of(without_table, report.TABLE_CELL_BACKGROUND) < 50
    assert _pixels_of(image, "#ff00ff") >= 200 * 150 * 0.95
    assert (image < 250).any(axis=2).mean() > 0.02  # not a blank page
