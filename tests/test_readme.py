"""The README is current and its commands run: the generated constants tables match the scripts, and
every command of its ```bash blocks runs as written, on the real DCASE samples standing in for
dev_data/ and a tiny EAT checkpoint (folder and Hugging Face cache) standing in for the released one.
"""

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

from asd import docs
from eat_checkpoint_support import fairseq_layout, write_eat_checkpoint, write_hub_snapshot

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
HUB_ID = "worstchan/EAT-base_epoch30_pretrain"

# commands that cannot run in a test, and why (anything else in the README must run below)
NOT_RUN = {
    "make run": "the demo end to end: .ci/run runs it after the tests",
    "make test": "the test suite itself: .ci/run runs it",
    "hf download": "downloads from the Hugging Face hub: no network here (loading an id from the cache is tested)",
    "python3 -m pip download": "downloads wheels from PyPI: no network in tests",
    "bench/gpu_check.sh": "needs a GPU machine; its CPU dry run is the next command and tests/test_bench.py runs it",
    "bench/gpu_check.py --cpu_smoke": "tests/test_bench.py runs this exact dry run",
}
# appended so the commands finish in seconds on 2 cores (fewer epochs; nothing else changes)
FAST = {
    "run_all.py": ["train.epochs=1", "train.num_workers=0", "train_deepSVDD.svdd_epochs=2"],
    "train.py": ["--epochs", "1", "--num_workers", "0"],
    "train_deepSVDD.py": ["--svdd_epochs", "2"],
}


def readme_commands() -> list[str]:
    """Every command line of the README's ```bash blocks, comments and continuations resolved."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_constants_tables_are_current():
    generated = docs.constants_markdown(ROOT)
    block = README.split(docs.README_BEGIN, 1)[1].split(docs.README_END, 1)[0]
    assert block.strip() == generated.strip(), "README's constants tables are stale: run `make readme`"


def test_readme_names_the_two_setup_commands():
    assert "make run" in README and "make test" in README
    makefile = (ROOT / "Makefile").read_text()
    assert "run_all.py" in makefile and "pytest" in makefile


def _reason_not_run(command: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if start in command), None)


def _prepare(workspace: Path, samples_dir: Path) -> dict[str, str]:
    """dev_data/ (the 2023 samples), the checkpoint folder the README names, a hub cache holding the
    id it names, new_clips/; returns the environment for the commands."""
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


def test_every_readme_command_runs(samples_dir, tmp_path):
    commands = readme_commands()
    assert any("run_all.py" in c for c in commands) and any("score_clips.py" in c for c in commands)
    env = _prepare(tmp_path, samples_dir)
    ran = []
    # run_all first: score_clips needs its run folder
    for command in sorted(commands, key=lambda c: "run_all.py" not in c):
        if _reason_not_run(command):
            continue
        shell_command = _as_run_here(command, tmp_path)
        result = subprocess.run(
            ["bash", "-c", shell_command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, (
            f"README command failed: {command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
        ran.append(command)
    not_run = [c for c in commands if _reason_not_run(c)]
    assert len(ran) + len(not_run) == len(commands) and len(ran) >= 10
    assert (tmp_path / "clip_scores.csv").read_text().startswith("file,score,decision\n")
    assert next((tmp_path / "runs").glob("dev_data-*/results/ensemble/report.html")).is_file()


@pytest.mark.parametrize("command", [c for c in readme_commands() if _reason_not_run(c)])
def test_commands_not_run_here_are_named_with_a_reason(command):
    assert _reason_not_run(command)
