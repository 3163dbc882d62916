"""The pretraining corpus, the recipe's parts, the shipped model and fine-tuning from it."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ecovae.cli import app
from ecovae.corpus import build_corpus
from ecovae.pretrained import CARD_JSON, model_card, pretrained_dir, resolve_model
from ecovae.run import load_model, weights_digest
from ecovae.simulate import BIRDS, FROGS, INSECTS, random_world, simulate_worlds
from ecovae.train import NATS_PER_DB, TrainConfig, augment, learning_rate_factor, train, train_preset

runner = CliRunner()


# --------------------------------------------------------------------------- the corpus


def test_random_worlds_hold_none_of_the_survey_species():
    """Drawn many times, no world has a bird singing a survey bird's song in its band, nor a survey
    insect's or frog's call."""
    for seed in range(40):
        world = random_world(np.random.default_rng(seed), f"w{seed}")
        for b in world.species["birds"]:
            centre = math.sqrt(b.low_hz * b.high_hz)
            for o in BIRDS:
                assert not (o.song == b.song and abs(math.log(centre / math.sqrt(o.low_hz * o.high_hz))) < 0.25)
        for i in world.species["insects"]:
            assert not any(
                abs(math.log(i.carrier_hz / o.carrier_hz)) < 0.15 and abs(math.log(i.pulse_hz / o.pulse_hz)) < 0.4
                for o in INSECTS
            )
        for f in world.species["frogs"]:
            assert not any(
                abs(math.log(f.freq_hz / o.freq_hz)) < 0.2 and abs(math.log(f.pulse_hz / o.pulse_hz)) < 0.4
                for o in FROGS
            )
        assert {b.name for b in BIRDS}.isdisjoint(b.name for b in world.species["birds"])


def test_simulated_worlds_are_files_and_labels_fixed_by_the_seed(tmp_path):
    a = simulate_worlds(tmp_path / "a", worlds=2, sites_per_world=2, recordings_per_site=2, duration_s=2, workers=1)
    b = simulate_worlds(tmp_path / "b", worlds=2, sites_per_world=2, recordings_per_site=2, duration_s=2, workers=1)
    rows = pd.read_csv(a)
    assert len(rows) >= 6 and rows["world"].nunique() == 2  # a quarter-hour drawn twice at a site is one file
    assert all((tmp_path / "a" / p).is_file() for p in rows["path"])
    assert rows.equals(pd.read_csv(b))
    first = rows["path"].iloc[0]
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()
    # worlds differ in their recorders (a response drawn per world)
    assert rows.groupby("world")["recorder_model"].first().nunique() == 2


def test_corpus_links_what_may_ship_and_names_what_may_not(tmp_path):
    src = tmp_path / "source"
    for name in ("mit/a.wav", "gpl/b.wav"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"RIFF")
    with (src / "MANIFEST.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows(
            [
                ["path", "license", "duration_s"],
                ["mit/a.wav", "MIT", "60"],
                ["gpl/b.wav", "GPL-3 (a package)", "30"],
                ["mit/gone.wav", "MIT", "10"],
            ]
        )
    info = build_corpus(
        tmp_path / "corpus", real=[src], worlds=1, sites_per_world=1, recordings_per_site=1, duration_s=2
    )
    link = tmp_path / "corpus" / "real" / "source" / "mit" / "a.wav"
    assert link.is_symlink() and link.resolve() == (src / "mit" / "a.wav").resolve()  # linked, never copied
    assert not (tmp_path / "corpus" / "real" / "source" / "gpl").exists()
    assert info["real"] == [{"source": "source/mit", "files": 1, "minutes": 1.0, "licences": ["MIT"]}]
    why = {Path(x["path"]).name: x["why"] for x in info["left_out"]}
    assert "GPL-3" in why["b.wav"] and "not on disk" in why["gone.wav"]
    assert info["simulated"]["recordings"] == 1
    assert json.loads((tmp_path / "corpus" / "corpus.json").read_text()) == info


# --------------------------------------------------------------------------- the recipe's parts


def test_augmentations_are_what_they_say():
    torch.manual_seed(0)
    x = torch.randn(16, 1, 384, 64) - 8
    none = augment(x, TrainConfig())
    assert torch.equal(none, x)
    gain = augment(x, TrainConfig(gain_db=6.0)) - x  # a gain is one shift per window, within 6 dB
    per_window = gain.flatten(1)
    assert torch.allclose(per_window, per_window[:, :1].expand_as(per_window), atol=1e-5)
    assert per_window.abs().max() <= 6.0 * NATS_PER_DB + 1e-6 and per_window[:, 0].std() > 0
    response = augment(x, TrainConfig(response_db=3.0)) - x  # the same curve over the bands at every moment
    assert torch.allclose(response, response[:, :, :1, :].expand_as(response), atol=1e-5)
    curve = response[:, 0, 0, :]
    assert curve.diff(dim=1).abs().max() < 0.1 * curve.abs().max()  # smooth across neighbouring bands
    mixed = augment(x, TrainConfig(mix_chance=0.5))
    changed = (mixed != x).flatten(1).any(1)
    assert 0 < changed.sum() < 16 and (mixed >= x - 1e-5).all()  # two sounds together are never quieter


def test_learning_rate_warms_up_then_decays_to_zero():
    cfg = TrainConfig(max_steps=1000, warmup_steps=100)
    f = [learning_rate_factor(s, cfg) for s in range(1001)]
    assert f[0] == pytest.approx(0.01) and f[99] == pytest.approx(1.0) and f[100] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:100], f[1:100], strict=False))
    assert all(a >= b for a, b in zip(f[100:], f[101:], strict=False)) and f[1000] == pytest.approx(0.0)
    assert learning_rate_factor(0, replace(cfg, warmup_steps=0)) == 1.0
    with pytest.raises(ValueError, match="ema_decay"):
        train_preset("tiny", ema_decay=1.0)


@pytest.mark.slow
def test_moving_average_is_what_is_saved_and_every_checkpoint_kept(tmp_path, shared_data):
    """With ema_decay, a checkpoint's weights (and model.safetensors) are the average, not the last step's; with
    keep_weights every checkpoint's weights stay, with the training time to it."""
    from safetensors.torch import load_file

    tcfg = train_preset(
        "tiny", max_steps=20, checkpoint_every=10, val_every=10, ema_decay=0.9, keep_weights=True, gain_db=3.0
    )
    train(shared_data / "behaviour_soundscapes", tmp_path / "run", tcfg, progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "step20.ckpt", map_location="cpu", weights_only=True)
    average, current = ckpt["state_dict"], ckpt["current_model_state"]
    key = next(k for k in average if k.endswith("weight") and average[k].dim() == 4)
    assert not torch.equal(average[key], current[key])
    kept = load_file(str(tmp_path / "run" / "weights" / "step0000020.safetensors"))
    assert torch.equal(kept[key.removeprefix("model.")], average[key])
    times = [json.loads(p.read_text()) for p in sorted((tmp_path / "run" / "weights").glob("*.json"))]
    assert [t["step"] for t in times] == [10, 20] and 0 < times[0]["seconds"] <= times[1]["seconds"]


# --------------------------------------------------------------------------- the shipped model


def test_shipped_model_loads_from_the_package_with_its_card():
    folder = pretrained_dir()
    assert resolve_model("pretrained") == folder and resolve_model("runs/x") == Path("runs/x")
    model, spec = load_model(folder)
    card = model_card()
    assert weights_digest(folder) == card["weights_digest"]  # the bytes shipped are the bytes described
    assert card["preset"] == json.loads((folder / "config.json").read_text())["train"]["preset"]
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 20e6
    # no path of the machine it was trained on
    for name in ("config.json", "run.json", CARD_JSON):
        assert "/work/" not in (folder / name).read_text() and "/home/" not in (folder / name).read_text()
    assert card["corpus"]["real_minutes"] > 0 and card["corpus"]["simulated"]["minutes"] > 0
    assert all("GPL" not in licence for s in card["corpus"]["real"] for licence in s["licences"])
    assert model.cfg.latent_dim == card["train"].get("latent_dim", model.cfg.latent_dim)
    assert spec.sample_rate == 48_000


@pytest.mark.slow
def test_encode_with_the_pretrained_model_twice_gives_the_same_latents(shared_data, tmp_path):
    recordings = shared_data / "behaviour_soundscapes"
    outs = []
    for name in ("a.parquet", "b.parquet"):
        result = runner.invoke(
            app, ["encode", str(recordings), "--model", "pretrained", "--out", str(tmp_path / name), "--quiet"]
        )
        assert result.exit_code == 0, result.output
        outs.append(pd.read_parquet(tmp_path / name))
    a, b = outs
    mu = [c for c in a.columns if c.startswith("mu_")]
    assert len(a) > 0 and np.array_equal(a[mu].to_numpy(), b[mu].to_numpy())
    import pyarrow.parquet as pq

    meta = pq.read_schema(tmp_path / "a.parquet").metadata
    assert weights_digest(pretrained_dir()).encode() in b"".join(meta.values())


@pytest.mark.slow
def test_fine_tuning_starts_from_the_shipped_weights_and_says_so(shared_data, tmp_path):
    recordings, out = shared_data / "behaviour_soundscapes", tmp_path / "run"
    result = runner.invoke(
        app, ["train", str(recordings), "--init", "pretrained", "--max-steps", "3", "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "fine-tuning" in result.output
    parent = json.loads((out / "run.json").read_text())["parent"]
    assert parent["weights_digest"] == weights_digest(pretrained_dir())
    assert json.loads((out / "config.json").read_text())["parent"] == parent
    tuned, _ = load_model(out)
    shipped, _ = load_model(pretrained_dir())
    assert tuned.cfg == shipped.cfg  # the shipped model's own settings
    # its input normalisation kept (the features were learnt on it); its weights moved
    assert torch.allclose(tuned.input_mean, shipped.input_mean, atol=1e-5)
    changed = [not torch.equal(a, b) for a, b in zip(tuned.parameters(), shipped.parameters(), strict=True)]
    assert any(changed)
    # resumed, it goes on and keeps its parent
    result = runner.invoke(
        app, ["train", str(recordings), "--resume", "--max-steps", "5", "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["global_step"] == 5 and manifest["parent"] == parent
    # a preset that is not the shipped one cannot start from it
    result = runner.invoke(
        app, ["train", str(recordings), "--init", "pretrained", "--preset", "full", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "cannot start from it" in result.output


@pytest.mark.slow
def test_run_with_the_pretrained_model_as_it_is_trains_nothing(tmp_path):
    """`ecovae run --model pretrained`: the whole pipeline on the shipped weights; no run folder is made and the
    report says which model it used."""
    from ecovae.simulate import simulate_survey

    survey, out = tmp_path / "survey", tmp_path / "o"
    simulate_survey(survey, n_sites=2, hours=(0, 6, 12, 18), days=1, duration_s=6.0, seed=5)
    args = ["run", str(survey), "--target", "site", "--out", str(out), "--baselines", "", "--quiet"]
    result = runner.invoke(app, [*args, "--model", "pretrained"])
    assert result.exit_code == 0, result.output
    assert "[model]" in result.output and "[train]" not in result.output and not (out / "run").exists()
    html = (out / "report.html").read_text()
    assert "The model that ships with ecovae, used as it is" in html
    import pyarrow.parquet as pq

    meta = b"".join(pq.read_schema(out / "latents.parquet").metadata.values())
    assert weights_digest(pretrained_dir()).encode() in meta
    both = runner.invoke(app, [*args, "--model", "pretrained", "--init", "pretrained"])
    assert both.exit_code == 2 and "give one of them" in both.output
