"""Exploring a survey by ear and eye (ecovae explore): the explorer's answers on real encoded audio, the labels
file it appends to, the audio endpoint's refusals, and the page itself driven in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from ecovae.cli import app
from ecovae.encode import encode
from ecovae.excerpts import CONTEXT_S
from ecovae.explore import KMEANS, TIME_OF_DAY, open_explorer
from ecovae.latents import add_labels, append_frame_labels, read_frame_labels, read_latents
from ecovae.pretrained import pretrained_dir
from ecovae.simulate import simulate_survey
from tests.conftest import chromium

runner = CliRunner()


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """Two sites, three times of day, 6 s each: 18 frames of real audio, encoded by the shipped model."""
    root = tmp_path_factory.mktemp("explore")
    folder = root / "survey"
    simulate_survey(folder, n_sites=2, recorders_per_site=1, hours=(0.0, 8.0, 16.0), duration_s=6.0, seed=3)
    latents = root / "latents.parquet"
    encode(folder, pretrained_dir(), latents, progress=False, precision="fp32")
    return folder, latents


def _keys(frames: pd.DataFrame, rows) -> pd.DataFrame:
    return frames.iloc[list(rows)][["path", "frame_in_recording"]]


# --------------------------------------------------------------------------- the labels file


def test_saving_appends_and_keeps_what_was_saved_before(tmp_path, survey):
    _, latents = survey
    frames = read_latents(latents)
    labels = tmp_path / "sounds.csv"
    assert append_frame_labels(labels, _keys(frames, [0, 1, 2]), column="sound", value="rain") == 3
    before = labels.read_bytes()
    append_frame_labels(labels, _keys(frames, [2, 3]), column="sound", value='wind, "gusty"')
    assert labels.read_bytes().startswith(before)  # appended, never rewritten
    table = read_frame_labels(labels)
    assert len(table) == 4  # frame 2 named twice: the later name wins
    named = dict(
        zip(
            table["frame_in_recording"].astype(int) + 100 * (table["path"] != frames["path"][0]),
            table["sound"],
            strict=True,
        )
    )
    assert named[2] == 'wind, "gusty"' and named[0] == "rain"
    with labels.open("ab") as f:  # a row left unfinished (by hand, or a write cut short)
        f.write(b"x.wav,9,unfin")
    append_frame_labels(labels, _keys(frames, [4]), column="sound", value="frog")
    assert read_frame_labels(labels)["sound"].tolist()[-1] == "frog"  # on its own row
    with pytest.raises(ValueError, match=f"{labels.name}.*not.*'habitat'"):
        append_frame_labels(labels, _keys(frames, [5]), column="habitat", value="x")


def test_frame_labels_join_the_latents_and_every_analysis_takes_them(tmp_path, survey):
    folder, latents = survey
    frames = read_latents(latents)
    labels = tmp_path / "sounds.csv"
    paths = sorted(frames["path"].unique())
    # two classes, each on frames of several recordings: what a user names in the explorer
    first = frames.index[frames["path"].isin(paths[: len(paths) // 2])]
    second = frames.index[frames["path"].isin(paths[len(paths) // 2 :])]
    append_frame_labels(labels, _keys(frames, first), column="sound", value="quiet")
    append_frame_labels(labels, _keys(frames, second), column="sound", value="busy")
    joined = add_labels(frames, labels)
    assert joined["sound"].notna().all() and set(joined["sound"]) == {"quiet", "busy"}
    assert len(joined) == len(frames) and joined["site"].equals(frames["site"])

    out = tmp_path / "eval"
    args = ["evaluate", str(latents), "--target", "sound", "--unit", "frame", "--labels", str(labels)]
    result = runner.invoke(app, [*args, "--out", str(out), "--baselines", "", "--folds", "2"])
    assert result.exit_code == 0, result.output
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) > 0 and metrics["balanced_accuracy"].between(0, 1).all()
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["n_units"] == len(frames)

    described = tmp_path / "described.parquet"
    args = ["describe", str(latents), "--out", str(described), "--unit", "sound", "--labels", str(labels)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(pd.read_parquet(described)["unit"]) == ["busy", "quiet"]

    novelty = tmp_path / "novelty"
    args = ["novelty", str(latents), "--recordings", str(folder), "--out", str(novelty), "--labels", str(labels)]
    result = runner.invoke(app, [*args, "--top", "3", "--features", "vae"])
    assert result.exit_code == 0, result.output
    assert set(pd.read_parquet(novelty / "novelty.parquet")["sound"]) == {"quiet", "busy"}


# --------------------------------------------------------------------------- the explorer


def test_the_explorer_plays_shows_and_decodes_any_frame(tmp_path, survey):
    folder, latents = survey
    ex = open_explorer(latents, model=pretrained_dir(), recordings=folder, labels=tmp_path / "l.csv", method="pca")
    frames = read_latents(latents)
    assert ex.n_points == len(frames) and np.isfinite(ex.xy).all()
    later = int(np.flatnonzero(frames["frame_in_recording"].to_numpy() == 2)[0])
    audio, rate = sf.read(io.BytesIO(ex.excerpt(later)))
    expected = min(frames["frame_offset_s"][later] + ex.spec.frame_seconds + CONTEXT_S, 6.0) - (
        frames["frame_offset_s"][later] - CONTEXT_S
    )
    assert abs(len(audio) / rate - expected) < 0.01 and np.abs(audio).max() > 0
    shown = ex.spectrograms(later)
    assert shown["logmel"].shape[1] == 64 and shown["logmel"].shape[0] > ex.spec.frame_hops
    assert shown["reconstruction"].shape == (ex.spec.frame_hops, 64)
    assert shown["frame_s"][0] == pytest.approx(CONTEXT_S)
    for foreign in ("../../etc/passwd", "/etc/passwd", str(folder / frames["path"][0])):
        with pytest.raises(PermissionError, match="not a recording of this survey"):
            ex.excerpt_at(foreign, 0.0)

    rows = np.flatnonzero(frames["site"].to_numpy() == "site1")
    mean = ex.decode(ex.mu[rows])
    assert mean.shape == (ex.spec.frame_hops, 64) and np.isfinite(mean).all()
    assert not np.allclose(mean, ex.decode(ex.mu[np.flatnonzero(frames["site"].to_numpy() == "site2")]))
    sound, count = ex.playlist(rows)
    played, rate = sf.read(io.BytesIO(sound))
    assert count == len(rows) and len(played) / rate > count * ex.spec.frame_seconds
    makeup = ex.makeup(rows, "site")
    assert makeup["value"].tolist() == ["site1"] and makeup["selection"].tolist() == [1.0]
    assert makeup["survey"].iloc[0] == pytest.approx(len(rows) / len(frames))
    hours = ex.makeup(rows, "hour")
    assert hours["selection"].sum() == pytest.approx(1.0) and set(hours["value"]) == {"00h", "08h", "16h"}
    when = ex.diel(rows)
    assert sorted(set(when["hour"].astype(int))) == [0, 8, 16] and set(when["group"]) == {"site1"}


def test_the_map_is_coloured_by_labels_time_novelty_and_clusters(tmp_path, survey):
    folder, latents = survey
    novelty = tmp_path / "novelty"
    args = ["novelty", str(latents), "--recordings", str(folder), "--out", str(novelty), "--top", "3"]
    assert runner.invoke(app, [*args, "--features", "vae"]).exit_code == 0
    ex = open_explorer(latents, recordings=folder, novelty=novelty, labels=tmp_path / "l.csv", method="pca")
    choices = ex.colour_choices()
    assert {"site", TIME_OF_DAY, "date", "novelty", KMEANS, "HDBSCAN"} <= set(choices)
    site = ex.colour("site")
    assert site.names == ["site1", "site2"] and set(site.values) == {0.0, 1.0}
    hours = ex.colour(TIME_OF_DAY)
    assert hours.cyclic and set(np.round(hours.values)) == {0.0, 8.0, 16.0}
    scores = ex.colour("novelty").values
    assert np.isfinite(scores).sum() > 0
    clusters = ex.colour(KMEANS, k=3)
    assert len(clusters.names) == 3 and set(clusters.values) == {0.0, 1.0, 2.0}
    with pytest.raises(ValueError, match="cannot colour by 'nothing'"):
        ex.colour("nothing")


def test_units_are_points_and_names_reach_every_frame_of_them(tmp_path, survey):
    folder, latents = survey
    labels = tmp_path / "units.csv"
    ex = open_explorer(latents, recordings=folder, unit="site", labels=labels, column="kind", method="pca")
    frames = read_latents(latents)
    assert ex.n_points == 2 and sorted(ex.unit_names) == ["site1", "site2"]
    assert sorted(np.concatenate([ex.rows([0]), ex.rows([1])])) == list(range(len(frames)))
    first = ex.representative(0)
    assert first in set(ex.rows([0]))
    assert ex.save(ex.rows([0]), " <b>dawn</b> ") == len(ex.rows([0]))
    assert "kind" in ex.colour_choices() and ex.colour("kind").names == ["<b>dawn</b>"]
    again = open_explorer(latents, recordings=folder, labels=labels, method="pca")  # its column from the file
    assert again.column == "kind" and again.frames["kind"].notna().sum() == len(ex.rows([0]))
    with pytest.raises(ValueError, match="names its frames' 'kind', not 'sound'"):
        open_explorer(latents, recordings=folder, labels=labels, column="sound", method="pca")


# --------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(latents: Path, *args: str):
    """``ecovae explore`` in its own process until the block ends; yields its address and the process."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    command = [sys.executable, "-m", "ecovae", "explore", str(latents), "--no-open", "--port", str(port), *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        started = time.monotonic()
        while True:
            line = proc.stdout.readline()
            if "ecovae explore: http://127.0.0.1:" in line:
                break
            if (not line and proc.poll() is not None) or time.monotonic() - started > 300:
                raise AssertionError(f"the explorer did not start: {line}{proc.stdout.read()}")
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_the_audio_endpoint_serves_only_the_surveys_frames(tmp_path, survey):
    folder, latents = survey
    frames = read_latents(latents)
    with serving(latents, "--recordings", str(folder), "--method", "pca", "--labels", str(tmp_path / "l.csv")) as (
        url,
        _,
    ):
        status, kind, body = _get(f"{url}/audio?frame=3")
        assert status == 200 and kind == "audio/wav" and sf.info(io.BytesIO(body)).duration > 1.5
        own = urllib.request.quote(frames["path"][0])
        assert _get(f"{url}/audio?path={own}&offset=1.5")[0] == 200
        for foreign in ("../../etc/passwd", "/etc/passwd", urllib.request.quote(str(folder / frames["path"][0]))):
            status, kind, body = _get(f"{url}/audio?path={foreign}&offset=0")
            assert status == 403 and b"not a recording of this survey" in body and b"Traceback" not in body
        for bad, expected in [("frame=abc", 400), ("frame=1&path=x", 400), ("", 400), ("frame=99999", 404)]:
            status, kind, body = _get(f"{url}/audio?{bad}")
            assert status == expected and kind.startswith("text/plain") and b"Traceback" not in body, (bad, body)
        assert _get(f"{url}/audio?clip=not-a-clip")[0] == 404


# --------------------------------------------------------------------------- the page, in a browser

DEEP = """function all(root, sel, out = []) {
  root.querySelectorAll(sel).forEach(e => out.push(e));
  root.querySelectorAll('*').forEach(e => { if (e.shadowRoot) all(e.shadowRoot, sel, out); });
  return out;
}
"""
MAP_VIEW = """function find(v) {
  if (v.model.name === 'map') return v;
  for (const c of (v.child_views || [])) { const r = find(c); if (r) return r; }
  return null;
}
let view = null;
for (const v of Object.values(Bokeh.index)) view = view || find(v);
"""


def _model(browser, name: str, expr: str):
    return browser.execute_script(f"const m = Bokeh.documents[0].get_model_by_name('{name}'); return {expr};")


def _on_screen(browser, x: float, y: float) -> tuple[int, int]:
    """Where a point of the map is in the window (CSS pixels)."""
    px, py = browser.execute_script(
        MAP_VIEW + "const r = view.canvas_view.el.getBoundingClientRect();"
        "return [r.left + view.frame.x_scale.compute(arguments[0]), r.top + view.frame.y_scale.compute(arguments[1])];",
        x,
        y,
    )
    return round(px), round(py)


def _wait(condition, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the page")


def _drag(browser, start: tuple[int, int], end: tuple[int, int]) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(browser)
    actions.pointer_action.move_to_location(*start).pointer_down()
    for k in range(1, 11):
        actions.pointer_action.move_to_location(
            start[0] + (end[0] - start[0]) * k // 10, start[1] + (end[1] - start[1]) * k // 10
        )
    actions.pointer_action.pointer_up()
    actions.perform()


@pytest.mark.slow
def test_the_page_plays_selects_and_names_in_a_real_browser(quickstart, tmp_path):
    out, result = quickstart
    assert result.exit_code == 0, result.output
    latents, labels = out / "latents.parquet", tmp_path / "named.csv"
    frames = read_latents(latents)
    args = ["--model", str(out / "run"), "--novelty", str(out / "eval" / "novelty"), "--method", "pca"]
    with serving(latents, *args, "--labels", str(labels)) as (url, server):
        browser = chromium("--window-size=1700,1000", "--autoplay-policy=no-user-gesture-required")
        try:
            browser.get(url)
            _wait(lambda: browser.execute_script("return !!window.Bokeh && Bokeh.documents.length > 0"))
            _wait(lambda: browser.execute_script("return Bokeh.documents[0].is_idle"))
            assert _model(browser, "map_points", "m.data.x.length") == len(frames)
            assert browser.execute_script(MAP_VIEW + "return view.canvas_view.webgl != null")  # drawn with WebGL
            xy = np.array(_model(browser, "map_points", "[Array.from(m.data.x), Array.from(m.data.y)]")).T

            # click a point: its sound plays, its spectrogram and reconstruction show
            point = int(np.argmin(xy[:, 0]))
            from selenium.webdriver.common.action_chains import ActionChains
            from selenium.webdriver.common.actions.action_builder import ActionBuilder

            click = ActionBuilder(browser)
            click.pointer_action.move_to_location(*_on_screen(browser, *xy[point])).click()
            click.perform()
            playing = (
                DEEP
                + """const a = all(document, '.ecovae-frame audio')[0];
                return a && a.duration > 0 && !a.paused ? [a.getAttribute('src'), a.duration, a.currentTime] : null;"""
            )
            audio = _wait(lambda: browser.execute_script(playing))
            assert audio[0].startswith("/audio?frame=") and audio[1] > 1.5, audio  # playing, and longer than a frame
            assert _wait(lambda: _model(browser, "logmel_image", "m.data.image.length")) == 1
            assert _model(browser, "reconstruction_image", "m.data.image.length") == 1
            ActionChains(browser).reset_actions()

            # a box around the left and then the right of the map: each lists its frames; name them
            names = ["<b>left</b> & co", "right"]
            for side, name in zip(
                (xy[:, 0] < np.median(xy[:, 0]), xy[:, 0] >= np.median(xy[:, 0])), names, strict=True
            ):
                inside = xy[side]
                low = _on_screen(browser, inside[:, 0].min(), inside[:, 1].max())
                high = _on_screen(browser, inside[:, 0].max(), inside[:, 1].min())
                _drag(browser, (low[0] - 4, low[1] - 4), (high[0] + 4, high[1] + 4))
                selected = _wait(lambda: _model(browser, "map_points", "m.selected.indices.length"))
                listed = _wait(lambda n=selected: _model(browser, "selection", "m.data.path.length") == n and n)
                assert listed >= side.sum()  # every frame on that side, and any other the box crossed
                field = browser.execute_script(
                    DEEP + "return all(document, 'input').filter(i => "
                    "i.getRootNode().textContent.includes('Name this selection'))[0]"
                )
                field.clear()
                field.send_keys(name)
                browser.execute_script(
                    DEEP + "all(document, 'button').filter(b => b.textContent.includes('Save label'))[0].click()"
                )
                _wait(lambda n=name: labels.is_file() and n in labels.read_text())
                said = browser.execute_script(DEEP + "return all(document, '.bk-clearfix, div').map(d => d.innerHTML)")
                assert not any("<b>left</b>" in html for html in said)  # shown as text, never as markup
            assert browser.execute_script(DEEP + "return all(document, 'b').length") == 0
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []
        finally:
            browser.quit()
        server.kill()  # saved is saved: nothing waits for a clean stop
    named = read_frame_labels(labels)
    assert set(named["sound"]) == set(names) and len(named) >= len(frames) // 2
    evaluated = tmp_path / "eval"
    args = ["evaluate", str(latents), "--labels", str(labels), "--target", "sound", "--unit", "frame"]
    result = runner.invoke(app, [*args, "--out", str(evaluated), "--baselines", "logmel", "--folds", "2"])
    assert result.exit_code == 0, result.output
    assert set(pd.read_csv(evaluated / "metrics.csv")["features"]) >= {"vae", "logmel"}
