"""The log-mel cache that training reads: computed once, equal to the spectrogram, invalidated by changes."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch

from ecovae.logmel_cache import cache_survey, settings_folder
from ecovae.spectrogram import SpectrogramConfig
from ecovae.survey import open_survey
from ecovae.train import LoadedRecording, WindowDataset, input_statistics

from .conftest import write_tone


def _survey(root: Path) -> Path:
    for i in range(4):
        write_tone(
            root / f"site{i % 2}" / f"r{i}" / f"2024050{i + 1}_060000.WAV", 3.0 + 2 * i, freq=800 + 900 * i, seed=i
        )
    (root / "site0" / "r0" / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    return root


def _entries(folder: Path) -> list[str]:
    return [e["relpath"] for meta in folder.glob("shard-*.json") for e in json.loads(meta.read_text())["recordings"]]


def test_the_cache_holds_exactly_the_spectrogram_and_is_computed_once(tmp_path):
    root, cache = _survey(tmp_path / "survey"), tmp_path / "cache"
    survey = open_survey(root)
    cached = cache_survey(survey, cache)
    assert "site0/r0/broken.wav" in survey.skipped
    reference = {rec.relpath: (rec, clips) for rec, clips in open_survey(root).recordings()}
    assert [r.relpath for r in cached] == list(reference)
    for r in cached:
        rec, clips = reference[r.relpath]
        assert r.labels == rec.labels and r.seconds == rec.duration_s
        assert [c.shape for c in r.clips] == [tuple(c.logmel.shape) for c in clips]
        for cc, c in zip(r.clips, clips, strict=True):
            torch.testing.assert_close(cc[0 : cc.hops], c.logmel, rtol=0, atol=0)
            torch.testing.assert_close(cc[192:384], c.logmel[192:384], rtol=0, atol=0)
    # the normalisation from the stored sums equals the one from the tensors
    loaded = [LoadedRecording(r.relpath, r.labels, [c.logmel for c in reference[r.relpath][1]]) for r in cached]
    for a, b in zip(input_statistics(cached), input_statistics(loaded), strict=True):
        torch.testing.assert_close(a, b)
    # windows read from disk are the windows from memory
    disk, memory = WindowDataset(cached, 2, 192), WindowDataset(loaded, 2, 192)
    assert disk.lengths == memory.lengths
    for i in range(len(disk)):
        assert torch.equal(disk[i], memory[i])

    folder = settings_folder(cache, SpectrogramConfig())
    shards = sorted(p.stat().st_mtime_ns for p in folder.glob("shard-*"))
    again = open_survey(root)
    assert [r.relpath for r in cache_survey(again, cache)] == [r.relpath for r in cached]
    assert sorted(p.stat().st_mtime_ns for p in folder.glob("shard-*")) == shards  # nothing computed again
    assert "site0/r0/broken.wav" in again.skipped  # a bad file is tried, and reported, every time
    assert sorted(_entries(folder)) == sorted(r.relpath for r in cached)


def test_a_changed_recording_is_computed_again_and_other_settings_use_another_folder(tmp_path):
    root, cache = _survey(tmp_path / "survey"), tmp_path / "cache"
    before = {r.relpath: r for r in cache_survey(open_survey(root), cache)}
    rel = "site1/r1/20240502_060000.WAV"
    write_tone(root / rel, 9.0, freq=4000, seed=9)  # rewritten: new size, new time
    os.utime(root / rel, ns=(10**18, 10**18))
    after = {r.relpath: r for r in cache_survey(open_survey(root), cache)}
    assert after[rel].n_frames == int(9.0 // SpectrogramConfig().frame_seconds) != before[rel].n_frames
    assert after[rel].seconds == 9.0
    expected = next(clips for rec, clips in open_survey(root).recordings([rel]))[0].logmel
    assert torch.equal(after[rel].clips[0][0 : expected.shape[0]], expected)
    other = SpectrogramConfig(n_mels=32)
    assert settings_folder(cache, other) != settings_folder(cache, SpectrogramConfig())
    narrow = cache_survey(open_survey(root, spec=other), cache)
    assert narrow[0].clips[0].shape[1] == 32


def _fill(root: str, cache: str) -> None:
    cache_survey(open_survey(root), cache)


def test_processes_sharing_a_cache_compute_each_recording_once(tmp_path):
    root, cache = _survey(tmp_path / "survey"), tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_fill, args=(str(root), str(cache))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    entries = _entries(settings_folder(cache, SpectrogramConfig()))
    assert sorted(entries) == sorted(set(entries)) and len(entries) == 4
    values = [c[0:192].numpy() for r in cache_survey(open_survey(root), cache) for c in r.clips]
    assert all(np.isfinite(v).all() for v in values)


def test_a_process_never_holds_more_shards_open_than_its_limit(tmp_path, monkeypatch):
    from ecovae import logmel_cache

    monkeypatch.setattr(logmel_cache, "SHARD_BYTES", 1)  # every recording its own shard
    monkeypatch.setattr(logmel_cache, "MAX_OPEN_SHARDS", 2)
    root, cache = _survey(tmp_path / "survey"), tmp_path / "cache"
    cached = cache_survey(open_survey(root), cache)
    assert len({c.file for r in cached for c in r.clips}) == 4
    for _ in range(2):  # read every shard twice over: descriptors are reused or closed, never piled up
        for r in cached:
            assert r.clips[0][0:192].shape == (192, 64)
    assert len(logmel_cache._FDS) == 2
    opened = len(os.listdir("/proc/self/fd"))
    for r in cached:
        r.clips[0][0:192]
    assert len(os.listdir("/proc/self/fd")) == opened
