"""run_all.py's steps, one maker per script: each step's command, the files it reads and the files it
must leave behind, under a run folder (run_all.build_steps puts them in order).

A step gets only the values the user set (on run_all's command line or its constants, the demo's
values), never run_all's "not set" defaults, so a constant at the top of a step's script holds. With
several data folders the encoder trains on all of them and each folder with test clips is embedded and
scored on its own under ``run_dir/<folder name>/`` (a folder without test/ only trains).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asd.base.imports import PROJECT_DIR
from asd.base.settings_source import source_constants
from asd.run.pipeline import FileNames, Files, Step

STEP_NAMES = (
    "make_demo_data",
    "datashape",
    "train",
    "extract_embeddings",
    "train_deepSVDD",
    "evaluate_deepSVDD",
    "evaluate",
    "baseline",
)  # run_all's steps (each runs the script of its name, but see STEP_SCRIPTS); run_all.build_steps orders them
STEP_SCRIPTS = {
    "baseline": "evaluate"
}  # the DCASE baseline autoencoder is evaluate.py's back end baseline_ae


def step_script(name: str) -> str:
    """The script a step (or a ``step.constant=value`` override) runs."""
    return STEP_SCRIPTS.get(name, name)


def split_step_overrides(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Separate ``script.constant=value`` words (passed on to that step's script) from run_all's own."""
    own, overrides = [], {name: [] for name in STEP_NAMES}
    for word in argv:
        head, dot, rest = word.partition(".")
        head = head.removesuffix(".py")
        if dot and "=" in rest and not word.startswith("-"):
            if rest.startswith("py."):
                rest = rest[3:]
            if head not in overrides:
                raise SystemExit(
                    f"run_all.py: error: unknown script {head!r} in {word!r}; "
                    f"scripts: {', '.join(STEP_NAMES)}"
                )
            constant, _, value = rest.partition("=")
            overrides[head] += [f"--{constant.lower()}", value]
        else:
            own.append(word)
    return own, overrides


def seed_overrides(overrides: dict[str, list[str]], seed: int, scripts_dir: Path = PROJECT_DIR) -> dict:
    """The overrides with ``--seed SEED`` added for every step script that has a SEED constant."""
    seeded = {name: list(words) for name, words in overrides.items()}
    for name in STEP_NAMES:
        if name == "baseline":  # its network's seed
            seeded[name] = ["--baseline_seed", str(seed)] + seeded[name]
        elif "SEED" in source_constants(scripts_dir / f"{step_script(name)}.py") and name != "make_demo_data":
            seeded[name] = ["--seed", str(seed)] + seeded[name]
    return seeded


def run_folder(runs_dir: str | os.PathLike, data_dirs: Path | Sequence[Path]) -> Path:
    """RUNS_DIR/<folder names>-<8 hex digits of their resolved paths>: readable, two data folders with
    the same name never share outputs, and a relative and an absolute spelling of one folder do."""
    folders = [data_dirs] if isinstance(data_dirs, (str, os.PathLike)) else list(data_dirs)
    resolved = [Path(folder).expanduser().resolve() for folder in folders]
    digest = hashlib.sha1("\n".join(map(str, resolved)).encode()).hexdigest()[:8]
    return Path(runs_dir) / f"{'+'.join(folder.name for folder in resolved)}-{digest}"


def has_test_split(data_dir: Path) -> bool:
    """Whether a data folder has test clips to score (<machine>/test/); a folder without is an
    additional-training set: it only trains the encoder."""
    return any(path.is_dir() for path in Path(data_dir).glob("*/test"))


def folder_dir(run_dir: Path, data_dir: Path, data_dirs: Sequence[Path]) -> Path:
    """Where a data folder's embeddings and results go: the run folder itself for a single folder."""
    return run_dir if len(data_dirs) == 1 else run_dir / _label(data_dir, data_dirs)


def _label(data_dir: Path, data_dirs: Sequence[Path]) -> str:
    """A data folder's name among the run's folders (numbered when two share a name)."""
    names = [d.name for d in data_dirs]
    return (
        data_dir.name
        if names.count(data_dir.name) == 1
        else f"{data_dirs.index(data_dir) + 1}-{data_dir.name}"
    )


def _clips(data_dir: Path, split: str) -> Files:
    return Files(data_dir, f"*/{split}/*.[wW][aA][vV]")  # as dataset.wav_files: any case of .wav


def _flag(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _options(pairs: dict[str, Any]) -> list[str]:
    return [word for name, value in pairs.items() for word in (f"--{name}", _flag(value))]


@dataclasses.dataclass
class StepMaker:
    """Makes each script's step of one run: ``cfg`` is run_all's parsed settings, ``overrides`` the
    ``script.constant=value`` words per script, ``scripts_dir`` where the scripts are."""

    cfg: Any
    data_dirs: list[Path]
    run_dir: Path
    demo: bool
    overrides: dict[str, list[str]]
    scripts_dir: Path = PROJECT_DIR

    def __post_init__(self) -> None:
        self.data_dirs = [Path(d) for d in self.data_dirs]
        self.model = self.run_dir / "best_encoder_model.pth"
        self.scored = [d for d in self.data_dirs if self.demo or has_test_split(d)]

    # ------------------------------------------------------------------------- shared pieces

    def _command(self, name: str, *words: list[str]) -> list[str]:
        """The script's command: its words, then the user's ``script.constant=value`` overrides."""
        script = self.scripts_dir / f"{step_script(name)}.py"
        return [sys.executable, str(script), *sum(words, []), *self.overrides[name]]

    def _user_set(self, *names: str) -> list[str]:
        """``--name value`` for each of run_all's settings the user set: given on run_all's command line
        (even as "none"), or edited at its top away from its "not set" value (None or "")."""
        sources = getattr(self.cfg, "sources", {})
        words = []
        for name in names:
            value = getattr(self.cfg, name)
            if value not in (None, "") or sources.get(name, "").startswith(("command line", "run_all.py")):
                words += [f"--{name}", "none" if value is None else _flag(value)]
        return words

    def _named(self, step: str, data_dir: Path) -> str:
        return step if len(self.data_dirs) == 1 else f"{step}[{_label(data_dir, self.data_dirs)}]"

    def _folder(self, data_dir: Path) -> tuple[Path, list[Path]]:
        """A scored folder's output folder and its embedding files."""
        from asd.embed.embedding_files import (
            EMBEDDING_FILE_NAMES,  # here: it imports torch, which --help skips
        )

        out = folder_dir(self.run_dir, data_dir, self.data_dirs)
        return out, [out / name for name in EMBEDDING_FILE_NAMES]

    def _evaluation_lists(self) -> list[Path]:
        """The evaluation lists among GROUND_TRUTH's parts: train.py's EVAL_LIST (classes of anonymised clips)."""
        from asd.data.ground_truth import ground_truth_parts  # here: it imports torch, which --help skips

        truth = self.cfg.ground_truth
        return [path.resolve() for path in ground_truth_parts(truth)[1]] if truth else []

    # ------------------------------------------------------------------------- one maker per script

    def make_demo_data(self) -> Step:
        folder = self.data_dirs[0]
        words = ["--out_dir", str(folder), "--clip_seconds", str(self.cfg.demo_clip_seconds)]
        return Step(
            "make_demo_data", self._command("make_demo_data", words), outputs=[folder / "manifest.json"]
        )

    def datashape(self, data_dir: Path) -> Step:
        splits = [] if data_dir in self.scored else ["--splits", "train"]
        return Step(
            self._named("datashape", data_dir),
            # a mono clip is a problem only when channels are asked for
            self._command("datashape", ["--data_dir", str(data_dir)], splits, self._user_set("channels")),
            always_run=True,
            script="datashape",
        )

    def train(self) -> Step:
        cfg, run_dir = self.cfg, self.run_dir
        demo = (
            {
                "model_size": "tiny",
                "epochs": cfg.demo_epochs,
                "learning_rate": cfg.demo_learning_rate,
                "warmup_steps": cfg.demo_warmup_steps,
                "batch_size": cfg.demo_batch_size,
                "num_workers": cfg.demo_num_workers,
            }
            if self.demo
            else {}
        )
        eval_lists = self._evaluation_lists()
        words = ["--data_dir", ",".join(map(str, self.data_dirs))]
        words += ["--eval_list", ",".join(map(str, eval_lists))] if eval_lists else []
        words += ["--output", str(self.model), "--last_checkpoint", str(run_dir / "last_encoder_model.pth")]
        words += _options(demo) + self._user_set("device", "eat_checkpoint", "model_size", "recipe")
        words += self._user_set("channels", "residual_weight", "channel_combine")
        # test clip names too: train.py's default CLASSES_FROM train_test builds classes from labelled test names
        inputs = (
            [_clips(d, "train") for d in self.data_dirs]
            + [FileNames(d, _clips(d, "test").pattern) for d in self.scored]
            + [Files(d, "*/attributes*.csv") for d in self.data_dirs]
            + [Files(path.parent, path.name) for path in eval_lists]
        )
        return Step("train", self._command("train", words), inputs, [self.model])

    def extract_embeddings(self, data_dir: Path) -> Step:
        out, embeddings = self._folder(data_dir)
        data = [_clips(data_dir, "train"), _clips(data_dir, "test"), Files(data_dir, "*/attributes*.csv")]
        words = ["--data_dir", str(data_dir), *self._user_set("device"), "--model_path", str(self.model)]
        words += ["--embed_dir", str(out), *self._user_set("channels", "residual_weight", "channel_combine")]
        return Step(
            self._named("extract_embeddings", data_dir),
            self._command("extract_embeddings", words),
            data + [self.model],
            embeddings,
            script="extract_embeddings",
        )

    def train_deepSVDD(self, data_dir: Path) -> Step:  # named as its script
        out, embeddings = self._folder(data_dir)
        svdd_dir = out / "svdd_models_per_type"
        words = ["--embed_dir", str(out), "--svdd_dir", str(svdd_dir)]
        words += ["--use_stats", _flag(self.cfg.demo_svdd_use_stats)] if self.demo else []
        return Step(
            self._named("train_deepSVDD", data_dir),
            self._command("train_deepSVDD", words),
            embeddings[:2],
            [svdd_dir],
            script="train_deepSVDD",
        )

    def evaluate_deepSVDD(self, data_dir: Path) -> Step:  # named as its script
        out, embeddings = self._folder(data_dir)
        svdd_dir, results = out / "svdd_models_per_type", out / "results" / "deepsvdd"
        words = ["--embed_dir", str(out), "--svdd_dir", str(svdd_dir), "--results_dir", str(results)]
        return Step(
            self._named("evaluate_deepSVDD", data_dir),
            self._command("evaluate_deepSVDD", words, self._user_set("ground_truth")),
            embeddings + [svdd_dir],
            [results / "summary.json"],
            script="evaluate_deepSVDD",
        )

    def evaluate(self, data_dir: Path) -> Step:
        out, embeddings = self._folder(data_dir)
        results = out / "results" / "ensemble"
        words = ["--embed_dir", str(out), "--results_dir", str(results)]
        return Step(
            self._named("evaluate", data_dir),
            self._command("evaluate", words, self._user_set("recipe", "ground_truth")),
            embeddings,
            [results / "summary.json"],
            script="evaluate",
        )

    def baseline(self, data_dir: Path) -> Step:
        """The DCASE baseline autoencoder (evaluate.py's back end baseline_ae, on the clips' audio) into
        results/baseline/baseline_ae/: the scorer every run is compared with."""
        out, embeddings = self._folder(data_dir)
        words = ["--embed_dir", str(out), "--backends", "baseline_ae"]
        words += [
            "--results_dir",
            str(out / "results" / "ensemble"),
            "--backends_dir",
            str(out / "results" / "baseline"),
        ]
        words += ["--baseline_epochs", str(self.cfg.demo_baseline_epochs)] if self.demo else []
        data = [_clips(data_dir, "train"), _clips(data_dir, "test")]
        return Step(
            self._named("baseline", data_dir),
            self._command("baseline", words, self._user_set("device", "ground_truth")),
            embeddings + data,
            [out / "results" / "baseline" / "baseline_ae" / "summary.json"],
            script="evaluate",
        )
