"""The demo's synthetic machine sounds: each machine type's normal sound, the faults mixed into test
anomalies, and the environmental noise of a 2026-style far microphone (make_demo_data.py, asd/data/demo_data.py).

Each machine type has its own sound (fan: blade-pass tone and airflow noise; pump: mains hum with piston
knocks; gearbox: gear mesh with shaft-rate sidebands); the attribute value sets the operating speed and
load; the target domain is a shifted operating condition (another speed, louder and differently coloured
background). Everything is vectorised over samples and drawn from the generator passed in.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import oaconvolve

ANOMALY_KINDS = ("bearing_whine", "rattle", "imbalance", "frequency_shift")

# per machine type: attribute key and values (value -> speed factor, load factor), and its sound
MACHINES = {
    "fan": dict(
        attr="vel",
        values={"6": (1.0, 1.0), "8": (1.3, 1.25)},
        f0=24.0,
        harmonics=10,
        tilt=1.2,
        boost=(7, 3.0),
        noise=0.9,
        noise_slope=0.6,
        knocks=0.0,
        knock_div=1,
        knock_freq=0.0,
    ),
    "pump": dict(
        attr="load",
        values={"1": (1.0, 1.0), "2": (1.08, 1.6)},
        f0=50.0,
        harmonics=14,
        tilt=0.8,
        boost=(2, 1.5),
        noise=0.5,
        noise_slope=1.0,
        knocks=0.8,
        knock_div=12,
        knock_freq=900.0,
    ),
    "gearbox": dict(
        attr="spd",
        values={"20": (1.0, 1.0), "30": (1.5, 1.3)},
        f0=19.0,
        harmonics=6,
        tilt=1.5,
        boost=(21, 4.0),
        noise=0.4,
        noise_slope=0.3,
        knocks=0.3,
        knock_div=1,
        knock_freq=2500.0,
    ),
}


# -----------------------------------------------------------------------------
# sound building blocks (all vectorised over samples)


def smooth_noise(rng: np.random.Generator, n: int, points: int, scale: float) -> np.ndarray:
    """A slow random curve of ``n`` samples through ``points`` random knots (std ``scale``)."""
    knots = rng.normal(0.0, scale, points)
    return np.interp(np.linspace(0, points - 1, n), np.arange(points), knots)


def coloured_noise(rng: np.random.Generator, n: int, sr: int, slope: float, cutoff: float) -> np.ndarray:
    """Gaussian noise with a 1/f**slope spectrum and a gentle low-pass at ``cutoff`` Hz, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    shape = 1.0 / np.maximum(freqs, 20.0) ** (slope / 2) / np.sqrt(1.0 + (freqs / cutoff) ** 4)
    noise = np.fft.irfft(spectrum * shape, n)
    return noise / (noise.std() + 1e-12)


def harmonic_hum(
    rng: np.random.Generator,
    t: np.ndarray,
    f0: float,
    count: int,
    tilt: float,
    boost: tuple,
    offset: float = 0.0,
) -> np.ndarray:
    """Harmonics of a jittering fundamental; ``offset`` Hz added to every partial makes it inharmonic.

    exp(i*k*phase) comes from repeated complex multiplication (no per-harmonic trigonometry).
    """
    sr = 1.0 / (t[1] - t[0])
    wander = 1.0 + smooth_noise(rng, len(t), 12, 0.004)
    rotor = np.exp(1j * (2 * np.pi * np.cumsum(f0 * wander) / sr))
    amps = np.arange(1, count + 1) ** -tilt * rng.uniform(0.85, 1.15, count)
    if boost[0] <= count:
        amps[boost[0] - 1] *= boost[1]
    amps[np.arange(1, count + 1) * f0 + offset >= sr / 2 - 200] = 0.0  # nothing above Nyquist
    weights = amps * np.exp(1j * rng.uniform(0, 2 * np.pi, count))
    total = np.zeros(len(t), dtype=complex)
    partial = np.ones(len(t), dtype=complex)
    for weight in weights:
        partial *= rotor
        total += weight * partial
    total *= np.exp(1j * 2 * np.pi * offset * t)
    return total.imag / np.sqrt(np.sum(amps**2))


def impacts(
    rng: np.random.Generator,
    n: int,
    sr: int,
    times: np.ndarray,
    amps: np.ndarray,
    freq: float,
    decay_s: float,
) -> np.ndarray:
    """Impulses at ``times`` (s) each ringing a damped resonance at ``freq`` Hz."""
    train = np.zeros(n)
    index = np.clip((times * sr).astype(int), 0, n - 1)
    np.add.at(train, index, amps)
    kt = np.arange(int(decay_s * 5 * sr)) / sr
    kernel = np.exp(-kt / decay_s) * np.sin(2 * np.pi * freq * kt)
    return oaconvolve(train, kernel)[:n]


def normal_sound(
    rng: np.random.Generator,
    spec: dict,
    value: str,
    domain: str,
    t: np.ndarray,
    sr: int,
    speed_shift: float,
    offset: float = 0.0,
) -> tuple[np.ndarray, float]:
    """The machine's normal sound for one attribute value and domain: (signal, rotation rate in Hz)."""
    speed, load = spec["values"][value]
    if domain == "target":
        speed *= speed_shift
    f0 = spec["f0"] * speed * rng.uniform(0.99, 1.01)
    n = len(t)
    hum = harmonic_hum(rng, t, f0, spec["harmonics"], spec["tilt"], spec["boost"], offset) * load
    noise_slope = spec["noise_slope"] + (0.6 if domain == "target" else 0.0)
    noise_level = spec["noise"] * (1.6 if domain == "target" else 1.0) * rng.uniform(0.9, 1.1)
    signal = hum + noise_level * coloured_noise(rng, n, sr, noise_slope, 5000.0)
    if spec["knocks"] > 0:
        rate = f0 / spec["knock_div"]
        beats = np.arange(rng.uniform(0, 1 / rate), n / sr, 1 / rate)
        times = beats + rng.normal(0, 0.002, len(beats))
        amps = spec["knocks"] * load * rng.uniform(0.8, 1.2, len(times))
        signal += impacts(rng, n, sr, times, amps, spec["knock_freq"] * rng.uniform(0.97, 1.03), 0.004) * 6.0
    return signal, f0


# -----------------------------------------------------------------------------
# anomalies


def add_anomaly(
    rng: np.random.Generator,
    kind: str,
    strength: float,
    normal: np.ndarray,
    t: np.ndarray,
    sr: int,
    rotation: float,
) -> np.ndarray:
    """``normal`` with one fault of ``kind`` mixed in; ``strength`` in (0, 1] grades how audible it is.

    (The fourth kind, frequency_shift, changes the machine itself: normal_sound's ``offset``.)
    """
    n = len(t)
    level = normal.std() * 10 ** ((-28 + 24 * strength) / 20)  # -28 dB .. -4 dB below the machine
    if kind == "bearing_whine":
        freq = rng.uniform(2500, 5000) * (1 + smooth_noise(rng, n, 8, 0.01))
        whine = np.sin(2 * np.pi * np.cumsum(freq) / sr) * (1 + 0.3 * np.sin(2 * np.pi * rotation * t))
        return normal + level * whine / whine.std()
    if kind == "rattle":
        count = max(1, int(rng.uniform(3, 8) * n / sr))
        times = np.sort(rng.uniform(0, n / sr, count))
        rattle = impacts(rng, n, sr, times, rng.uniform(0.5, 1.0, count), rng.uniform(1200, 3000), 0.003)
        return normal + 2.5 * level * rattle / (rattle.std() + 1e-12)
    if kind == "imbalance":
        depth = 0.15 + 0.6 * strength
        return normal * (1 + depth * np.sin(2 * np.pi * rotation * t + rng.uniform(0, 2 * np.pi)))
    raise ValueError(f"unknown anomaly kind {kind!r}")


# -----------------------------------------------------------------------------
# the far microphone's surroundings


def environmental_noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Unit-RMS background of a workshop: rumble, a murmur of voices (noise in a speech band, slowly
    swelling) and random clatter; nothing of it is in the near channel."""
    rumble = coloured_noise(rng, n, sr, 1.8, 300.0)
    swell = np.clip(1.0 + smooth_noise(rng, n, max(2, int(n / sr * 3)), 0.6), 0.1, None)
    murmur = coloured_noise(rng, n, sr, 0.3, 2500.0) * swell
    count = max(1, int(rng.uniform(1, 4) * n / sr))
    times = np.sort(rng.uniform(0, n / sr, count))
    clatter = impacts(rng, n, sr, times, rng.uniform(0.3, 1.0, count), rng.uniform(400, 1500), 0.02)
    noise = rumble + 0.7 * murmur / murmur.std() + 0.5 * clatter / (clatter.std() + 1e-12)
    return noise / (noise.std() + 1e-12)
