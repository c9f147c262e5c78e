"""The README and docs/ are current and their commands are real: the generated constants reference
matches the scripts, every command shown parses with its script's real options (fast, in `make test`),
and every command runs as written on the real DCASE samples with a tiny EAT checkpoint (slow: marked
end_to_end, run once by `make test-end-to-end` in CI)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asd.base import docs
from asd.base.cli import check_script_arguments
from asd.run.steps import split_step_overrides, step_script
from eat_checkpoint_support import fairseq_layout, write_eat_checkpoint, write_hub_snapshot

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = ["README.md", "docs/pipeline.md", "docs/benchmarks.md"]  # the pages whose commands must work
HUB_ID = "worstchan/EAT-base_epoch30_pretrain"

# commands that cannot run in a test, and where they run instead (anything else must run below)
NOT_RUN = {
    "make run": "the demo end to end: .ci/run runs it after the tests",
    "make test": "the test suite itself: .ci/run runs it",
    "hf download": "downloads from the Hugging Face hub: no network here (loading an id from the cache is tested)",
    "python3 -m pip download": "downloads wheels from PyPI: no network in tests",
    "bench/gpu_check.sh": "needs a GPU machine; its CPU dry run is the next command and tests/test_bench.py runs it",
    "bench/gpu_check.py --cpu_smoke": "tests/test_bench.py::test_gpu_check_cpu_smoke_end_to_end runs this dry run",
    "run_all.py --data_dir dev_data,eval_data": "four seeds of EAT-base on real data (GPU hours); "
    "tests/test_run_all.py runs the recipe over two seeds on a tiny tree",
    "evaluate.py --score_results_dir": "needs the evaluator's ground truth; tests/test_metrics.py runs it on the "
    "official evaluator's fixture",
}
# appended so the commands finish in seconds on 2 cores (fewer epochs; nothing else changes)
FAST = {
    # the sample folder has two training normals per machine type and no target-domain ones: ASDKit's
    # back ends need both (as ASDKit does; tests/test_asdkit_backends.py checks them), so they are left out here
    "run_all.py": [
        "train.epochs=1",
        "train.num_workers=0",
        "train_deepSVDD.svdd_epochs=2",
        "baseline.baseline_epochs=2",
        "evaluate.backends=ensemble",
    ],
    "evaluate.py": ["--backends", "ensemble"],
    "train.py": ["--epochs", "1", "--num_workers", "0"],
    "train_deepSVDD.py": ["--svdd_epochs", "2"],
}


def page_commands(page: str) -> list[str]:
    """Every command line of a page's ```bash blocks, comments and continuations resolved."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / page).read_text(), re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def all_commands() -> list[str]:
    return [command for page in PAGES for command in page_commands(page)]


def _reason_not_run(command: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if start in command), None)


# ----------------------------------------------------------------------------- fast checks


def test_constants_reference_is_current():
    assert (ROOT / docs.CONSTANTS_DOC).read_text() == docs.constants_document(ROOT), (
        "docs/constants.md is stale: run `make docs`"
    )


def test_readme_is_short_and_points_to_the_reference():
    assert len(README.encode()) < 15_000, f"README.md is {len(README.encode())} bytes; keep it under 15 KB"
    for heading in (
        "## Two commands",
        "## Real data",
        "## Recipes",
        "## DCASE 2026",
        "## Which file holds what",
    ):
        assert f"\n{heading}\n" in README, heading
    for link in re.findall(r"\]\((docs/[^)#]+)\)", README):
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"
    assert (
        "constant at the top of the file < recipe < value given to `run_all.py` < command-line flag" in README
    )
    makefile = (ROOT / "Makefile").read_text()
    assert "run_all.py" in makefile and "pytest" in makefile and "asd.base.docs" in makefile


def test_the_file_map_names_every_module():
    from helpers import project_modules

    missing = [m for m in project_modules() if f"`{m}`" not in README and f"`{Path(m).name}`" not in README]
    assert not missing, f"README's 'Which file holds what' does not name {missing}"


def _script_calls(command: str) -> list[tuple[str, list[str]]]:
    """(script, its arguments) of every project script a command line calls."""
    calls = []
    for part in re.split(r"\s*&&\s*", command):
        words = shlex.split(part)
        script = next((i for i, w in enumerate(words) if w.endswith(".py") and (ROOT / w).is_file()), None)
        if script is not None:
            calls.append((words[script], words[script + 1 :]))
    return calls


@pytest.mark.parametrize("command", [c for c in all_commands() if not _reason_not_run(c)])
def test_every_command_shown_parses_with_the_real_options(command):
    calls = _script_calls(command)
    assert calls, f"a command that calls no project script and is not named in NOT_RUN: {command}"
    for script, argv in calls:
        if script == "run_all.py":
            own, overrides = split_step_overrides(argv)
            check_script_arguments(ROOT / script, own)
            for name, words in overrides.items():
                check_script_arguments(ROOT / f"{step_script(name)}.py", words)
        else:
            check_script_arguments(ROOT / script, argv)


def test_every_command_not_run_here_is_shown_and_says_where_it_runs():
    commands = all_commands()
    for start, why in NOT_RUN.items():
        assert any(start in c for c in commands), f"NOT_RUN names {start!r}, which no page shows any more"
        assert re.search(r"\.ci/run|tests/|no network|GPU", why), f"{start!r}: say where it runs instead"
    assert sum(1 for c in commands if not _reason_not_run(c)) >= 10


# ----------------------------------------------------------------------------- every command, run


def _prepare(workspace: Path, samples_dir: Path) -> dict[str, str]:
    """dev_data/ (the 2023 samples), the checkpoint .pt and downloaded folder the README names, a hub
    cache holding the id it names, new_clips/; returns the environment for the commands."""
    shutil.copytree(samples_dir / "dcase2023_dev", workspace / "dev_data")
    # tiny weights, the released position table's length (768 time patches: whole 12 s clips fit);
    # the .pt as fairseq saves it, its config an omegaconf object
    from omegaconf import OmegaConf

    hf = write_eat_checkpoint(workspace / "hf_weights", max_length=768)
    cfg = OmegaConf.create(
        {"model": {"_name": "data2vec_multi", "embed_dim": 64, "depth": 2, "num_heads": 2}}
    )
    torch.save({"cfg": cfg, "model": fairseq_layout(hf)}, workspace / "EAT-base_epoch10_pretrain.pt")
    write_hub_snapshot(workspace / "hub", HUB_ID, max_length=768)
    shutil.copytree(workspace / "hf_weights", workspace / HUB_ID.split("/")[1])  # what `hf download` writes
    (workspace / "new_clips").mkdir()
    for i, clip in enumerate(sorted((workspace / "dev_data" / "fan" / "test").glob("*.wav"))):
        shutil.copy(clip, workspace / "new_clips" / f"recording {i}.wav")
    (workspace / ".venv").symlink_to(sys.prefix)  # the environment running the tests
    return {
        **os.environ,
        "HF_HUB_CACHE": str(workspace / "hub"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }


def _as_run_here(command: str, workspace: Path) -> str:
    """The command with the project's scripts given by path, the run folder the README shows
    replaced by this run's, and the FAST flags appended to each script call."""
    if "runs/dev_data-3f2a9c1e" in command:
        run = next((workspace / "runs").glob("dev_data-*"))
        command = command.replace("runs/dev_data-3f2a9c1e", shlex.quote(str(run)))
    parts = []
    for part in re.split(r"(\s*&&\s*)", command):
        words = part.split(" ")
        script = next((w for w in words if w.endswith(".py")), None)
        if script and (ROOT / script).is_file():
            words = [str(ROOT / w) if w == script else w for w in words]
            globbed = [i for i, w in enumerate(words) if "*" in w]
            extra = FAST.get(script, [])
            words = words[: globbed[0]] + extra + words[globbed[0] :] if globbed else words + extra
        parts.append(" ".join(words))
    return "".join(parts)


@pytest.mark.end_to_end
def test_every_command_shown_runs(samples_dir, tmp_path):
    commands = all_commands()
    env = _prepare(tmp_path, samples_dir)
    ran = []
    # generated data first, then run_all: score_clips needs its run folder
    for command in sorted(commands, key=lambda c: ("make_demo_data.py" not in c, "run_all.py" not in c)):
        if _reason_not_run(command):
            continue
        shell_command = _as_run_here(command, tmp_path)
        result = subprocess.run(
            ["bash", "-c", shell_command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, (
            f"command failed: {command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
        ran.append(command)
    assert len(ran) >= 10
    assert (tmp_path / "clip_scores.csv").read_text().startswith("file,score,decision\n")
    assert next((tmp_path / "runs").glob("dev_data-*/results/ensemble/report.html")).is_file()
