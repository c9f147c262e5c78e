"""One self-contained HTML page of a scorer's results: RESULTS_DIR/report.html.

The page holds the official results table (per machine type and section AUC (source), AUC
(target) and pAUC, or AUC and pAUC for 2020-style data; the arithmetic and harmonic means; the
official score), the decision threshold of every section with how many test clips it flags, each
machine type's ROC curves and score histogram (the PNGs asd.report.plots.plot_machine wrote into the results
folder), the tuned model's training curves (its history CSV, found through the model path the
embedding files record), and a 2-D t-SNE map of the embeddings per machine type in three panels coloured by
domain, attribute and label, so a researcher sees where target clips and anomalies fall.

It loads nothing from the network: CSS is inline and every image is a base64 ``data:`` URI, so the
file can be mailed or archived on its own. Every string from the data is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from asd.base.files import atomic_write_text
from asd.base.years import RULES
from asd.data.names import ClipRecord
from asd.report.evaluation import Evaluation, group_by_section
from asd.report.metrics import MAX_FPR
from asd.report.plots import has_validation, training_curves_png
from asd.report.tables import format_number, table_rows
from asd.score.thresholds import DECISION_PERCENTILE, MIN_DOMAIN_SCORES
from asd.train.history import history_path, read_history

REPORT_NAME = "report.html"
TABLE_CELL_BACKGROUND = (
    "#e3eefa"  # background of the results table's value cells (the browser test looks for it)
)
TSNE_MAX_TRAIN = 300  # training normals per machine type in the map (a seeded random subset)
TSNE_PERPLEXITY = 30.0  # t-SNE perplexity, capped below a third of the points
TSNE_SEED = 0  # t-SNE initialisation and subset seed
MAX_LEGEND_ENTRIES = 12  # attribute values named in a legend; the rest share one colour

_STYLE = f"""
body {{ font-family: sans-serif; margin: 24px; color: #222; max-width: 1400px; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 18px; margin-top: 32px; }} h3 {{ font-size: 15px; }}
table {{ border-collapse: collapse; margin: 8px 0; font-size: 13px; }}
th, td {{ border: 1px solid #c8c8c8; padding: 4px 10px; }}
th {{ background: #f2f2f2; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
table.results td {{ background: {TABLE_CELL_BACKGROUND}; }}
table.results tr.mean td {{ background: #f7f7f7; font-style: italic; }}
table.results tr.official td {{ background: #fff3c4; font-weight: bold; }}
.score {{ font-size: 18px; font-weight: bold; }}
.plots img {{ max-width: 100%; margin: 4px 12px 4px 0; vertical-align: top; border: 1px solid #ddd; }}
.note {{ color: #666; font-size: 13px; }}
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _number(value) -> str:
    return "&ndash;" if value is None else _esc(format_number(value))


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes, alt: str) -> str:
    return f'<img src="{_png_uri(data)}" alt="{_esc(alt)}">'


def _as_record(record) -> ClipRecord:
    """A ClipRecord, also from the dict form stored in the embedding files."""
    return record if isinstance(record, ClipRecord) else ClipRecord.from_dict(record)


# -----------------------------------------------------------------------------
# tables


def results_table_html(evaluation: Evaluation) -> str:
    """The results table (the rows of table_rows) as an HTML table; the score row last."""
    header, rows = table_rows(evaluation)
    out = ['<table class="results">', "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(rows):
        kind = "official" if i == len(rows) - 1 else "mean" if str(row[1]).endswith("mean") else "section"
        cells = [f"<td>{_esc(row[0])}</td>", f"<td>{_esc(row[1])}</td>"]
        cells += [f'<td class="num">{_number(v)}</td>' for v in row[2:]]
        out.append(f'<tr class="{kind}">' + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def thresholds_table_html(
    scores: Mapping[str, float],
    records: Sequence,
    thresholds: Mapping[tuple, dict],
    decisions: Mapping[str, int] | None = None,
) -> str:
    """Per section (and per domain where it has its own): the decision threshold, how it was set, the
    expected false-alarm rate, and how many test clips (normal / anomalous) are decided anomalous."""
    out = [
        '<table class="thresholds">',
        "<tr><th>machine_type</th><th>section</th><th>domain</th><th>threshold</th><th>set by</th>"
        "<th>expected false alarms</th><th>training normals above</th><th>test clips</th>"
        "<th>flagged anomalous</th><th>normals flagged</th><th>anomalies flagged</th></tr>",
    ]
    for (machine, section), recs in group_by_section(records).items():
        keys = [(machine, section)] + [(machine, section, d) for d in ("source", "target")]
        for key in keys:
            info = thresholds.get(key)
            if len(key) == 3 and info is None:
                continue
            domain = key[2] if len(key) == 3 else "all"
            chosen = recs if len(key) == 2 else [r for r in recs if r.domain == key[2]]
            if decisions is not None:
                flagged = [r for r in chosen if decisions[r.path]]
            else:
                flagged = [r for r in chosen if info is not None and scores[r.path] > info["threshold"]]

            def share(label: str, chosen: list = chosen, flagged: list = flagged) -> str:
                total = sum(r.label == label for r in chosen)
                return f"{sum(r.label == label for r in flagged)} / {total}" if total else "&ndash;"

            if info is None:
                cells = ["&ndash;", "the results folder's decisions", "&ndash;", "&ndash;"]
            else:
                cells = [
                    f"{info['threshold']:.6g}",
                    _esc(info["method"]),
                    f"{info['expected_false_alarm_rate']:.0%}",
                    f"{info['training_share_above']:.0%} of {info['n_scores']}",
                ]
            out.append(
                f"<tr><td>{_esc(machine)}</td><td>{_esc(section)}</td><td>{_esc(domain)}</td>"
                + "".join(f'<td class="num">{c}</td>' for c in cells)
                + f'<td class="num">{len(chosen)}</td><td class="num">{len(flagged)}</td>'
                f'<td class="num">{share("normal")}</td><td class="num">{share("anomaly")}</td></tr>'
            )
    out.append("</table>")
    return "\n".join(out)


# -----------------------------------------------------------------------------
# the embedding map


def tsne_coordinates(
    matrix: np.ndarray, seed: int = TSNE_SEED, perplexity: float = TSNE_PERPLEXITY
) -> np.ndarray:
    """2-D t-SNE of the rows of ``matrix`` [N, D] (N >= 2); perplexity capped at (N - 1) / 3."""
    from sklearn.manifold import TSNE

    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.shape[0] < 2:
        raise ValueError(f"t-SNE needs at least 2 points, got {matrix.shape[0]}")
    capped = max(1.0, min(perplexity, (matrix.shape[0] - 1) / 3))
    return TSNE(n_components=2, perplexity=capped, init="pca", random_state=seed).fit_transform(matrix)


def _map_points(embeddings: Mapping[str, Mapping], machine: str, max_train: int, seed: int):
    """(matrix, [(split, record)]) of one machine type: all its test clips and up to ``max_train`` training normals."""
    rng = np.random.default_rng(seed)
    rows, points = [], []
    for split in ("train", "test"):
        if split not in embeddings:
            continue
        matrix = np.asarray(embeddings[split]["matrix"], dtype=np.float32)
        records = [_as_record(r) for r in embeddings[split]["records"]]
        index = [i for i, r in enumerate(records) if r.machine_type == machine]
        if split == "train" and len(index) > max_train:
            index = sorted(rng.choice(index, size=max_train, replace=False).tolist())
        rows += [matrix[i] for i in index]
        points += [(split, records[i]) for i in index]
    return (np.stack(rows) if rows else np.zeros((0, 1), np.float32)), points


def _point_groups(points: list) -> dict[str, list[str]]:
    """Each point's group name in the three panels."""
    attributes = [r.attribute_string for _, r in points]
    named = {a for a, _ in Counter(attributes).most_common(MAX_LEGEND_ENTRIES)}
    return {
        "domain": [r.domain or "no domain" for _, r in points],
        "attribute": [a if a in named else "other attributes" for a in attributes],
        "label": ["train normal" if split == "train" else f"test {r.label}" for split, r in points],
    }


_FIXED_COLOURS = {
    "source": "#1f77b4",
    "target": "#ff7f0e",
    "no domain": "#7f7f7f",
    "train normal": "#bbbbbb",
    "test normal": "#2ca02c",
    "test anomaly": "#d62728",
    "test unknown": "#9467bd",
    "other attributes": "#cccccc",
}


def embedding_map_png(machine: str, coords: np.ndarray, points: list) -> bytes:
    """Three t-SNE panels of one machine type (colour: domain, attribute, label; marker: o test, . train)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _point_groups(points)
    is_test = np.array([split == "test" for split, _ in points])
    palette = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.2))
    for ax, (panel, names) in zip(axes, groups.items()):
        names = np.array(names)
        for i, name in enumerate(sorted(set(names))):
            colour = _FIXED_COLOURS.get(name, palette[i % len(palette)])
            legend_label = name
            for test, marker, size in ((False, ".", 14), (True, "o", 22)):
                chosen = (names == name) & (is_test == test)
                if chosen.any():
                    ax.scatter(
                        coords[chosen, 0],
                        coords[chosen, 1],
                        s=size,
                        marker=marker,
                        color=colour,
                        alpha=0.8,
                        label=legend_label,
                    )
                    legend_label = None
        ax.set(title=f"{machine}: by {panel}", xticks=[], yticks=[])
        ax.legend(fontsize=7, loc="best", markerscale=1.2)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def embedding_maps_html(
    embeddings: Mapping[str, Mapping],
    machines: Sequence[str],
    max_train: int = TSNE_MAX_TRAIN,
    seed: int = TSNE_SEED,
) -> str:
    out = []
    for machine in machines:
        matrix, points = _map_points(embeddings, machine, max_train, seed)
        if len(points) < 2:
            out.append(f'<p class="note">{_esc(machine)}: fewer than 2 embedded clips, no map.</p>')
            continue
        png = embedding_map_png(machine, tsne_coordinates(matrix, seed), points)
        out.append(f'<div class="plots">{_img(png, f"t-SNE map of {machine}")}</div>')
    return "\n".join(out)


# -----------------------------------------------------------------------------
# the page


def machine_plots_html(results_dir: Path, machines: Sequence[str]) -> str:
    """Each machine type's roc_<machine>.png and hist_<machine>.png from the results folder, embedded."""
    out = []
    for machine in machines:
        images = [
            _img(path.read_bytes(), f"{kind} of {machine}")
            for kind, path in (
                ("ROC curves", results_dir / f"roc_{machine}.png"),
                ("score histogram", results_dir / f"hist_{machine}.png"),
            )
            if path.is_file()
        ]
        body = "".join(images) or '<span class="note">no plots in the results folder (PLOTS off?)</span>'
        out.append(f'<h3>{_esc(machine)}</h3>\n<div class="plots">{body}</div>')
    return "\n".join(out)


def training_curves_html(model_path: str | Path | None) -> str:
    """The tuned model's training curves (its <stem>_history.csv beside it), or a sentence saying why
    there are none: no model known, no history file, no epochs, or a history that cannot be read."""
    if not model_path:
        return '<p class="note">No tuned model is recorded for these results: no training curves.</p>'
    path = history_path(model_path)
    if not path.is_file():
        return (
            f'<p class="note">No training history beside the tuned model {_esc(model_path)}: '
            f"{_esc(path)} does not exist (a model trained before histories were written, or moved "
            "without it).</p>"
        )
    try:
        rows = read_history(path)
        png = training_curves_png(rows, Path(model_path).stem) if rows else None
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as error:
        return f'<p class="note">The training history {_esc(path)} cannot be read: {_esc(error)}.</p>'
    if png is None:
        return f'<p class="note">The training history {_esc(path)} holds no epochs (encoder not tuned).</p>'
    validated = has_validation(rows)
    return (
        f'<p class="note">{len(rows)} epoch{"s" * (len(rows) != 1)} of {_esc(model_path)}, from {_esc(path)}; '
        + ("training and validation" if validated else "training only (no validation split)")
        + f'.</p>\n<div class="plots">{_img(png, "training curves")}</div>'
    )


def domain_false_alarms_html(rows: Sequence[dict]) -> list[str]:
    """The training normals of each domain flagged by their section's threshold (none without rows)."""
    if not rows:
        return []
    head = "<tr><th>machine_type</th><th>section</th><th>domain</th><th>training normals</th>"
    head += "<th>expected false alarms</th><th>observed (out of sample)</th></tr>"
    body = [
        f"<tr><td>{_esc(r['machine_type'])}</td><td>{_esc(r['section'])}</td><td>{_esc(r['domain'])}</td>"
        f"<td>{r['n_normals']}{' (few)' if r['n_normals'] < MIN_DOMAIN_SCORES else ''}</td>"
        f"<td>{r['expected_false_alarm_rate']:.0%}</td><td>{r['observed_false_alarm_rate']:.1%}</td></tr>"
        for r in rows
    ]
    return [
        "<h3>False alarms per domain under one threshold per section</h3>",
        '<p class="note">The share of each domain\'s training normals (scored out of sample) above their '
        "section's threshold, the one a clip of unknown domain gets: close to the expected share in both "
        f"domains when the scores' scale does not depend on the domain. Fewer than {MIN_DOMAIN_SCORES} "
        "normals: a rough estimate.</p>",
        '<table class="thresholds">',
        head,
        *body,
        "</table>",
    ]


def write_report(
    results_dir: str | Path,
    evaluation: Evaluation,
    scores: Mapping[str, float],
    records: Sequence,
    thresholds: Mapping[tuple, dict],
    embeddings: Mapping[str, Mapping] | None = None,
    title: str = "anomaly detection results",
    decisions: Mapping[str, int] | None = None,
    model_path: str | Path | None = None,
    false_alarms: Sequence[dict] = (),
) -> Path:
    """Write ``results_dir``/report.html (atomically) and return its path.

    ``evaluation``: asd.report.evaluation.compute_official(scores, records, ...); ``scores``: test clip path ->
    anomaly score; ``records``: the test ClipRecords; ``thresholds``: asd.score.thresholds.threshold_table
    (per section and domain: threshold and how it was set); ``embeddings``: optional {"test": ..., "train": ...}, each a mapping with
    "matrix" [N, D] and "records" (ClipRecords or their to_dict() form); without it the page has no map.
    The ROC and histogram PNGs are read from ``results_dir`` where asd.report.plots.plot_machine wrote them.
    ``model_path``: the tuned model the embeddings came from; its training history is drawn.
    ``false_alarms``: asd.score.thresholds.domain_false_alarms (per section and domain of the training normals).
    """
    results_dir = Path(results_dir)
    machines = list(dict.fromkeys(r.machine_type for r in records))
    missing = evaluation.missing_lines()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="score">{_esc(evaluation.score_label())}: {_number(evaluation.score)}</p>'
        if evaluation.labelled
        else '<p class="note">The test clips carry no labels (evaluation-set names): no metric can be '
        "computed without them. The anomaly scores and decisions (the challenge submission) are written; "
        "give the evaluator's ground truth with --ground_truth DIR once it is out.</p>",
        "<h2>Results</h2>",
        f'<p class="note">{_esc(RULES[evaluation.year])} [{_esc(evaluation.why)}]. pAUC: '
        f"scikit-learn's roc_auc_score(max_fpr={MAX_FPR}), the McClish-standardised partial AUC "
        "(chance 0.5), as the official evaluator computes it.</p>",
        results_table_html(evaluation),
    ]
    if missing:
        parts += ['<p class="note">missing from the score:</p><ul>']
        parts += [f"<li>{_esc(line)}</li>" for line in missing] + ["</ul>"]
    parts += [
        "<h2>Decision thresholds</h2>",
        f'<p class="note">Per section, and per domain where it has at least {MIN_DOMAIN_SCORES} training '
        f"normals, the {DECISION_PERCENTILE:.0%} quantile of a gamma distribution fitted to the training "
        "normals' out-of-sample scores (the empirical quantile where no gamma fits); a test clip scoring "
        "above its threshold is decided anomalous. Expected false alarms: the share of normal clips a "
        "threshold is meant to flag.</p>"
        if thresholds
        else '<p class="note">The decisions as the results folder\'s decision_result files give them.</p>',
        thresholds_table_html(scores, records, thresholds, decisions),
        *domain_false_alarms_html(false_alarms),
        "<h2>ROC curves and score histograms</h2>",
        machine_plots_html(results_dir, machines),
        "<h2>Training curves</h2>",
        training_curves_html(model_path),
    ]
    if embeddings:
        parts += [
            "<h2>Embedding map (t-SNE)</h2>",
            '<p class="note">Per machine type, a 2-D t-SNE of the test embeddings and up to '
            f"{TSNE_MAX_TRAIN} training normals (o: test clip, .: training normal); the same map "
            "coloured three ways.</p>",
            embedding_maps_html(embeddings, machines),
        ]
    parts.append("</body></html>\n")
    path = results_dir / REPORT_NAME
    atomic_write_text("\n".join(parts), path)
    return path
