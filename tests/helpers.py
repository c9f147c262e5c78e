"""Helpers shared by several test modules (not a test module: no test module imports another).

from helpers import TINY_DEMO_ARGS, extract_args, project_modules, tiny_train_args
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# tiny demo tree: 3 machine types x (6 source + 2 target train normals, 1 normal + 1 anomaly test
# clip per domain), 2 s clips; small enough for training/evaluation tests on CPU
TINY_DEMO_ARGS = [
    "--clip_seconds",
    "2",
    "--source_train",
    "6",
    "--target_train",
    "2",
    "--test_normal",
    "1",
    "--test_anomaly",
    "1",
    "--progress",
    "false",
]


def tiny_train_args(tmp_path: Path, data_dir: Path | str, *extra: str) -> list[str]:
    """train.py's own settings (the asdkit-eat-lora recipe) with a tiny random encoder, LoRA rank 4 and
    one epoch, writing under ``tmp_path``; ``extra`` options come last and win."""
    return [
        "--data_dir",
        str(data_dir),
        "--model_size",
        "tiny",
        "--lora_rank",
        "4",
        "--warmup_steps",
        "2",
        "--epochs",
        "1",
        "--num_workers",
        "0",
        "--feature_cache",
        str(tmp_path.parent / "cache"),
        "--output",
        str(tmp_path / "best.pth"),
        "--last_checkpoint",
        str(tmp_path / "last.pth"),
        *extra,
    ]


def extract_args(
    data_dir: Path | str, model: Path | str, embed_dir: Path | str, cache: str = "none"
) -> list[str]:
    """extract_embeddings.py's options for embedding ``data_dir`` with ``model`` into ``embed_dir``."""
    paths = ["--data_dir", str(data_dir), "--model_path", str(model), "--embed_dir", str(embed_dir)]
    return [*paths, "--feature_cache", cache]


def project_modules() -> list[str]:
    """Every Python file of the project (relative paths), tests and the environment left out."""
    files = [*ROOT.glob("*.py"), *ROOT.glob("asd/*.py"), *ROOT.glob("asd/*/*.py"), *ROOT.glob("bench/*.py")]
    return sorted(str(p.relative_to(ROOT)) for p in files if p.name != "__init__.py")
