"""The baseline autoencoder scorer against the official baseline's own outputs (tests/fixtures/baseline_fixture),
through the code the scorer runs: features from the real clips, reconstructions, the covariance pass replayed
in the fixture's batch order, and both scores per clip; then a tiny real training run and its model file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asd.backends import baseline_ae as B
from asd.backends import baseline_network as N
from asd.data.names import parse_clip_name
from asd.data.preprocessing import AudioError
from asd.embed.embedding_files import Split

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "baseline_fixture"
VECTOR_ATOL = 1e-3  # dB
RELATIVE = 1e-4


@pytest.fixture(scope="module")
def reference():
    """(cases.npz arrays, cases.json)."""
    return dict(np.load(FIXTURE / "cases.npz")), json.loads((FIXTURE / "cases.json").read_text())


def split_of(records) -> Split:
    """A Split of these clips (the scorer reads their audio; its embeddings are not used)."""
    return Split(
        np.zeros((len(records), 1), np.float32), np.zeros((len(records), 0), np.float32), [], records
    )


def fixture_scorer(arrays: dict, score: str) -> B.BaselineAE:
    """The scorer holding the fixture's network (strict state-dict names) and covariances."""
    scorer = B.BaselineAE(score=score, device="cpu")
    scorer.model.load_state_dict(
        {k[len("state::") :]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("state::")}
    )
    scorer.model.cov_source.copy_(torch.from_numpy(arrays["cov_source"]))
    scorer.model.cov_target.copy_(torch.from_numpy(arrays["cov_target"]))
    scorer.model.eval()
    return scorer


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def test_vectors_match_the_baseline_on_real_clips(samples_dir, reference):
    arrays, cases = reference
    scorer = B.BaselineAE(channels="near", device="cpu")
    names = [f"vectors_{i}" for i in range(7)]
    records = [parse_clip_name(samples_dir / cases["arrays"][name]) for name in names]
    for name, vectors in zip(names, scorer.clip_vectors(records)):
        assert vectors.shape == arrays[name].shape == (309, 640)
        assert np.max(np.abs(vectors - arrays[name])) < VECTOR_ATOL, name


def test_two_channel_clip_near_is_the_baselines_channel_0(reference):
    arrays, _ = reference
    path = FIXTURE / "two_channel_clip.wav"
    near = B.file_to_vectors(path, "near")
    assert np.max(np.abs(near - arrays["vectors_two_channel"])) < VECTOR_ATOL
    far = B.file_to_vectors(path, "far")
    assert np.max(np.abs(far - arrays["vectors_two_channel"])) > 1.0  # another microphone is heard
    with pytest.raises(ValueError, match="one channel"):
        B.BaselineAE(channels="both")


def test_mono_clip_in_a_two_channel_mode_is_refused(samples_dir, reference):
    _, cases = reference
    with pytest.raises(AudioError, match="far"):
        B.file_to_vectors(samples_dir / cases["arrays"]["vectors_0"], "far")


def test_reconstructions_match(reference):
    arrays, _ = reference
    scorer = fixture_scorer(arrays, "MSE")
    for i in range(7):
        with torch.no_grad():
            recon = scorer.model(torch.from_numpy(arrays[f"vectors_{i}"]))[0].numpy()
        assert relative_error(recon, arrays[f"recon_{i}"]) < RELATIVE, i


def test_covariance_pass_replays_the_baselines_batches(samples_dir, reference):
    arrays, cases = reference
    info = cases["arrays"]["covariance"]
    scorer = fixture_scorer(arrays, "MSE")
    records = [parse_clip_name(samples_dir / path) for path in info["train_clips"]]
    per_clip = scorer.clip_vectors(records)
    is_target = B.target_flags(records, per_clip)
    assert (
        int((~is_target).sum()) == info["n_source_vectors"]
        and int(is_target.sum()) == info["n_target_vectors"]
    )
    vectors = torch.from_numpy(np.concatenate(per_clip))
    order = torch.from_numpy(arrays["train_vectors_order"])
    source, target = N.covariance_pass(scorer.model, vectors, is_target, order, 256)
    assert relative_error(source, arrays["cov_source"]) < RELATIVE
    assert relative_error(target, arrays["cov_target"]) < RELATIVE
    # without target vectors, target = source
    only_source, same = N.covariance_pass(scorer.model, vectors, torch.zeros_like(is_target), order, 256)
    assert torch.equal(only_source, same)


def test_the_hand_written_training_step_is_autograds(reference):
    """train_step with flat parameters and fused Adam gives autograd's loss, gradients, batch-norm statistics
    and weights, step after step, on the fixture's network and real feature vectors."""
    arrays, _ = reference
    vectors = torch.from_numpy(np.concatenate([arrays[f"vectors_{i}"] for i in range(3)]))
    state = {k[len("state::") :]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("state::")}
    reference_net, fast_net = (N.AENet(B.INPUT_DIM, B.N_MELS) for _ in range(2))
    for net in (reference_net, fast_net):
        net.load_state_dict(state)
        net.train()
    reference_adam = torch.optim.Adam(reference_net.parameters(), lr=1e-3, fused=True)
    generator = torch.Generator().manual_seed(0)
    with N.flat_parameters(fast_net) as flat:
        fast_adam = torch.optim.Adam([flat], lr=1e-3, fused=True)
        for _ in range(3):
            batch = vectors[torch.randperm(len(vectors), generator=generator)[:256]]
            reference_adam.zero_grad()
            loss = torch.mean((reference_net(batch)[0] - batch) ** 2)
            loss.backward()
            fast_loss = N.train_step(fast_net, batch)
            torch.testing.assert_close(fast_loss, loss.detach())
            for (name, a), b in zip(reference_net.named_parameters(), fast_net.parameters()):
                torch.testing.assert_close(b.grad, a.grad, msg=name)
            reference_adam.step()
            fast_adam.step()
    for name, value in reference_net.state_dict().items():
        torch.testing.assert_close(fast_net.state_dict()[name], value, msg=name)
    # afterwards every parameter owns its storage again and has no gradient
    pointers = {p.data_ptr() for p in fast_net.parameters()}
    assert len(pointers) == len(list(fast_net.parameters())) and all(
        p.grad is None for p in fast_net.parameters()
    )


@pytest.mark.parametrize("score", B.SCORES)
def test_scores_per_clip_match(samples_dir, reference, score):
    arrays, cases = reference
    scorer = fixture_scorer(arrays, score)
    records = [parse_clip_name(samples_dir / case["clip"]) for case in cases["scores"]]
    scores = scorer.score(split_of(records))
    for value, case in zip(scores, cases["scores"]):
        assert abs(value - case[score]) / abs(case[score]) < RELATIVE, case["clip"]
    for case in cases["scores"][:2]:
        parts = N.clip_scores(scorer.model, torch.from_numpy(arrays[case["vectors"]]), scorer.inverses())
        for name in ("MAHALA_source", "MAHALA_target"):
            assert abs(parts[name] - case[name]) / case[name] < RELATIVE


def write_tone_clips(root: Path, count: int, split: str, label: str, freq: float, seed: int) -> list:
    """``count`` 2 s clips at 16 kHz: a tone at ``freq`` Hz with a little noise."""
    rng = np.random.default_rng(seed)
    folder = root / "machine" / split
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(32000) / 16000
    records = []
    for i in range(count):
        domain = "target" if split == "train" and i == count - 1 else "source"
        wave = 0.3 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6)) + 0.01 * rng.standard_normal(t.size)
        path = folder / f"section_00_{domain}_{split}_{label}_{i:04d}_a_{i % 2}.wav"
        sf.write(path, wave.astype(np.float32), 16000)
        records.append(parse_clip_name(path))
    return records


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(fitted scorer, training records, test records, test labels): 10 tone clips, 15 epochs."""
    root = tmp_path_factory.mktemp("baseline_tones")
    train = write_tone_clips(root, 10, "train", "normal", 1000.0, 0)
    test = write_tone_clips(root, 3, "test", "normal", 1000.0, 1) + write_tone_clips(
        root, 3, "test", "anomaly", 2500.0, 2
    )
    scorer = B.BaselineAE(epochs=15, batch_size=64, device="cpu").fit(split_of(train))
    return scorer, train, test, np.array([r.label == "anomaly" for r in test])


def test_training_reduces_the_loss_and_ranks_anomalies_first(trained):
    scorer, train, test, is_anomaly = trained
    losses = [loss for loss, _ in scorer.history]
    assert len(losses) == 15 and losses[-1] < 0.5 * losses[0]
    assert np.isfinite(scorer.history[-1][1])  # a validation clip was held out
    for score in B.SCORES:
        scorer.settings["score"] = score
        values = scorer.score(split_of(test))
        assert values[is_anomaly].min() > values[~is_anomaly].max(), score
    scorer.settings["score"] = "MSE"


def test_training_scores_are_the_held_out_clips(trained):
    scorer, train, _, _ = trained
    scores = scorer.training_scores(split_of(train))
    held_out = B.validation_rows(train, B.VALIDATION_SHARE, scorer.settings["seed"])
    assert held_out.sum() == 1 and np.isfinite(scores).sum() == 1
    assert np.isfinite(scores[held_out]).all()
    assert scores[held_out][0] == pytest.approx(
        scorer.score(split_of([train[int(np.flatnonzero(held_out)[0])]]))[0]
    )


def test_validation_rows_cover_every_section():
    records = [
        parse_clip_name(f"/x/m/train/section_{section}_{domain}_train_normal_{i:04d}_a_1.wav")
        for section, n in (("00", 12), ("01", 3), ("02", 1))
        for i in range(n)
        for domain in (("target" if i == 0 else "source"),)
    ]
    held_out = B.validation_rows(records, 0.1, 0)
    sections = np.array([r.section for r in records])
    assert held_out[sections == "00"].any() and held_out[sections == "01"].any()
    assert not held_out[sections == "02"].any()  # a lone clip is trained on
    assert all((~held_out[sections == s]).any() for s in ("00", "01", "02"))


def test_model_file_round_trip_and_refusals(trained, tmp_path):
    scorer, train, test, _ = trained
    path = tmp_path / "baseline_machine.pt"
    scorer.save(path)
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    assert state["format"] == B.BASELINE_FORMAT
    loaded = B.BaselineAE.load(path, device="cpu")
    assert np.array_equal(loaded.score(split_of(test)), scorer.score(split_of(test)))
    np.testing.assert_array_equal(
        loaded.training_scores(split_of(train)), scorer.training_scores(split_of(train))
    )
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": B.BASELINE_FORMAT, "object": Path("x")}, pickled)  # needs unpickling a class
    with pytest.raises(ValueError, match="cannot read"):
        B.BaselineAE.load(pickled)
    other = tmp_path / "other.pt"
    torch.save({"format": "something else"}, other)
    with pytest.raises(ValueError, match="not a baseline"):
        B.BaselineAE.load(other)


def test_the_registry_builds_it_from_evaluate_settings():
    """evaluate.py's BASELINE_* constants (the baseline's recipe) through the registry, as evaluate.py runs it."""
    import evaluate
    from asd.backends.registry import make_backend
    from asd.base.cli import config_to_dict, parse_config

    cfg = parse_config(vars(evaluate), ["--baseline_score", "MAHALA", "--baseline_epochs", "3"])
    scorer = make_backend("baseline_ae", {**config_to_dict(cfg), "channels": "far", "device": "cpu"})
    assert isinstance(scorer, B.BaselineAE) and scorer.group_by == "machine_type"
    assert scorer.settings["score"] == "MAHALA" and scorer.settings["epochs"] == 3
    assert scorer.settings["learning_rate"] == 1e-3 and scorer.settings["channels"] == "far"
    assert scorer.settings["batch_size"] == 256 and scorer.settings["seed"] == 13711
    both = make_backend("baseline_ae", {**config_to_dict(cfg), "channels": "both"})
    assert both.settings["channels"] == "near"  # the baseline's own 2026 reading: channel 0
    with pytest.raises(SystemExit):
        parse_config(vars(evaluate), ["--baseline_score", "L1"])


def test_thresholds_count_only_the_held_out_scores_of_a_domain():
    from asd.score.scoring import TrainScores
    from asd.score.thresholds import threshold_table

    records = [parse_clip_name("/x/m/test/section_00_source_test_normal_0000_a_1.wav")]
    values = np.concatenate([np.linspace(1.0, 2.0, 12), [3.0, 4.0], np.full(10, np.nan)])
    domains = ["source"] * 12 + ["target"] * 12
    table = threshold_table(records, TrainScores({("m", "00"): values}, {("m", "00"): domains}))
    assert ("m", "00", "source") in table and ("m", "00", "target") not in table  # 2 held-out targets
    assert table[("m", "00")]["n_scores"] == 14
