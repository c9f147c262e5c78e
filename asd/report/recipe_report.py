"""What a recipe makes of data folders (datashape.py): the DCASE year detected from the clip names
(asd/base/years.py), the clip seconds, the number of classes and SCAdaCos's fixed scale, all through
train.py's own functions; and a warning for each machine type and section whose labelled test clips have
no normal or no anomalous clip (its AUC is undefined).
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

from asd.base.imports import PROJECT_DIR
from asd.base.recipes import recipe
from asd.base.settings_source import source_constants
from asd.base.years import detect_year
from asd.data.clips import resolve_clip_seconds
from asd.data.preprocessing import AudioError
from asd.model.heads import fixed_scale
from asd.train import training


def recipe_report(cfg: SimpleNamespace, problems: list[str], warnings: list[str]) -> None:
    """Print the DCASE year, clip seconds, classes and fixed scale RECIPE gives these folders (through
    train.py's own functions), and flag machine type/sections without normal or anomalous labelled test
    clips (issue 26: their AUC cannot be measured)."""
    # what train.py would run: its constants (as edited at its top), then the recipe's differences
    constants = source_constants(PROJECT_DIR / "train.py")
    settings = {k.lower(): v for k, v in {**constants, **recipe(cfg.report_recipe, "train")}.items()}
    run = SimpleNamespace(**{**settings, "data_dir": cfg.data_dir, "eval_list": cfg.eval_list})
    run.machine_types, run.channels = cfg.machine_types, cfg.channels or "near"
    try:
        train = training.training_records(run)
        tests = training.test_records(run) if "test" in cfg.splits else []
        index = training.class_index(run, train)
        seconds, why = resolve_clip_seconds(
            settings.get("clip_seconds", "auto"), training.data_dirs(run), train
        )
    except (ValueError, OSError, AudioError) as exc:
        problems.append(f"recipe {cfg.report_recipe}: cannot count its classes ({exc})")
        return
    found = detect_year(train + tests, training.data_dirs(run))
    year = found.year or " or ".join(found.candidates) or "unknown"
    print(f"\nrecipe {cfg.report_recipe}: DCASE {year} ({found.why}), metric rules {found.rules}")
    print(f"  clip seconds {seconds if seconds is not None else 'whole'} ({why})")
    scale = fixed_scale(len(index), settings.get("sub_clusters", 16))
    print(
        f"  {len(index)} classes ({settings['label']}, {settings['classes_from']}); fixed scale {scale:.4f}"
    )
    for (machine, section), records in sorted(_by_section(tests).items()):
        labels = {r.label for r in records}
        if labels == {None}:
            continue  # unlabelled evaluation names: nothing to measure without the ground truth
        for label in ("normal", "anomaly"):
            if label not in labels:
                warnings.append(
                    f"{machine} section {section}: no {label} labelled test clips (its AUC is undefined)"
                )


def _by_section(records: list) -> dict:
    groups: dict = defaultdict(list)
    for record in records:
        groups[record.machine_type, record.section].append(record)
    return groups
