"""run_all.py's machinery: running steps, their run stamps, and the checks of the built steps
(asd/run/steps.py makes each step; run_all.build_steps orders them; asd/base/locks.py: the run folder's lock).

A step is a command with the files it reads and the files it must leave behind. It is skipped when a
stamp under <run folder>/.stamps/ says it succeeded with the same command, code and inputs and its
outputs are still the ones it wrote; every key is a content key of asd.base.freshness (an in-place edit
that keeps a file's size and mtime is seen). A stamp is only ever written after a success and never
deleted before a rerun: a rejected or failed attempt leaves a finished step's record as it was (its
outputs' keys tell whether the attempt touched them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from asd.base.cli import GIVEN_TO_ENV, Settings, check_script_arguments
from asd.base.files import atomic_write_text
from asd.base.freshness import file_key, files_key, settings_key
from asd.base.imports import local_sources
from asd.base.train_checks import check_settings

# every scorer's results folder name -> its name in the tables; evaluate.py's BACKENDS names the back ends
# (asd/backends/registry.py) it scores (the recipe asdkit-eat-lora: ASDKit's four and the ensemble)
SCORERS = {
    "deepsvdd": "Deep SVDD",
    "ensemble": "k-NN + Mahalanobis",
    "knn": "ASDKit k-NN",
    "smote_knn": "ASDKit k-NN + SMOTE",
    "kmeans": "ASDKit k-means",
    "rescale": "ASDKit k-NN rescaled",
    "baseline_ae": "DCASE baseline AE",
}


class Files(NamedTuple):
    """The files under ``folder`` that match a glob ``pattern`` (a step input that is only part of a folder)."""

    folder: Path
    pattern: str


class FileNames(NamedTuple):
    """Only the names (relative paths) of the files under ``folder`` that match ``pattern``: an input
    whose names a step reads but not its content."""

    folder: Path
    pattern: str


@dataclasses.dataclass
class Step:
    """One pipeline stage: a command, the files it reads and the files it must leave behind."""

    name: str
    command: list[str]
    inputs: list[Path | Files | FileNames] = dataclasses.field(default_factory=list)
    outputs: list[Path] = dataclasses.field(default_factory=list)
    always_run: bool = False  # checks with no outputs (datashape) run every time
    script: str = ""  # the script whose overrides (``script.constant=value``) it takes; "" = name

    def __post_init__(self) -> None:
        self.script = self.script or self.name


class StepFailed(RuntimeError):
    """A step exited non-zero; the message carries the step's own last lines of output."""


# ----------------------------------------------------------------------------- freshness of a step


def _visible(path: Path, folder: Path) -> bool:
    return path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)


def _content_key(path: Path | Files | FileNames) -> list:
    """A content key of a file, a folder (hidden files left out) or the files a pattern matches (or
    only their names)."""
    if isinstance(path, FileNames):
        names = sorted(p for p in path.folder.glob(path.pattern) if _visible(p, path.folder))
        return [str(path), [p.relative_to(path.folder).as_posix() for p in names]]
    if isinstance(path, Files):
        folder, children = path.folder, path.folder.glob(path.pattern)
    elif not path.exists():
        return [str(path), None]
    elif path.is_file():
        return [str(path), file_key(path)]
    else:
        folder, children = path, path.rglob("*")
    files = sorted(p for p in children if _visible(p, folder))
    return [str(path), files_key(files, root=folder)]


def step_signature(step: Step) -> str:
    """A content key of everything that should trigger a rerun: command, code and inputs (the
    outputs' keys are recorded beside it in the stamp)."""
    scripts = [Path(part) for part in step.command if part.endswith(".py") and Path(part).is_file()]
    sources = sorted({source for script in scripts for source in local_sources(script)})
    return settings_key(
        {
            "command": step.command[1:],
            "code": [[source.name, file_key(source)] for source in sources],
            "inputs": [_content_key(p) for p in step.inputs],
        }
    )


def _outputs_key(step: Step) -> list:
    return [_content_key(p) for p in step.outputs]


def unreadable(path: Path) -> str | None:
    """Why an output cannot be used (missing, empty, cut short), or None. Checked by suffix:
    .pt/.pth load with torch (weights only), .json parses, a folder's files each pass, any other
    file must be non-empty. Nothing is unpickled."""
    if not path.exists():
        return f"{path} is missing"
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if _visible(p, path))
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


def why_stale(step: Step, stamp_dir: Path) -> str | None:
    """Why ``step`` must run (no stamp, changed command/code/inputs, outputs missing, changed since
    or unreadable), or None when it is up to date."""
    if step.always_run:
        return "runs every time"
    try:
        recorded = json.loads((stamp_dir / f"{step.name}.json").read_text())
    except (OSError, ValueError):
        return "no record of a successful run"
    if recorded.get("signature") != step_signature(step):
        return "its command, code or inputs changed"
    problem = next(filter(None, map(unreadable, step.outputs)), None)
    if problem:
        return problem
    if recorded.get("outputs") != _outputs_key(step):
        return "its outputs changed since it ran"
    return None


# ----------------------------------------------------------------------------- running


def run_step(step: Step, tail_lines: int = 25) -> None:
    """Run one step, passing its output through unchanged (progress bars included); raise
    StepFailed with its last lines if it fails. The step's options are marked as given to run_all.py."""
    process = subprocess.Popen(
        step.command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", GIVEN_TO_ENV: "run_all.py"},
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
        shown = "\n".join(f"    {line}" for line in _failure_lines(tail))
        raise StepFailed(
            f"step '{step.name}' failed (exit {code}): {' '.join(step.command[1:])}\n"
            f"  its last output:\n{shown}"
        )


def _failure_lines(tail: Sequence[bytes]) -> list[str]:
    """What a failed step's output says about its failure: its one-line known error (``<script>:
    error: ...``, asd/base/errors.py) alone when it ended with one, else its last lines."""
    lines = [line.decode(errors="replace") for line in tail]
    return lines[-1:] if lines and re.match(r"\S+\.py: error: ", lines[-1]) else lines


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
        print(f"\n{'=' * 78}\n{header} ({reason}): {' '.join(step.command[1:])}\n{'=' * 78}", flush=True)
        started = time.time()
        run_step(step)
        problems = [problem for problem in map(unreadable, step.outputs) if problem]
        if problems:
            raise StepFailed(
                f"step '{step.name}' exited 0 but did not write its outputs: {'; '.join(problems)}"
            )
        record = {
            "signature": step_signature(step),
            "outputs": _outputs_key(step),
            "seconds": round(time.time() - started, 1),
        }
        atomic_write_text(json.dumps(record), stamp_dir / f"{step.name}.json")
        ran.append(step.name)
    return ran


def check_steps(steps: list[Step], overrides: dict[str, list[str]]) -> dict[str, Settings]:
    """Every step's effective settings (its script's constants, recipe and options), read from the
    scripts' sources before anything runs: argparse's error and exit when an option is unknown or
    out of range, or when an override names a script this run does not use."""
    used = {s.script for s in steps} | {s.name.split("[")[0] for s in steps}  # baseline: evaluate.py's step
    unused = [name for name, words in overrides.items() if words and name not in used]
    if unused:
        raise SystemExit(
            f"run_all.py: error: overrides for {', '.join(unused)}, which this run does not use "
            f"(make_demo_data runs only for the demo)"
        )
    settings = {step.name: check_script_arguments(step.command[1], step.command[2:]) for step in steps}
    for step in steps:
        if step.script == "train":
            try:
                check_settings(settings[step.name])
            except ValueError as error:
                raise SystemExit(f"run_all.py: error: {step.name}: {error}") from None
    return settings


def add_checkpoint_input(steps: list[Step], settings: dict[str, Settings]) -> None:
    """The EAT checkpoint the train step will load (its effective EAT_CHECKPOINT, wherever it was
    set) becomes one of its inputs, so a changed checkpoint retrains."""
    from asd.model.pretrained import resolve_checkpoint

    for step in steps:
        checkpoint = getattr(settings.get(step.name), "eat_checkpoint", None)
        if step.script == "train" and checkpoint:
            try:
                step.inputs.append(resolve_checkpoint(checkpoint).path)
            except (FileNotFoundError, ValueError) as error:
                raise SystemExit(f"run_all.py: error: {step.name}: {error}") from None


def check_ground_truth_folders(settings: dict[str, Settings]) -> None:
    """Every GROUND_TRUTH folder a step will read, read and checked now, before the first step (not
    after training and extraction ran): SystemExit naming the step and the file."""
    from asd.data.ground_truth import read_ground_truth

    for name, cfg in settings.items():
        if getattr(cfg, "ground_truth", None):
            try:
                read_ground_truth(cfg.ground_truth)
            except (OSError, ValueError) as error:
                raise SystemExit(f"run_all.py: error: {name}: GROUND_TRUTH: {error}") from None


def add_backend_outputs(steps: list[Step], settings: dict[str, Settings]) -> None:
    """The evaluate step's outputs: <its back end's folder>/summary.json for each of its effective BACKENDS
    (wherever they were set), in that order."""
    from asd.report.comparison import backend_folders  # here: it imports numpy, which --help skips

    for step in steps:
        cfg = settings.get(step.name)
        if step.script == "evaluate" and cfg is not None:
            folders = backend_folders(cfg.backends, cfg.results_dir, cfg.backends_dir)
            step.outputs = [folder.resolve() / "summary.json" for folder in folders.values()]


def scorer_summaries(steps: list[Step]) -> dict[Path, dict[str, Path]]:
    """Per data folder's results folder: {scorer's table name: its summary.json}: the back ends of the
    evaluate step in their order (the first is the headline), Deep SVDD, then the DCASE baseline step's."""
    found: dict[Path, dict[str, Path]] = {}
    deepsvdd: dict[str, Path] = {}
    for step in steps:
        if step.script == "evaluate_deepSVDD":
            deepsvdd[step.name.replace("evaluate_deepSVDD", "")] = step.outputs[0]
    for step in steps:
        if step.script != "evaluate":
            continue
        svdd = deepsvdd[step.name.replace("evaluate", "").replace("baseline", "")]
        table = found.setdefault(svdd.parents[1], {})
        table.update({SCORERS.get(p.parent.name, p.parent.name): p for p in step.outputs})
        table.setdefault(SCORERS["deepsvdd"], svdd)
    return found
