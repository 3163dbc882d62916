"""A soundscape simulator: the built-in default data, with known ground truth.

``simulate_survey`` writes a small passive-acoustic survey: several sites along
a habitat-degradation gradient, each recorded at several times of day by two
recorders of different models. Each recording mixes

* biophony: birds (frequency-modulated chirps, whistles and trills, each
  species in its own band), insect stridulation (pulsed high carriers) and
  frog choruses (periodic pulse trains);
* geophony: rain (broadband hiss with drop transients) and wind (gusty
  low-frequency noise);
* anthrophony: road traffic (low rumble with passing vehicles) and aircraft
  (a slow harmonic drone rising and falling);

shaped by a diel cycle (dawn chorus, nocturnal insects and frogs, rush-hour
traffic) and by the degradation of the site (fewer species, more noise), then
passed through the recorder's frequency response and self-noise. Everything is
deterministic given the seed. The labels CSV holds the ground truth.

``rare_events`` plants a few rare sounds (a siren's wail, a chainsaw's buzz) in
as many recordings, a few seconds each, listed in ``events.csv`` (file, kind,
start and end second): what a novelty search should find first.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import fft as sp_fft
from scipy.signal import butter, sosfilt

SR = 48_000


@dataclass(frozen=True)
class Bird:
    name: str
    low_hz: float
    high_hz: float
    song: str  # "chirp", "whistle" or "trill"
    songs_per_minute: float
    sensitivity: float  # how fast the species disappears with degradation (0..1)


BIRDS = (
    Bird("warbler", 4000, 8000, "trill", songs_per_minute=10, sensitivity=0.9),
    Bird("thrush", 1800, 4200, "whistle", songs_per_minute=8, sensitivity=0.7),
    Bird("flycatcher", 5000, 9500, "chirp", songs_per_minute=14, sensitivity=0.8),
    Bird("dove", 500, 900, "whistle", songs_per_minute=5, sensitivity=0.2),
    Bird("wren", 3000, 7000, "trill", songs_per_minute=9, sensitivity=0.6),
    Bird("tanager", 2500, 5500, "chirp", songs_per_minute=12, sensitivity=0.95),
    Bird("sparrow", 3500, 6500, "chirp", songs_per_minute=10, sensitivity=0.1),
)


@dataclass(frozen=True)
class Insect:
    name: str
    carrier_hz: float
    pulse_hz: float
    nocturnal: bool


INSECTS = (
    Insect("katydid", 11000, 12, True),
    Insect("cricket", 4700, 30, True),
    Insect("cicada", 7500, 90, False),
)


@dataclass(frozen=True)
class Frog:
    name: str
    freq_hz: float
    pulse_hz: float  # pulses within a call
    call_period_s: float


FROGS = (Frog("treefrog", 2300, 60, 1.2), Frog("chorus_frog", 1300, 18, 2.5))


@dataclass(frozen=True)
class RecorderModel:
    name: str
    highpass_hz: float
    resonance_hz: float  # a broad peak in the response
    resonance_db: float
    lowpass_hz: float
    noise_dbfs: float  # self-noise


RECORDER_MODELS = (
    RecorderModel("AudioMoth", highpass_hz=300, resonance_hz=3500, resonance_db=6.0, lowpass_hz=14000, noise_dbfs=-62),
    RecorderModel("SM4", highpass_hz=120, resonance_hz=1500, resonance_db=1.5, lowpass_hz=19000, noise_dbfs=-75),
)

HABITATS = ("intact forest", "selectively logged", "degraded forest", "cleared farmland")
DEFAULT_HOURS = (0.0, 5.5, 7.0, 12.0, 18.0, 21.5)


def diel_period(hour: float) -> str:
    if 5.0 <= hour < 7.5:
        return "dawn"
    if 7.5 <= hour < 18.5:
        return "day"
    if 18.5 <= hour < 20.5:
        return "dusk"
    return "night"


@dataclass(frozen=True)
class DielProfile:
    """A site's day: when and how strongly its birds sing, its insects call, its traffic peaks.

    Real sites differ here, not only in their mean spectrum: two forests with the
    same species can differ in the timing and strength of the dawn chorus. The
    defaults are the survey-wide curves; :func:`site_profile` draws a site's own.
    """

    dawn_hour: float = 6.0
    dawn_width_h: float = 1.0
    dawn_strength: float = 1.0
    dusk_hour: float = 19.0
    dusk_strength: float = 0.4
    day_activity: float = 0.25  # birds between the choruses
    night_insects_db: float = 0.0  # loudness of nocturnal insects and frogs, relative
    traffic_peaks: tuple[float, float] = (8.0, 17.5)
    rush_strength: float = 1.0

    def as_labels(self) -> dict[str, str]:
        return {
            "dawn_hour": f"{self.dawn_hour:.2f}",
            "dawn_strength": f"{self.dawn_strength:.2f}",
            "day_activity": f"{self.day_activity:.2f}",
            "night_insects_db": f"{self.night_insects_db:.1f}",
            "rush_hours": "/".join(f"{h:.1f}" for h in self.traffic_peaks),
        }


def site_profile(rng: np.random.Generator) -> DielProfile:
    """A site's own diel pattern: an early and intense chorus with a quiet day, or a late, weak chorus
    with birds singing through the day; loud or quiet nights; early or late rush hours."""
    intensity = rng.uniform(0, 1)  # one axis, so that sites differ in the shape of the day, not its total
    return DielProfile(
        dawn_hour=float(rng.uniform(5.0, 7.0)),
        dawn_width_h=float(0.6 + 0.8 * (1 - intensity)),
        dawn_strength=float(0.45 + 0.55 * intensity),
        dusk_strength=float(rng.uniform(0.1, 0.6)),
        day_activity=float(0.45 - 0.35 * intensity),
        night_insects_db=float(rng.uniform(-10, 4)),
        traffic_peaks=(float(rng.uniform(6.5, 9.0)), float(rng.uniform(16.0, 19.0))),
        rush_strength=float(rng.uniform(0.3, 1.0)),
    )


@dataclass(frozen=True)
class Weather:
    """How often it rains and aircraft pass, and how windy it is (dB added to the wind's level)."""

    rain_chance: float = 0.15
    aircraft_chance: float = 0.12
    wind_db: float = 0.0


def bird_activity(hour: float, profile: DielProfile = DielProfile()) -> float:
    """Dawn chorus peak, a smaller dusk peak, some song by day, none at night."""
    p = profile
    dawn = p.dawn_strength * np.exp(-0.5 * ((hour - p.dawn_hour) / p.dawn_width_h) ** 2)
    dusk = p.dusk_strength * np.exp(-0.5 * ((hour - p.dusk_hour) / 1.0) ** 2)
    day = p.day_activity if 7 <= hour <= 18 else 0.0
    return float(min(1.0, dawn + dusk + day))


def is_night(hour: float) -> bool:
    return hour < 5.5 or hour >= 20.5


def traffic_level(hour: float, profile: DielProfile = DielProfile()) -> float:
    """Road traffic through the day: rush hours high, deep night low."""
    base = 0.15 + 0.85 * (6 <= hour <= 22)
    morning, evening = profile.traffic_peaks
    rush = np.exp(-0.5 * ((hour - morning) / 1.2) ** 2) + np.exp(-0.5 * ((hour - evening) / 1.5) ** 2)
    return float(min(1.0, 0.5 * base + 0.5 * profile.rush_strength * rush))


# --------------------------------------------------------------------------- sources


def _noise(rng: np.random.Generator, n: int, lo: float, hi: float, order: int = 2) -> np.ndarray:
    """Band-limited noise between lo and hi Hz (Butterworth), unit RMS."""
    sos = butter(order, [lo, min(hi, 0.45 * SR)], btype="bandpass", fs=SR, output="sos")
    out = sosfilt(sos, rng.standard_normal(n, dtype=np.float32)).astype(np.float32)
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def _envelope(n: int, attack: float = 0.1) -> np.ndarray:
    a = max(1, int(n * attack))
    env = np.ones(n)
    ramp = np.sin(np.linspace(0, np.pi / 2, a)) ** 2
    env[:a] = ramp
    env[-a:] = ramp[::-1]
    return env


def _tone(freq: np.ndarray, harmonics: tuple[float, ...] = (1.0, 0.25)) -> np.ndarray:
    # Phase in float64 (long sums), the sines in float32.
    phase = np.mod(2 * np.pi * np.cumsum(freq, dtype=np.float64) / SR, 2 * np.pi).astype(np.float32)
    return sum(a * np.sin((k + 1) * phase) for k, a in enumerate(harmonics))


def _add(dst: np.ndarray, start: int, sig: np.ndarray) -> None:
    end = min(len(dst), start + len(sig))
    if start < end:
        dst[start:end] += sig[: end - start]


def bird_song(rng: np.random.Generator, bird: Bird) -> np.ndarray:
    lo, hi = bird.low_hz, bird.high_hz
    if bird.song == "chirp":  # a few fast downward sweeps
        notes = []
        for _ in range(rng.integers(2, 6)):
            n = int(SR * rng.uniform(0.05, 0.12))
            f = np.linspace(rng.uniform(0.7, 1.0) * hi, rng.uniform(1.0, 1.3) * lo, n)
            notes += [_tone(f) * _envelope(n, 0.2), np.zeros(int(SR * rng.uniform(0.04, 0.1)))]
        return np.concatenate(notes)
    if bird.song == "whistle":  # slow tonal glide with vibrato
        n = int(SR * rng.uniform(0.6, 1.4))
        t = np.arange(n) / SR
        f0 = rng.uniform(lo, (lo + hi) / 2)
        f = np.linspace(f0, rng.uniform(f0, hi), n) + 0.04 * f0 * np.sin(2 * np.pi * rng.uniform(4, 9) * t)
        return _tone(f, (1.0, 0.3, 0.1)) * _envelope(n, 0.15)
    # trill: rapid repetition of one short note
    note_n = int(SR * rng.uniform(0.02, 0.04))
    gap_n = int(SR * rng.uniform(0.015, 0.03))
    f = np.linspace(rng.uniform(0.8, 1.0) * hi, rng.uniform(1.0, 1.2) * lo, note_n)
    note = np.concatenate([_tone(f) * _envelope(note_n, 0.3), np.zeros(gap_n)])
    return np.tile(note, rng.integers(12, 30))


def insect_chorus(rng: np.random.Generator, insect: Insect, n: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) / SR
    carrier = insect.carrier_hz * (1 + 0.01 * np.sin(2 * np.pi * 0.05 * t + rng.uniform(0, 6)))
    pulses = (np.sin(2 * np.pi * insect.pulse_hz * t + rng.uniform(0, 6)) > 0.3).astype(float)
    pulses = sosfilt(butter(2, 400, fs=SR, output="sos"), pulses)  # soften pulse edges
    return _tone(carrier, (1.0, 0.15)) * pulses


def frog_chorus(rng: np.random.Generator, frog: Frog, n: int, *, n_frogs: int) -> np.ndarray:
    out = np.zeros(n)
    for _ in range(n_frogs):
        period = frog.call_period_s * rng.uniform(0.85, 1.15)
        start = rng.uniform(0, period)
        call_n = int(SR * min(0.5, period * 0.4))
        t = np.arange(call_n) / SR
        f = frog.freq_hz * rng.uniform(0.95, 1.05) * np.ones(call_n)
        pulse = (np.sin(2 * np.pi * frog.pulse_hz * t) > 0).astype(float)
        call = _tone(f, (1.0, 0.5, 0.2)) * pulse * _envelope(call_n, 0.1)
        gain = rng.uniform(0.4, 1.0)
        for s in np.arange(start, n / SR, period):
            _add(out, int(s * SR), gain * call)
    return out


def rain(rng: np.random.Generator, n: int) -> np.ndarray:
    hiss = _noise(rng, n, 800, 16000)
    drops = np.zeros(n)
    idx = rng.integers(0, n, size=int(n / SR * 400))
    drops[idx] = rng.uniform(0.5, 3.0, size=len(idx))
    drops = sosfilt(butter(2, [1500, 9000], btype="bandpass", fs=SR, output="sos"), drops)
    return hiss + 8 * drops


def wind(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) / SR
    gusts = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 6)) ** 2
    return _noise(rng, n, 20, 500) * gusts


def road_traffic(rng: np.random.Generator, n: int, level: float) -> np.ndarray:
    rumble = _noise(rng, n, 40, 1500)
    t = np.arange(0, n, SR // 100) / SR  # the envelope is slow: build it at 100 Hz
    env = np.full(len(t), 0.3)
    for _ in range(rng.poisson(1 + 10 * level)):  # passing vehicles
        t0, width = rng.uniform(0, n / SR), rng.uniform(2, 6)
        env += rng.uniform(0.5, 2.0) * np.exp(-0.5 * ((t - t0) / width) ** 2)
    return rumble * np.interp(np.arange(n) / SR, t, env).astype(np.float32)


def aircraft(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) / SR
    t0, width = rng.uniform(0.2, 0.8) * n / SR, rng.uniform(8, 20)
    env = np.exp(-0.5 * ((t - t0) / width) ** 2)
    f0 = rng.uniform(90, 140) * (1 - 0.08 * np.tanh((t - t0) / width))  # Doppler-like glide
    drone = _tone(f0, (1.0, 0.7, 0.5, 0.35, 0.25, 0.15))
    return (drone + 0.8 * _noise(rng, n, 100, 3000)) * env


def siren(rng: np.random.Generator, n: int) -> np.ndarray:
    """A two-tone wail: a harmonic tone gliding between ~650 and ~1500 Hz every couple of seconds."""
    t = np.arange(n, dtype=np.float32) / SR
    period = rng.uniform(1.5, 2.5)
    freq = 650 + 850 * (0.5 - 0.5 * np.cos(2 * np.pi * t / period))
    return _tone(freq, (1.0, 0.5, 0.3)) * _envelope(n, 0.05)


def chainsaw(rng: np.random.Generator, n: int) -> np.ndarray:
    """A two-stroke engine at full revs: a ~170 Hz buzz rich in harmonics up to several kHz, revving, with a
    rasp of noise above 1 kHz (nothing else in the survey sounds like it)."""
    t = np.arange(n, dtype=np.float32) / SR
    f0 = rng.uniform(150, 190) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 1.0) * t) ** 2)
    buzz = _tone(f0, tuple(1 / np.sqrt(k + 1) for k in range(30)))
    return (buzz + 0.4 * _noise(rng, n, 1000, 8000)) * _envelope(n, 0.05)


RARE_EVENTS = {"siren": siren, "chainsaw": chainsaw}
EVENT_DB = 30.0  # over the ambient: a chainsaw or a siren passing within a hundred metres or so


@lru_cache(maxsize=8)
def _response(model: RecorderModel, n: int) -> np.ndarray:
    f = np.maximum(np.fft.rfftfreq(n, 1 / SR), 1.0)
    gain = 1 / np.sqrt(1 + (model.highpass_hz / f) ** 4) / np.sqrt(1 + (f / model.lowpass_hz) ** 8)
    gain *= 10 ** (model.resonance_db / 20 * np.exp(-0.5 * (np.log(f / model.resonance_hz) / 0.5) ** 2))
    return gain.astype(np.float32)


def recorder_response(x: np.ndarray, model: RecorderModel, rng: np.random.Generator) -> np.ndarray:
    """The recorder's frequency response and self-noise."""
    y = sp_fft.irfft(sp_fft.rfft(x) * _response(model, len(x)), len(x))
    return y + np.float32(10 ** (model.noise_dbfs / 20)) * rng.standard_normal(len(x), dtype=np.float32)


# --------------------------------------------------------------------------- a recording


def _db(level_db: float) -> float:
    return 10 ** (level_db / 20)


def simulate_recording(
    rng: np.random.Generator,
    duration_s: float,
    hour: float,
    *,
    degradation: float,
    species: dict[str, list],
    recorder: RecorderModel,
    profile: DielProfile = DielProfile(),
    weather: Weather = Weather(),
) -> tuple[np.ndarray, dict[str, bool]]:
    """One mono recording (float, peak below 1) and which source kinds it holds."""
    n = int(duration_s * SR)
    x = np.zeros(n, dtype=np.float32)
    present: dict[str, bool] = {}

    activity = bird_activity(hour, profile)
    birds_heard = False
    for bird in species["birds"]:
        n_songs = rng.poisson(bird.songs_per_minute * duration_s / 60 * activity * 1.5)
        level = _db(rng.uniform(-32, -20))
        for _ in range(n_songs):
            song = bird_song(rng, bird)
            _add(x, int(rng.uniform(0, max(1, n - len(song)))), level * rng.uniform(0.3, 1.0) * song)
        birds_heard |= n_songs > 0
    present["birds"] = birds_heard

    night = is_night(hour)
    insects_heard = False
    for insect in species["insects"]:
        if insect.nocturnal == night and rng.random() < 0.85:
            loud = profile.night_insects_db if insect.nocturnal else 0.0
            x += _db(rng.uniform(-42, -30) + loud) * insect_chorus(rng, insect, n)
            insects_heard = True
    present["insects"] = insects_heard

    frogs_heard = False
    for frog in species["frogs"]:
        if night and rng.random() < 0.8:
            x += _db(rng.uniform(-36, -26) + profile.night_insects_db) * frog_chorus(
                rng, frog, n, n_frogs=int(rng.integers(3, 9))
            )
            frogs_heard = True
    present["frogs"] = frogs_heard

    present["rain"] = bool(rng.random() < weather.rain_chance)
    if present["rain"]:
        x += _db(rng.uniform(-40, -28)) * rain(rng, n)
    wind_db = rng.uniform(-60, -36) + weather.wind_db
    present["wind"] = bool(wind_db > -48)
    x += _db(wind_db) * wind(rng, n)

    traffic = degradation * traffic_level(hour, profile)
    present["traffic"] = bool(traffic > 0.05)
    if present["traffic"]:
        x += _db(-52 + 20 * traffic) * road_traffic(rng, n, traffic)
    present["aircraft"] = bool(rng.random() < weather.aircraft_chance + 0.25 * degradation)
    if present["aircraft"]:
        x += _db(rng.uniform(-40, -28)) * aircraft(rng, n)

    y = recorder_response(x, recorder, rng)
    peak = np.max(np.abs(y))
    if peak > 0.95:  # the recorder's gain would have been set lower
        y *= 0.95 / peak
    return y.astype(np.float32), present


def site_species(rng: np.random.Generator, degradation: float) -> dict[str, list]:
    """A site's species: sensitive species drop out as degradation rises."""
    birds = [b for b in BIRDS if rng.random() > degradation * b.sensitivity]
    insects = [i for i in INSECTS if rng.random() > 0.5 * degradation]
    frogs = [f for f in FROGS if rng.random() > 0.9 * degradation]
    return {"birds": birds, "insects": insects, "frogs": frogs}


LABEL_COLUMNS = (
    "site",
    "habitat",
    "degradation",
    "recorder",
    "recorder_model",
    "recorded_at",
    "date",
    "hour",
    "diel_period",
    "day_night",
    "birds",
    "insects",
    "frogs",
    "rain",
    "wind",
    "traffic",
    "aircraft",
    "species",
    "dawn_hour",
    "dawn_strength",
    "day_activity",
    "night_insects_db",
    "rush_hours",
    "rare_event",
)


def _plant_events(
    jobs: list[dict], rows: list[dict], n: int, duration_s: float, seed: int, out: Path, event_db: float = EVENT_DB
) -> set[str]:
    """Choose ``n`` recordings and a rare sound and time in each (own seed: the survey is unchanged otherwise);
    write events.csv. Returns the chosen paths."""
    if not n:
        return set()
    rng = np.random.default_rng([seed, 0x5E7E])
    chosen = rng.choice(len(jobs), size=min(n, len(jobs)), replace=False)
    with (out / "events.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "kind", "start_s", "end_s", "level_db"])
        for i, idx in enumerate(sorted(chosen)):
            length = min(duration_s, rng.uniform(3.0, 5.0))
            start = round(float(rng.uniform(0, duration_s - length)), 3)
            kind = sorted(RARE_EVENTS)[i % len(RARE_EVENTS)]
            jobs[idx]["event"] = (kind, start, round(start + length, 3), event_db)
            writer.writerow([rows[idx]["path"], kind, start, round(start + length, 3), event_db])
    return {rows[i]["path"] for i in chosen}


def _write_recording(job: dict) -> dict[str, bool]:
    rng = np.random.default_rng(job["seed"])
    audio, present = simulate_recording(
        rng,
        duration_s=job["duration_s"],
        hour=job["hour"],
        degradation=job["degradation"],
        species=job["species"],
        recorder=job["model"],
        profile=job["profile"],
        weather=job.get("weather", Weather()),
    )
    if job.get("event"):  # close to the recorder: loud, after its response
        kind, start_s, end_s, event_db = job["event"]
        start, end = int(start_s * SR), int(end_s * SR)
        sound = RARE_EVENTS[kind](np.random.default_rng(job["seed"].spawn(1)[0]), end - start)
        # event_db over what the recorder hears there, near it: it clips at full scale, as a real one would
        ambient = np.sqrt(np.mean(audio[start:end] ** 2)) + 1e-6
        level = 10 ** (event_db / 20) * ambient
        audio[start:end] += level * sound / (np.sqrt(np.mean(sound**2)) + 1e-12)
        np.clip(audio, -0.99, 0.99, out=audio)
    sf.write(job["path"], audio, SR, subtype="PCM_16")
    return present


def simulate_survey(
    out: Path | str,
    n_sites: int = 4,
    recorders_per_site: int = 2,
    *,
    hours: tuple[float, ...] = DEFAULT_HOURS,
    days: int = 1,
    duration_s: float = 60.0,
    seed: int = 0,
    start_date: datetime = datetime(2024, 5, 1),
    workers: int | None = None,
    recorder_models: tuple[RecorderModel, ...] = RECORDER_MODELS,
    habitats: int | None = None,
    rare_events: int = 0,
    event_db: float = EVENT_DB,
) -> Path:
    """Write a survey of WAV files as SITE/RECORDER/YYYYMMDD_HHMMSS.WAV plus labels.csv.

    Returns the path of labels.csv. Sites lie along a degradation gradient of
    ``habitats`` levels (default: one per site); with fewer levels than sites,
    sites take them in turn, so sites of one habitat share their species pool
    and differ in their diel pattern (:class:`DielProfile`, drawn per site; its
    values are in the labels). Recorder models alternate across a site's
    recorders, so every site has each model. The output depends on the seed
    only (not on ``workers``). ``rare_events`` recordings, drawn by the seed,
    each get one rare sound of 3-5 s (``events.csv``), ``event_db`` over the ambient there; the others are as
    without.

    >>> import tempfile, pathlib
    >>> from ecovae import simulate_survey
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "survey"
    >>> labels = simulate_survey(folder, n_sites=2, recorders_per_site=1, hours=(6.0,), duration_s=6.0)
    >>> labels.name, len(labels.read_text().splitlines())  # a header and one row per recording
    ('labels.csv', 3)
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    levels = max(1, min(habitats or n_sites, n_sites))
    jobs, rows = [], []
    for s, site_seq in enumerate(np.random.SeedSequence(seed).spawn(n_sites)):
        degradation = (s % levels) / max(1, levels - 1)
        site = f"site{s + 1}"
        habitat = HABITATS[min(len(HABITATS) - 1, int(degradation * (len(HABITATS) - 1) + 0.5))]
        species_seq, *file_seqs = site_seq.spawn(1 + recorders_per_site * days * len(hours))
        species = site_species(np.random.default_rng(species_seq), degradation)
        profile = site_profile(np.random.default_rng(site_seq.spawn(1)[0]))
        species_names = ";".join(x.name for kind in ("birds", "insects", "frogs") for x in species[kind])
        file_seqs = iter(file_seqs)
        for r in range(recorders_per_site):
            model = recorder_models[r % len(recorder_models)]
            recorder = f"{site}-{model.name}-{r + 1}"
            for d in range(days):
                for hour in hours:
                    start = start_date + timedelta(days=d, hours=hour)
                    rel = f"{site}/{recorder}/{start:%Y%m%d_%H%M%S}.WAV"
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    jobs.append(
                        {
                            "path": out / rel,
                            "seed": next(file_seqs),
                            "duration_s": duration_s,
                            "hour": hour,
                            "degradation": degradation,
                            "species": species,
                            "model": model,
                            "profile": profile,
                        }
                    )
                    rows.append(
                        {
                            "path": rel,
                            "site": site,
                            "habitat": habitat,
                            "degradation": f"{degradation:.2f}",
                            "recorder": recorder,
                            "recorder_model": model.name,
                            "recorded_at": start.isoformat(),
                            "date": f"{start:%Y-%m-%d}",
                            "hour": f"{hour:g}",
                            "diel_period": diel_period(hour),
                            "day_night": "night" if is_night(hour) else "day",
                            "species": species_names,
                            **profile.as_labels(),
                        }
                    )
    events = _plant_events(jobs, rows, rare_events, duration_s, seed=seed, out=out, event_db=event_db)
    presents = _write_all(jobs, workers)
    for row, present in zip(rows, presents, strict=True):
        present["rare_event"] = row["path"] in events
        row.update({key: str(int(v)) for key, v in present.items()})
    return _write_labels(out, rows, LABEL_COLUMNS)


def _write_all(jobs: list[dict], workers: int | None) -> list[dict[str, bool]]:
    """Every job's recording written (in ``workers`` processes); which sources each holds."""
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(_write_recording, jobs, chunksize=4))
    return [_write_recording(job) for job in jobs]


def _write_labels(out: Path, rows: list[dict], columns: tuple[str, ...]) -> Path:
    labels = out / "labels.csv"
    with labels.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", *columns])
        writer.writeheader()
        writer.writerows(rows)
    return labels


# --------------------------------------------------------------------------- randomised worlds (a pretraining corpus)

SONGS = ("chirp", "whistle", "trill")
WORLD_LABELS = ("world", "site", "degradation", "recorder_model", "hour", "species")


def _log_near(a: float, b: float, tolerance: float) -> bool:
    return abs(np.log(a / b)) < tolerance


def _redraw(draw, taken) -> object:
    """``draw()`` until it is not ``taken`` (the survey's own species stay out of a pretraining corpus)."""
    while True:
        x = draw()
        if not taken(x):
            return x


def random_bird(rng: np.random.Generator, name: str) -> Bird:
    """A bird of no survey species: its band and song type drawn, never a quickstart bird's song in its band."""

    def draw() -> Bird:
        centre, spread = np.exp(rng.uniform(np.log(450), np.log(10_000))), rng.uniform(1.3, 2.6)
        lo, hi = centre / np.sqrt(spread), min(centre * np.sqrt(spread), 16_000.0)
        return Bird(
            name,
            float(lo),
            float(hi),
            SONGS[rng.integers(3)],
            songs_per_minute=float(rng.uniform(3, 18)),
            sensitivity=float(rng.random()),
        )

    def taken(b: Bird) -> bool:
        centre = np.sqrt(b.low_hz * b.high_hz)
        return any(o.song == b.song and _log_near(centre, np.sqrt(o.low_hz * o.high_hz), 0.25) for o in BIRDS)

    return _redraw(draw, taken)


def random_insect(rng: np.random.Generator, name: str) -> Insect:
    def draw() -> Insect:
        carrier, pulse = np.exp(rng.uniform(np.log(2500), np.log(15_000))), np.exp(rng.uniform(np.log(5), np.log(120)))
        return Insect(name, float(carrier), float(pulse), bool(rng.random() < 0.6))

    return _redraw(
        draw,
        lambda x: any(
            _log_near(x.carrier_hz, o.carrier_hz, 0.15) and _log_near(x.pulse_hz, o.pulse_hz, 0.4) for o in INSECTS
        ),
    )


def random_frog(rng: np.random.Generator, name: str) -> Frog:
    def draw() -> Frog:
        freq, pulse = np.exp(rng.uniform(np.log(400), np.log(4000))), np.exp(rng.uniform(np.log(8), np.log(80)))
        return Frog(name, float(freq), float(pulse), float(rng.uniform(0.6, 4.0)))

    return _redraw(
        draw,
        lambda x: any(_log_near(x.freq_hz, o.freq_hz, 0.2) and _log_near(x.pulse_hz, o.pulse_hz, 0.4) for o in FROGS),
    )


def random_recorder(rng: np.random.Generator, name: str) -> RecorderModel:
    return RecorderModel(
        name,
        highpass_hz=float(rng.uniform(60, 500)),
        resonance_hz=float(np.exp(rng.uniform(np.log(800), np.log(8000)))),
        resonance_db=float(rng.uniform(-3, 8)),
        lowpass_hz=float(rng.uniform(8000, 20_000)),
        noise_dbfs=float(rng.uniform(-80, -55)),
    )


@dataclass(frozen=True)
class World:
    """A region's species pool, weather and recorder, drawn at random: one of many for pretraining."""

    name: str
    species: dict
    weather: Weather
    recorder: RecorderModel


def random_world(rng: np.random.Generator, name: str) -> World:
    species = {
        "birds": [random_bird(rng, f"{name}-bird{i}") for i in range(rng.integers(2, 11))],
        "insects": [random_insect(rng, f"{name}-insect{i}") for i in range(rng.integers(0, 5))],
        "frogs": [random_frog(rng, f"{name}-frog{i}") for i in range(rng.integers(0, 4))],
    }
    weather = Weather(float(rng.uniform(0, 0.5)), float(rng.uniform(0, 0.3)), float(rng.uniform(-6, 10)))
    return World(name, species, weather, random_recorder(rng, f"{name}-recorder"))


def simulate_worlds(
    out: Path | str,
    *,
    worlds: int = 40,
    sites_per_world: int = 2,
    recordings_per_site: int = 6,
    duration_s: float = 30.0,
    seed: int = 1,
    workers: int | None = None,
) -> Path:
    """Write a pretraining corpus from ``worlds`` randomised worlds (:func:`random_world`): in each, sites of
    their own degradation (species dropping out, traffic rising) and diel pattern, recorded at random hours and
    dates through the world's own recorder. None of the built-in survey's species is among them, so a model
    pretrained here meets the quickstart's species for the first time. WORLD/SITE/YYYYMMDD_HHMMSS.WAV plus
    labels.csv (for reading, not for training); the output depends on the seed only. Returns labels.csv."""
    out = Path(out)
    jobs, rows = [], []
    for w, world_seq in enumerate(np.random.SeedSequence([seed, 0x3091D]).spawn(worlds)):
        world_rng = np.random.default_rng(world_seq)
        world = random_world(world_rng, f"world{w + 1:03d}")
        for s in range(sites_per_world):
            degradation = float(world_rng.random())
            site_rng = np.random.default_rng(world_rng.integers(2**63))
            species = site_species_of(world, site_rng, degradation)
            profile = site_profile(site_rng)
            for _ in range(recordings_per_site):
                start = datetime(2023, 1, 1) + timedelta(
                    days=int(site_rng.integers(365)), hours=float(site_rng.integers(96)) / 4
                )
                rel = f"{world.name}/site{s + 1}/{start:%Y%m%d_%H%M%S}.WAV"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                if any(r["path"] == rel for r in rows):
                    continue  # the same quarter-hour drawn twice at a site
                hour = start.hour + start.minute / 60
                jobs.append(
                    {
                        "path": out / rel,
                        "seed": np.random.SeedSequence(int(site_rng.integers(2**63))),
                        "duration_s": duration_s,
                        "hour": hour,
                        "degradation": degradation,
                        "species": species,
                        "model": world.recorder,
                        "profile": profile,
                        "weather": world.weather,
                    }
                )
                names = ";".join(x.name for kind in ("birds", "insects", "frogs") for x in species[kind])
                row = [world.name, f"site{s + 1}", f"{degradation:.2f}", world.recorder.name, f"{hour:g}", names]
                rows.append({"path": rel, **dict(zip(WORLD_LABELS, row, strict=True))})
    _write_all(jobs, workers)
    return _write_labels(out, rows, WORLD_LABELS)


def site_species_of(world: World, rng: np.random.Generator, degradation: float) -> dict[str, list]:
    """A site's share of its world's species: sensitive species drop out as degradation rises."""
    return {
        "birds": [b for b in world.species["birds"] if rng.random() > degradation * b.sensitivity],
        "insects": [i for i in world.species["insects"] if rng.random() > 0.5 * degradation],
        "frogs": [f for f in world.species["frogs"] if rng.random() > 0.9 * degradation],
    }
