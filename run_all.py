"""Run the whole pipeline in order: check data, train, embed, Deep SVDD, ensemble, one summary table.

    python run_all.py                                   # dev_data/ if present, else the demo
    python run_all.py --data_dir /data/dcase2023/dev_data --eat_checkpoint ~/EAT-base_epoch30_pretrain
    python run_all.py train.epochs=20 evaluate.k=3 evaluate.w=0.7    # pass any script's constant

Every output of a data folder goes to RUNS_DIR/<folder name>-<hash of its full path>/. Each step is
a subprocess of this Python. A step is skipped when its outputs exist and can be read and its
command, its code and its inputs are unchanged since it last succeeded (a stamp under
<run folder>/.stamps/); otherwise it runs. Every option and override is checked before anything
runs; the first failing step stops the run with its own error.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import NamedTuple

from asd.cli import exit_if_help

exit_if_help(globals())  # answers --help from this file's source, before the heavy imports below

from asd.checkpoints import resolve_checkpoint
from asd.cli import check_script_arguments, parse_config
from asd.files import atomic_write_text, remove_stale_temp_files
from asd.comparison import comparison_rows, format_comparison, write_comparison

DATA_DIR = None  # DCASE data (<machine>/{train,test}/*.wav); None = dev_data/ if present, else the demo
DEMO_DIR = "demo_data"  # where the synthetic demo data set is generated
RUNS_DIR = "runs"  # a data folder's outputs go to RUNS_DIR/<folder name>-<hash of its full path>/
EAT_CHECKPOINT = None  # EAT checkpoint: local HF folder, fairseq .pt or Hugging Face id; None = random init
MODEL_SIZE = "base"  # encoder size when EAT_CHECKPOINT is None on real data (demo: tiny)
RECIPE = ""  # named settings for train.py and evaluate.py (recipes.py): asdkit-eat-lora | arcface-v1; "" = their defaults
DEVICE = "auto"  # auto | cpu | cuda
FORCE = False  # rerun every step even if its outputs are up to date
DEMO_CLIP_SECONDS = 10.0  # demo clip length (DCASE clips are 10 s)
DEMO_EPOCHS = 8  # demo training epochs (tiny encoder, about 10 s each on 2 CPU cores)
DEMO_LEARNING_RATE = 1e-3  # demo LoRA learning rate: a random tiny encoder needs more than the recipe's 1e-4
DEMO_WARMUP_STEPS = 10  # demo warm-up steps (the recipe's 5,000 would outlast the demo's ~50 steps)
DEMO_SVDD_USE_STATS = (
    True  # demo Deep SVDD also sees the signal statistics (random-encoder embeddings are weak)
)
DEMO_BATCH_SIZE = 8  # demo training clips per step
DEMO_NUM_WORKERS = 0  # demo DataLoader workers (0: the tiny data set loads fastest in-process)
# allowed values of the constants above, checked by asd.cli.parse_config
_LIMITS = {
    "MODEL_SIZE": ("tiny", "base", "large"),
    "RECIPE": ("", "asdkit-eat-lora", "arcface-v1"),
    "DEMO_CLIP_SECONDS": (">0", None),
    "DEMO_EPOCHS": (1, None),
    "DEMO_LEARNING_RATE": (">0", None),
    "DEMO_WARMUP_STEPS": (0, None),
    "DEMO_BATCH_SIZE": (1, None),
    "DEMO_NUM_WORKERS": (0, None),
}

_DEFAULT_DATA_DIR = "dev_data"  # what DATA_DIR None uses when it exists

SCRIPT_DIR = Path(__file__).resolve().parent


class Files(NamedTuple):
    """The files under ``folder`` that match a glob ``pattern`` (a step input that is only part of a folder)."""

    folder: Path
    pattern: str


@dataclasses.dataclass
class Step:
    """One pipeline stage: a command, the files it reads and the files it must leave behind."""

    name: str
    command: list[str]
    inputs: list[Path | Files] = dataclasses.field(default_factory=list)
    outputs: list[Path] = dataclasses.field(default_factory=list)
    always_run: bool = False  # checks with no outputs (datashape) run every time


class StepFailed(RuntimeError):
    """A step exited non-zero; the message carries the step's own last lines of output."""


def _file_signature(path: Path | Files) -> list:
    """What identifies a file's content cheaply: size and mtime for files, recursively for folders
    (hidden files left out), for the matching files of a Files pattern."""
    if isinstance(path, Files):
        folder, children = path.folder, path.folder.glob(path.pattern)
    elif not path.exists():
        return [str(path), None]
    elif path.is_file():
        stat = path.stat()
        return [str(path), stat.st_size, stat.st_mtime_ns]
    else:
        folder, children = path, path.rglob("*")
    entries = []
    for child in sorted(p for p in children if p.is_file() and not p.name.startswith(".")):
        stat = child.stat()
        entries.append([str(child.relative_to(folder)), stat.st_size, stat.st_mtime_ns])
    return [str(path), hashlib.sha1(json.dumps(entries).encode()).hexdigest()]


def unreadable(path: Path) -> str | None:
    """Why an output cannot be used (missing, empty, cut short), or None. Checked by suffix:
    .pt/.pth load with torch (weights only), .json parses, a folder's files each pass, any other
    file must be non-empty. Nothing is unpickled."""
    if not path.exists():
        return f"{path} is missing"
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return next(filter(None, map(unreadable, files)), None) if files else f"{path} is empty"
    if path.stat().st_size == 0:
        return f"{path} is empty"
    try:
        if path.suffix in (".pt", ".pth"):
            import torch

            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".json":
            json.loads(path.read_text())
    except Exception as error:
        return f"{path} cannot be read ({type(error).__name__})"
    return None


def local_sources(script: Path) -> list[Path]:
    """The script and every module of this project it imports, directly or not (so editing
    model.py reruns training, not only editing train.py)."""
    found: list[Path] = []
    pending = [script.resolve()]
    while pending:
        path = pending.pop()
        if path in found:
            continue
        found.append(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module
                else []
            )
            if isinstance(node, ast.ImportFrom) and node.module:
                names += [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                module = SCRIPT_DIR.joinpath(*name.split(".")).with_suffix(".py")
                if module.is_file():
                    pending.append(module.resolve())
    return sorted(found)


def step_signature(step: Step) -> str:
    """A hash of everything that should trigger a rerun: command, code and inputs (outputs are
    recorded beside it in the stamp)."""
    scripts = [Path(part) for part in step.command if part.endswith(".py") and Path(part).is_file()]
    sources = sorted({source for script in scripts for source in local_sources(script)})
    script_hashes = [[source.name, hashlib.sha1(source.read_bytes()).hexdigest()] for source in sources]
    payload = {
        "command": step.command[1:],
        "scripts": script_hashes,
        "inputs": [_file_signature(p) for p in step.inputs],
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _outputs_signature(step: Step) -> list:
    return [_file_signature(p) for p in step.outputs]


def why_stale(step: Step, stamp_dir: Path) -> str | None:
    """Why ``step`` must run (no stamp, changed command/code/inputs, outputs missing, changed since
    or unreadable), or None when it is up to date."""
    stamp = stamp_dir / f"{step.name}.json"
    if step.always_run:
        return "runs every time"
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return "no record of a successful run"
    if recorded.get("signature") != step_signature(step):
        return "its command, code or inputs changed"
    problem = next(filter(None, map(unreadable, step.outputs)), None)
    if problem:
        return problem
    if recorded.get("outputs") != _outputs_signature(step):
        return "its outputs changed since it ran"
    return None


def run_step(step: Step, tail_lines: int = 25) -> None:
    """Run one step, passing its output through unchanged (progress bars included); raise
    StepFailed with its last lines if it fails."""
    process = subprocess.Popen(
        step.command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    tail: deque[bytes] = deque(maxlen=tail_lines)
    pending = b""
    while chunk := process.stdout.read1(65536):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        pending += chunk
        *complete, pending = pending.replace(b"\r", b"\n").split(b"\n")
        tail.extend(line for line in complete if line.strip())
    if pending.strip():
        tail.append(pending)
    code = process.wait()
    if code != 0:
        shown = "\n".join(f"    {line.decode(errors='replace')}" for line in tail)
        raise StepFailed(
            f"step '{step.name}' failed (exit {code}): {' '.join(step.command[1:])}\n"
            f"  its last output:\n{shown}"
        )


def run_pipeline(steps: list[Step], stamp_dir: Path, force: bool = False) -> list[str]:
    """Run steps in order, skipping up-to-date ones. Returns the names of the steps that ran."""
    stamp_dir.mkdir(parents=True, exist_ok=True)
    ran = []
    for index, step in enumerate(steps, 1):
        header = f"[{index}/{len(steps)}] {step.name}"
        reason = "--force" if force else why_stale(step, stamp_dir)
        if reason is None:
            print(f"{header}: up to date, skipped", flush=True)
            continue
        # A step that reruns invalidates what it produced before, even if it now fails.
        (stamp_dir / f"{step.name}.json").unlink(missing_ok=True)
        print(f"\n{'=' * 78}\n{header} ({reason}): {' '.join(step.command[1:])}\n{'=' * 78}", flush=True)
        started = time.time()
        run_step(step)
        problems = [problem for problem in map(unreadable, step.outputs) if problem]
        if problems:
            raise StepFailed(
                f"step '{step.name}' exited 0 but did not write its outputs: {'; '.join(problems)}"
            )
        atomic_write_text(
            json.dumps(
                {
                    "signature": step_signature(step),
                    "outputs": _outputs_signature(step),
                    "seconds": round(time.time() - started, 1),
                }
            ),
            stamp_dir / f"{step.name}.json",
        )
        ran.append(step.name)
    return ran


# -----------------------------------------------------------------------------
# the pipeline

_STEP_NAMES = (
    "make_demo_data",
    "datashape",
    "train",
    "extract_embeddings",
    "train_deepSVDD",
    "evaluate_deepSVDD",
    "evaluate",
)  # each step runs the script of its name
SCORERS = {"deepsvdd": "Deep SVDD", "ensemble": "k-NN + Mahalanobis"}


def split_step_overrides(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Separate ``script.constant=value`` words (passed on to that step's script) from run_all's own."""
    own, overrides = [], {name: [] for name in _STEP_NAMES}
    for word in argv:
        head, dot, rest = word.partition(".")
        head = head.removesuffix(".py")
        if dot and "=" in rest and not word.startswith("-"):
            if rest.startswith("py."):
                rest = rest[3:]
            if head not in overrides:
                raise SystemExit(
                    f"run_all.py: error: unknown script {head!r} in {word!r}; "
                    f"scripts: {', '.join(_STEP_NAMES)}"
                )
            constant, _, value = rest.partition("=")
            overrides[head] += [f"--{constant.lower()}", value]
        else:
            own.append(word)
    return own, overrides


def _script(name: str) -> list[str]:
    return [sys.executable, str(SCRIPT_DIR / f"{name}.py")]


def run_folder(runs_dir: str | os.PathLike, data_dir: Path) -> Path:
    """RUNS_DIR/<folder name>-<8 hex digits of its resolved path>: readable, and two data folders
    with the same name never share outputs."""
    resolved = data_dir.expanduser().resolve()
    return Path(runs_dir) / f"{resolved.name}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"


def _clips(data_dir: Path, split: str) -> Files:
    return Files(data_dir, f"*/{split}/*.[wW][aA][vV]")  # as dataset.wav_files: any case of .wav


def build_steps(
    cfg, data_dir: Path, run_dir: Path, demo: bool, overrides: dict[str, list[str]]
) -> list[Step]:
    """The pipeline's steps with every output under ``run_dir``."""
    model = run_dir / "best_encoder_model.pth"
    embeddings = [
        run_dir / name
        for name in ("normal_embeddings.pt", "normal_stats.pt", "test_embeddings.pt", "test_stats.pt")
    ]
    svdd_dir = run_dir / "svdd_models_per_type"
    results = run_dir / "results"
    checkpoint = str(cfg.eat_checkpoint) if cfg.eat_checkpoint else "none"
    recipe = ["--recipe", cfg.recipe] if cfg.recipe else []
    embed = ["--embed_dir", str(run_dir)]
    train_args = [
        "--data_dir",
        str(data_dir),
        "--device",
        cfg.device,
        "--eat_checkpoint",
        checkpoint,
        "--model_size",
        "tiny" if demo else cfg.model_size,
        "--output",
        str(model),
        "--last_checkpoint",
        str(run_dir / "last_encoder_model.pth"),
    ] + recipe
    if demo:
        train_args += [
            "--epochs",
            str(cfg.demo_epochs),
            "--learning_rate",
            str(cfg.demo_learning_rate),
            "--warmup_steps",
            str(cfg.demo_warmup_steps),
            "--batch_size",
            str(cfg.demo_batch_size),
            "--num_workers",
            str(cfg.demo_num_workers),
        ]
    svdd_args = ["--use_stats", str(cfg.demo_svdd_use_stats)] if demo else []
    checkpoint_inputs = [resolve_checkpoint(cfg.eat_checkpoint).path] if cfg.eat_checkpoint else []
    # what the scripts read of the data folder: clips and attributes CSVs (not notes.txt and the like)
    attributes = Files(data_dir, "*/attributes*.csv")
    train_data, all_data = (
        [_clips(data_dir, "train"), attributes],
        [_clips(data_dir, "train"), _clips(data_dir, "test"), attributes],
    )
    steps = []
    if demo:
        steps.append(
            Step(
                "make_demo_data",
                _script("make_demo_data")
                + ["--out_dir", str(data_dir), "--clip_seconds", str(cfg.demo_clip_seconds)]
                + overrides["make_demo_data"],
                outputs=[data_dir / "manifest.json"],
            )
        )
    steps += [
        Step(
            "datashape",
            _script("datashape") + ["--data_dir", str(data_dir)] + overrides["datashape"],
            always_run=True,
        ),
        Step(
            "train",
            _script("train") + train_args + overrides["train"],
            inputs=train_data + checkpoint_inputs,
            outputs=[model],
        ),
        Step(
            "extract_embeddings",
            _script("extract_embeddings")
            + ["--data_dir", str(data_dir), "--device", cfg.device, "--model_path", str(model)]
            + embed
            + overrides["extract_embeddings"],
            inputs=all_data + [model],
            outputs=embeddings,
        ),
        Step(
            "train_deepSVDD",
            _script("train_deepSVDD")
            + embed
            + ["--svdd_dir", str(svdd_dir)]
            + svdd_args
            + overrides["train_deepSVDD"],
            inputs=embeddings[:2],
            outputs=[svdd_dir],
        ),
        Step(
            "evaluate_deepSVDD",
            _script("evaluate_deepSVDD")
            + embed
            + ["--svdd_dir", str(svdd_dir), "--results_dir", str(results / "deepsvdd")]
            + overrides["evaluate_deepSVDD"],
            inputs=embeddings + [svdd_dir],
            outputs=[results / "deepsvdd" / "summary.json"],
        ),
        Step(
            "evaluate",
            _script("evaluate")
            + embed
            + ["--results_dir", str(results / "ensemble")]
            + recipe
            + overrides["evaluate"],
            inputs=embeddings,
            outputs=[results / "ensemble" / "summary.json"],
        ),
    ]
    return steps


def check_steps(steps: list[Step], overrides: dict[str, list[str]]) -> None:
    """Exit with argparse's error before anything runs when a step's options are unknown or out
    of range, or an override names a script this run does not use."""
    unused = [name for name, words in overrides.items() if words and name not in {s.name for s in steps}]
    if unused:
        raise SystemExit(
            f"run_all.py: error: overrides for {', '.join(unused)}, which this run does not use "
            f"(make_demo_data runs only for the demo)"
        )
    for step in steps:
        check_script_arguments(step.command[1], step.command[2:])


def choose_data_dir(cfg) -> tuple[Path, bool]:
    """(data folder, whether it is the demo): DATA_DIR when given (it must exist), else dev_data/
    when present, else DEMO_DIR for the synthetic demo."""
    if cfg.data_dir is not None:
        data_dir = Path(cfg.data_dir).expanduser()
        if not data_dir.is_dir():
            raise SystemExit(f"run_all.py: error: --data_dir {cfg.data_dir}: no such folder")
        return data_dir, False
    if Path(_DEFAULT_DATA_DIR).is_dir():
        return Path(_DEFAULT_DATA_DIR), False
    print(
        f"No {_DEFAULT_DATA_DIR}/ found: running the demo on synthetic data in {cfg.demo_dir}/ with the "
        f"tiny encoder (pass --data_dir to use real DCASE data)."
    )
    return Path(cfg.demo_dir), True


def main(argv: list[str] | None = None) -> int:
    own_args, overrides = split_step_overrides(list(sys.argv[1:] if argv is None else argv))
    cfg = parse_config(globals(), own_args, description=__doc__)
    data_dir, demo = choose_data_dir(cfg)
    run_dir = run_folder(cfg.runs_dir, data_dir)
    steps = build_steps(cfg, data_dir, run_dir, demo, overrides)
    check_steps(steps, overrides)
    # nothing of an earlier run may pass for this one's: leftovers of killed writes, the old table
    for path in remove_stale_temp_files(run_dir):
        print(f"removed {path} (left by an interrupted write)")
    comparison = run_dir / "results" / "comparison.csv"
    comparison.unlink(missing_ok=True)
    started = time.time()
    try:
        ran = run_pipeline(steps, run_dir / ".stamps", force=cfg.force)
    except StepFailed as error:
        print(f"\nrun_all: {error}", file=sys.stderr)
        return 1
    summaries = {
        label: json.loads((run_dir / "results" / name / "summary.json").read_text())
        for name, label in SCORERS.items()
    }
    rows = comparison_rows(summaries)
    write_comparison(rows, comparison)
    print("\n" + format_comparison(rows, f"both scorers on {data_dir}"))
    print(
        f"\nran {len(ran)} of {len(steps)} steps in {time.time() - started:.0f} s. Results (official CSVs, "
        f"summaries, ROC and histogram plots): {run_dir / 'results'}/{{deepsvdd,ensemble}}/; "
        f"table: {comparison}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
