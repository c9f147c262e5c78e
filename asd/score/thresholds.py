"""The decision threshold of each section from its training normals' scores, and the decisions."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.stats

from asd.report.evaluation import group_by_section

DECISION_PERCENTILE = 0.9  # decision threshold = this quantile of a gamma fitted to training normals
GAMMA_LOCATIONS = ("zero", "free")  # zero: location fixed at 0 | free: the earlier 3-parameter fit
MIN_DOMAIN_SCORES = 10  # a domain gets its own threshold from at least this many training scores


def threshold_info(
    train_scores: Sequence[float], percentile: float = DECISION_PERCENTILE, location: str = "zero"
) -> dict:
    """The ``percentile`` quantile of a gamma fitted to the training normals' (out-of-sample) scores,
    with the empirical quantile beside it as a check.

    location "zero": scipy.stats.gamma.fit(scores, floc=0); scores that are not all positive
    (standardised ones) cannot follow such a gamma, and the empirical quantile is used. location
    "free" (the earlier fit): the scores are shifted to start just above zero, a 3-parameter gamma
    is fitted and its quantile shifted back. With fewer than 5 or constant scores the empirical
    quantile is used. Returns threshold, method, empirical quantile, count, the expected false-alarm
    rate (1 - percentile) and the share of the training scores above the threshold.
    """
    if location not in GAMMA_LOCATIONS:
        raise ValueError(f"gamma location must be one of {GAMMA_LOCATIONS}, got {location!r}")
    scores = np.asarray(train_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise ValueError("a decision threshold needs at least one finite training score")
    empirical = float(np.quantile(scores, percentile))
    spread = float(np.std(scores))
    threshold, method = float("nan"), f"gamma, location {'0' if location == 'zero' else 'free'}"
    if scores.size < 5 or spread == 0.0:
        method = "empirical quantile (fewer than 5 or constant scores)"
    elif location == "zero" and scores.min() <= 0:
        method = "empirical quantile (scores not all positive: no gamma with location 0 fits them)"
    else:
        shift = 1e-3 * spread - float(scores.min()) if location == "free" and scores.min() <= 0 else 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                params = scipy.stats.gamma.fit(
                    scores + shift, **({"floc": 0.0} if location == "zero" else {})
                )
                threshold = float(scipy.stats.gamma.ppf(percentile, *params)) - shift
            except Exception:  # scipy's optimiser can fail on odd samples
                pass
        if not np.isfinite(threshold):
            method = "empirical quantile (the gamma fit failed)"
    if not np.isfinite(threshold):
        threshold = empirical
    return {
        "threshold": threshold,
        "method": method,
        "empirical_quantile": empirical,
        "n_scores": int(scores.size),
        "expected_false_alarm_rate": 1.0 - percentile,
        "training_share_above": float(np.mean(scores > threshold)),
    }


def threshold_table(
    records: Sequence, train_scores: Mapping[tuple[str, str], Sequence[float]], location: str = "zero"
) -> dict:
    """{(machine_type, section): threshold_info over all its training normals} and, where the training
    scores carry domains (asd.score.scoring.TrainScores) with at least MIN_DOMAIN_SCORES each,
    {(machine_type, section, domain): ...}."""
    table = {}
    domains = getattr(train_scores, "domains", {})
    for key in group_by_section(records):
        if key not in train_scores or len(train_scores[key]) == 0:
            raise ValueError(
                f"no training scores for {key[0]} section {key[1]}: "
                "cannot set the decision threshold (is the section missing from train/?)"
            )
        table[key] = threshold_info(train_scores[key], location=location)
        if key in domains:
            values, of = (
                np.asarray(train_scores[key], dtype=np.float64),
                np.asarray(domains[key], dtype=object),
            )
            for domain in ("source", "target"):  # a NaN score (no out-of-sample score) does not count
                if np.sum((of == domain) & np.isfinite(values)) >= MIN_DOMAIN_SCORES:
                    table[(*key, domain)] = threshold_info(values[of == domain], location=location)
    return table


def threshold_for(record, table: Mapping[tuple, dict]) -> float:
    """The clip's domain threshold where its domain is known and has one, else its section's."""
    key = (record.machine_type, record.section)
    return table.get((*key, record.domain), table[key])["threshold"]


def decide(
    scores: Mapping[str, float], records: Sequence, thresholds: Mapping[tuple, object]
) -> dict[str, int]:
    """{path: 1 if the clip's score is above its threshold else 0}; ``thresholds`` is a threshold_table
    or {(machine_type, section): threshold}."""
    table = {
        key: value if isinstance(value, dict) else {"threshold": value} for key, value in thresholds.items()
    }
    return {r.path: int(scores[r.path] > threshold_for(r, table)) for r in records}


def domain_false_alarms(
    train_scores: Mapping[tuple[str, str], Sequence[float]], thresholds: Mapping[tuple, dict]
) -> list[dict]:
    """Per section and domain of the training normals: their count, the expected false-alarm rate and the
    share of their out-of-sample scores above the SECTION's threshold (the one a clip of unknown domain
    gets): whether one threshold per section flags the nominal share of normals in both domains."""
    rows = []
    domains = getattr(train_scores, "domains", {})
    for key in sorted(set(train_scores) & set(domains) & set(thresholds)):
        info = thresholds[key]
        values, of = np.asarray(train_scores[key], dtype=np.float64), np.asarray(domains[key], dtype=object)
        for domain in ("source", "target"):
            chosen = values[of == domain]
            if chosen.size:
                rows.append(
                    {
                        "machine_type": key[0],
                        "section": key[1],
                        "domain": domain,
                        "n_normals": int(chosen.size),
                        "expected_false_alarm_rate": info["expected_false_alarm_rate"],
                        "observed_false_alarm_rate": float(np.mean(chosen > info["threshold"])),
                    }
                )
    return rows


def false_alarm_lines(rows: Sequence[dict]) -> list[str]:
    """What to print: one line per domain of the training normals flagged by their section's thresholds
    (pooled over sections), and one per section and domain with fewer than MIN_DOMAIN_SCORES normals."""
    lines = []
    for domain in ("source", "target"):
        chosen = [r for r in rows if r["domain"] == domain]
        if chosen:
            n = sum(r["n_normals"] for r in chosen)
            flagged = sum(r["observed_false_alarm_rate"] * r["n_normals"] for r in chosen)
            lines.append(
                f"{domain} training normals above their section's threshold (out of sample): "
                f"{flagged / n:.1%} of {n} (expected {chosen[0]['expected_false_alarm_rate']:.0%})"
            )
    lines += [
        f"{r['machine_type']} section {r['section']}: only {r['n_normals']} {r['domain']} training normals "
        f"(< {MIN_DOMAIN_SCORES}): its false-alarm rate is a rough estimate and the domain has no threshold "
        "of its own"
        for r in rows
        if r["n_normals"] < MIN_DOMAIN_SCORES
    ]
    return lines
