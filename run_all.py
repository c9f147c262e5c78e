"""Run the whole pipeline: check data, train, embed, Deep SVDD, the back ends, the DCASE baseline, one table.

    python run_all.py                                   # dev_data/ if present, else the demo
    python run_all.py --data_dir /data/dcase2023/dev_data --eat_checkpoint ~/EAT-base_epoch30_pretrain
    python run_all.py train.epochs=20 evaluate.k=3 evaluate.w=0.7    # pass any script's constant
    python run_all.py --data_dir dev_data,eval_data     # one encoder on both; each scored on its own
    python run_all.py --seeds 0,1,2,3                   # one run per seed, then mean +- std
    python run_all.py --recipe asdkit-eat-lora          # ASDKit's recipe; its k-NN + SMOTE first
    python run_all.py --baseline false                  # without the DCASE baseline autoencoder step

A step gets only what you set here (on this command line, in the constants below, the demo's values);
everything else is the step script's own constant. Precedence, lowest first: constant at the top of
the file < recipe < value given to run_all.py < command-line flag.

Every output of a data folder goes to RUNS_DIR/<folder name>-<hash of its full path>/ (one run folder
per seed with --seeds). Each step is a subprocess of this Python. A step is skipped when its outputs
exist and can be read and its command, its code and its inputs (by content) are unchanged since it
last succeeded (a stamp under <run folder>/.stamps/); otherwise it runs. Every option and override is
checked before anything runs; the first failing step stops the run with its own error. One run_all
at a time per run folder (a lock).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from asd.base.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

from asd.base import recipes
from asd.base.cli import parse_config, print_config
from asd.base.errors import run_script
from asd.base.files import remove_stale_temp_files
from asd.base.locks import run_folder_lock
from asd.base.train_checks import data_folders, refuse_repeated_data_dir, refuse_repeated_seeds
from asd.data import preprocessing
from asd.report import seeds
from asd.report.comparison import comparison_rows, format_comparison, write_comparison
from asd.run import pipeline
from asd.run.steps import StepMaker, run_folder, seed_overrides, split_step_overrides

# DCASE data (<machine>/{train,test}/*.wav), several comma-separated; None = dev_data/ if present, else the demo
DATA_DIR = None
# where the synthetic demo data set is generated
DEMO_DIR = "demo_data"
# a data folder's outputs go to RUNS_DIR/<folder name>-<hash of its full path>/
RUNS_DIR = "runs"
# EAT checkpoint (local HF folder, fairseq .pt or Hugging Face id) for train.py; None = not set: train.py's own
EAT_CHECKPOINT = None
# encoder size when there is no checkpoint: tiny | base | large; None = not set (train.py's own; demo: tiny)
MODEL_SIZE = None
# named settings for train.py and evaluate.py (asd/base/recipes.py); "" = not set
RECIPE = ""
# auto | cpu | cuda for training and embedding; None = not set (each script's own)
DEVICE = None
# microphone channels for train.py and extract_embeddings.py (e.g. near, far, mix); None = not set
CHANNELS = None
# weight of the far channel in the residual channel modes; None = not set
RESIDUAL_WEIGHT = None
# with CHANNELS both: how extraction combines the two embeddings (concat | residual); None = not set
CHANNEL_COMBINE = None
# ground truth of unlabelled test clips: the evaluator's ground-truth folder, an eval_data_list_YYYY.csv (also
# train.py's EVAL_LIST), or both comma-separated (asd/data/ground_truth.py); None = not set
GROUND_TRUTH = None
# also score with the official DCASE baseline autoencoder (evaluate.py's back end baseline_ae), side by side
BASELINE = True
# seeds: one run folder per seed (train, Deep SVDD, evaluate get it), then mean +- std; empty = one run
SEEDS = []
# rerun every step even if its outputs are up to date
FORCE = False
# demo clip length (DCASE clips are 10 s)
DEMO_CLIP_SECONDS = 10.0
# demo training epochs (tiny encoder, about 10 s each on 2 CPU cores)
DEMO_EPOCHS = 8
# demo LoRA learning rate: a random tiny encoder needs more than the recipe's 1e-4
DEMO_LEARNING_RATE = 1e-3
# demo warm-up steps (the recipe's 5,000 would outlast the demo's ~50 steps)
DEMO_WARMUP_STEPS = 10
# demo Deep SVDD also sees the signal statistics (random-encoder embeddings are weak)
DEMO_SVDD_USE_STATS = True
# demo training clips per step
DEMO_BATCH_SIZE = 8
# demo epochs of the DCASE baseline autoencoder (its recipe's 100 would triple the demo's time)
DEMO_BASELINE_EPOCHS = 20
# demo DataLoader workers (0: the tiny data set loads fastest in-process)
DEMO_NUM_WORKERS = 0
# allowed values of the constants above, checked by asd.base.cli.parse_config
_LIMITS = {
    "MODEL_SIZE": ("tiny", "base", "large"),
    "RECIPE": ("", *recipes.RECIPES),
    "CHANNELS": preprocessing.CHANNEL_MODES,
    "RESIDUAL_WEIGHT": (0.0, None),
    "CHANNEL_COMBINE": preprocessing.CHANNEL_COMBINES,
    "SEEDS": (0, None),
    "DEMO_CLIP_SECONDS": (">0", None),
    "DEMO_EPOCHS": (1, None),
    "DEMO_LEARNING_RATE": (">0", None),
    "DEMO_WARMUP_STEPS": (0, None),
    "DEMO_BATCH_SIZE": (1, None),
    "DEMO_NUM_WORKERS": (0, None),
    "DEMO_BASELINE_EPOCHS": (1, None),
}

_DEFAULT_DATA_DIR = "dev_data"  # what DATA_DIR None uses when it exists


def choose_data_dirs(cfg) -> tuple[list[Path], bool]:
    """(resolved data folders, whether it is the demo): DATA_DIR's folders when given (each must
    exist), else dev_data/ when present, else DEMO_DIR for the synthetic demo."""
    if cfg.data_dir is not None:
        folders = data_folders(cfg.data_dir)
        for folder in folders:
            if not folder.is_dir():
                raise SystemExit(f"run_all.py: error: --data_dir {folder}: no such folder")
        return [folder.resolve() for folder in folders], False
    if Path(_DEFAULT_DATA_DIR).is_dir():
        return [Path(_DEFAULT_DATA_DIR).resolve()], False
    print(
        f"No {_DEFAULT_DATA_DIR}/ found: running the demo on synthetic data in {cfg.demo_dir}/ with the "
        f"tiny encoder (pass --data_dir to use real DCASE data)."
    )
    return [Path(cfg.demo_dir).expanduser().resolve()], True


def build_steps(
    cfg, data_dirs: list[Path], run_dir: Path, demo: bool, overrides: dict[str, list[str]], scripts_dir=None
) -> list[pipeline.Step]:
    """The pipeline, in the order it runs: (the demo data,) each folder's data check, one encoder
    trained on every folder, then for each folder with test clips: its embeddings, Deep SVDD trained
    and scored, evaluate.py's back ends (the ensemble; the recipe's ASDKit back ends), and the DCASE
    baseline autoencoder on the same clips. Every output under ``run_dir``."""
    make = StepMaker(cfg, data_dirs, run_dir, demo, overrides, *([scripts_dir] if scripts_dir else []))
    steps = [make.make_demo_data()] if demo else []
    steps += [make.datashape(folder) for folder in make.data_dirs]
    steps.append(make.train())
    for folder in make.scored:
        steps.append(make.extract_embeddings(folder))
        steps.append(make.train_deepSVDD(folder))
        steps.append(make.evaluate_deepSVDD(folder))
        steps.append(make.evaluate(folder))
        steps += [make.baseline(folder)] if cfg.baseline else []
    return steps


def plan(cfg, overrides: dict[str, list[str]]) -> list[tuple[Path, list[pipeline.Step]]]:
    """(run folder, its steps) for each run (one per seed), every step's settings checked and its
    checkpoint input known, before anything is touched."""
    data_dirs, demo = choose_data_dirs(cfg)
    base = run_folder(Path(cfg.runs_dir).expanduser().resolve(), data_dirs)
    runs = []
    for seed in cfg.seeds or [None]:
        run_dir = base if seed is None else base.with_name(f"{base.name}-seed{seed}")
        words = overrides if seed is None else seed_overrides(overrides, seed)
        steps = build_steps(cfg, data_dirs, run_dir, demo, words)
        settings = pipeline.check_steps(steps, words)
        pipeline.check_ground_truth_folders(settings)
        pipeline.add_checkpoint_input(steps, settings)
        pipeline.add_backend_outputs(steps, settings)
        runs.append((run_dir, steps))
    return runs


def run_one(run_dir: Path, steps: list[pipeline.Step], force: bool) -> dict[str, list[dict]]:
    """Run one run folder's steps under its lock; {data folder's results dir: comparison rows}."""
    summaries = pipeline.scorer_summaries(steps)
    with run_folder_lock(run_dir):
        # nothing of an earlier run may pass for this one's: leftovers of killed writes, the old tables
        for path in remove_stale_temp_files(run_dir):
            print(f"removed {path} (left by an interrupted write)")
        for results in summaries:
            (results / "comparison.csv").unlink(missing_ok=True)
        started = time.time()
        ran = pipeline.run_pipeline(steps, run_dir / ".stamps", force=force)
    tables = {}
    for results, paths in summaries.items():
        rows = comparison_rows({label: json.loads(path.read_text()) for label, path in paths.items()})
        write_comparison(rows, results / "comparison.csv")
        print("\n" + format_comparison(rows, f"scorers side by side, {results.parent.name}"))
        tables[str(results)] = rows
    print(
        f"\nran {len(ran)} of {len(steps)} steps in {time.time() - started:.0f} s. Results (official CSVs, "
        f"summaries, ROC and histogram plots): {' '.join(str(r) for r in summaries)} "
        "(a folder per scorer: deepsvdd/, ensemble/, backends/<name>/, baseline/baseline_ae/; comparison.csv)"
    )
    return tables


def main(argv: list[str] | None = None) -> int:
    own_args, overrides = split_step_overrides(list(sys.argv[1:] if argv is None else argv))
    refuse_repeated_data_dir(own_args, "run_all.py")
    cfg = parse_config(globals(), own_args, description=__doc__)
    print_config(cfg, "run_all.py settings")
    try:
        refuse_repeated_seeds(cfg.seeds)
        runs = plan(cfg, overrides)
    except ValueError as error:
        raise SystemExit(f"run_all.py: error: {error}") from None
    tables = []
    try:
        for run_dir, steps in runs:
            tables.append(run_one(run_dir, steps, cfg.force))
    except pipeline.StepFailed as error:
        print(f"\nrun_all: {error}", file=sys.stderr)
        return 1
    if cfg.seeds:
        report_seeds(cfg.seeds, runs, tables)
    return 0


def report_seeds(seed_list: list[int], runs: list, tables: list[dict[str, list[dict]]]) -> None:
    """Per data folder: mean +- standard deviation over the seeds' comparison tables, printed and
    written beside the first seed's run folder (<run folder>-seeds.csv)."""
    base = runs[0][0].with_name(runs[0][0].name.rsplit("-seed", 1)[0])
    for index, results in enumerate(tables[0]):
        rows = seeds.mean_std_rows([list(table.values())[index] for table in tables])
        suffix = "" if len(tables[0]) == 1 else f"-{Path(results).parent.name}"
        path = base.with_name(f"{base.name}{suffix}-seeds.csv")
        seeds.write_mean_std(rows, path)
        print(
            "\n" + seeds.format_mean_std(rows, f"seeds {','.join(map(str, seed_list))}") + f"\ntable: {path}"
        )


if __name__ == "__main__":
    sys.exit(run_script(main))
