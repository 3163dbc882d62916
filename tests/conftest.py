"""Shared fixtures: the real recordings in ../shared/data and small real audio files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ECOVAE_SHARED_DATA", REPO.parent / "shared" / "data"))


TRAINED_FIXTURES = {"shared_run", "simulated"}  # each trains a model: a test using one is slow


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def logmel_cache(tmp_path_factory) -> Path:
    """Training's log-mel cache in the session's temporary folder, never the user's home (child processes
    inherit it through the environment)."""
    old = os.environ.get("ECOVAE_CACHE")
    folder = tmp_path_factory.mktemp("logmel_cache")
    os.environ["ECOVAE_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("ECOVAE_CACHE", None)
    else:
        os.environ["ECOVAE_CACHE"] = old


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "MANIFEST.csv").is_file():
        pytest.skip(f"real recordings not found at {SHARED_DATA} (set ECOVAE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def manifest(shared_data):
    import pandas as pd

    return pd.read_csv(shared_data / "MANIFEST.csv")


def write_tone(
    path: Path,
    seconds: float,
    sr: int = 48_000,
    channels: int = 1,
    subtype: str = "PCM_16",
    freq: float = 3000.0,
    seed: int = 0,
) -> Path:
    """A real WAV file: a tone plus noise (something a recorder could have captured)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))
    if channels > 1:
        x = np.stack([x * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), sr, subtype=subtype)
    return path


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory) -> Path:
    """A run folder (config.json + model.safetensors) holding an untrained tiny model."""
    from ecovae.model import preset
    from ecovae.run import init_run

    return init_run(tmp_path_factory.mktemp("untrained_run"), preset("tiny"))


@pytest.fixture(scope="session")
def shared_run(shared_data, tmp_path_factory):
    """A tiny model trained 300 steps on the real recordings, with its manifest."""
    from ecovae.train import train, train_preset

    run = tmp_path_factory.mktemp("shared_run")
    manifest = train(
        shared_data, run, train_preset("tiny", max_steps=300), labels_csv=shared_data / "MANIFEST.csv", progress=False
    )
    return run, manifest


@pytest.fixture(scope="session")
def simulated(tmp_path_factory):
    """A simulated survey (fixed seed), a tiny model trained briefly on it, and its latents.

    The tests that use it check what holds for any weights (the evaluation's files agree with
    its predictions, saliency maps are finite, the report is complete), so 40 steps do."""
    from ecovae.encode import encode
    from ecovae.simulate import simulate_survey
    from ecovae.train import train, train_preset

    base = tmp_path_factory.mktemp("simulated")
    survey = base / "survey"
    simulate_survey(
        survey, n_sites=4, recorders_per_site=2, hours=(0.0, 5.5, 7.0, 12.0, 18.0, 21.5), duration_s=30.0, seed=0
    )
    run = base / "run"
    train(survey, run, train_preset("tiny", max_steps=40, checkpoint_every=20, val_every=20), progress=False)
    latents = base / "latents.parquet"
    encode(survey, run, latents, progress=False)
    return survey, run, latents


@pytest.fixture
def small_disk(tmp_path):
    """``mount(kb)``: a real file system of that size (tmpfs) under tmp_path, to fill up.

    Needs root (mount); skipped with the reason where the machine cannot make one.
    """
    import subprocess

    mounted = []

    def mount(kb: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(where)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount failed'})")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def read_only_dir(tmp_path):
    """A real read-only directory (a read-only bind mount: even root cannot write there)."""
    import subprocess

    src, where = tmp_path / "ro_src", tmp_path / "ro"
    src.mkdir()
    where.mkdir()
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here ({done.stderr.strip() or 'mount failed'})")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill a small file system until fewer than ``leave`` bytes are free."""
    import shutil

    filler = disk / "filler"
    with filler.open("wb") as f:
        try:
            while shutil.disk_usage(disk).free > leave:
                f.write(b"\0" * min(65536, max(1, shutil.disk_usage(disk).free - leave)))
                f.flush()
        except OSError:
            pass
    return filler


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory):
    """One small quickstart (3 sites, 2 days, 3 times of day, a siren and a chainsaw planted), run once."""
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    from typer.testing import CliRunner

    from ecovae.cli import app

    result = CliRunner().invoke(
        app,
        [
            "quickstart",
            "--out",
            str(out),
            "--steps",
            "20",
            "--duration",
            "6",
            "--sites",
            "3",
            "--days",
            "2",
            "--hours",
            "0,8,16",
            "--rare-events",
            "2",
            "--quiet",
        ],
    )
    return out, result


def chromium(*flags: str):
    """Selenium driving Debian's headless chromium (with ``flags`` too), or a skip saying what is missing."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extras)")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/test.sh installs them as root)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        *flags,
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)
