"""The page of ``ecovae explore``: a Bokeh server application over an :class:`ecovae.explore.Explorer`.

Bokeh draws the map with WebGL and owns every widget (selection tools, tables, tabs); the callbacks here only
move the explorer's answers into Bokeh's sources. Audio goes through one HTTP endpoint, ``/audio``, which
takes a frame's number (or a file the latents name, with a time) and never a path on disk: any other file is
refused (403), a malformed request gets a 400 naming what is wrong, and nothing a user typed reaches the page
without being escaped.
"""

from __future__ import annotations

import html
import logging
import secrets
from collections import OrderedDict
from functools import partial

import numpy as np
from bokeh.events import Tap
from bokeh.layouts import column, row
from bokeh.models import (
    BoxAnnotation,
    Button,
    ColorBar,
    ColumnDataSource,
    CustomJSHover,
    DataTable,
    Div,
    FactorRange,
    FixedTicker,
    HoverTool,
    LinearColorMapper,
    Range1d,
    Select,
    Spinner,
    TableColumn,
    TabPanel,
    Tabs,
    TextInput,
)
from bokeh.palettes import Category10, Category20, Inferno256, Viridis256
from bokeh.plotting import figure
from tornado.web import RequestHandler

from ecovae.audio import BadAudio
from ecovae.explore import KMEANS, Explorer

log = logging.getLogger(__name__)

CLIPS_KEPT = 64  # playlists and decoded means held for the page to fetch, newest kept
MAP_SIZE = (780, 660)
TAP_PIXELS = 12  # a click plays the nearest point within this many pixels


def _twilight() -> list[str]:
    """A cyclic palette (matplotlib's twilight) for the time of day: midnight meets midnight."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["twilight_shifted"]
    return [to_hex(cmap(i / 255)) for i in range(256)]


def _categorical(n: int) -> list[str]:
    if n <= 10:
        return list(Category10[10][: max(n, 3)])
    return [Category20[20][i % 20] for i in range(n)]


class Clips:
    """Audio made for one page and fetched by it once: a bounded store, keyed by unguessable tokens."""

    def __init__(self) -> None:
        self._clips: OrderedDict[str, bytes] = OrderedDict()

    def put(self, data: bytes) -> str:
        token = secrets.token_urlsafe(12)
        self._clips[token] = data
        while len(self._clips) > CLIPS_KEPT:
            self._clips.popitem(last=False)
        return token

    def get(self, token: str) -> bytes | None:
        return self._clips.get(token)


class AudioHandler(RequestHandler):
    """``/audio?frame=N``: frame N with its context; ``/audio?path=P&offset=S``: P must be a file of the
    survey; ``/audio?clip=T``: a playlist or decoded mean the page was given."""

    def initialize(self, explorer: Explorer, clips: Clips) -> None:
        self.explorer, self.clips = explorer, clips

    def get(self) -> None:
        given = set(self.request.arguments)
        try:
            if given == {"frame"}:
                row = int(self.get_argument("frame"))
                if not 0 <= row < len(self.explorer.frames):
                    return self._refuse(404, f"no frame {row}: the survey has {len(self.explorer.frames)}")
                data = self.explorer.excerpt(row)
            elif given == {"path", "offset"}:
                data = self.explorer.excerpt_at(self.get_argument("path"), float(self.get_argument("offset")))
            elif given == {"clip"}:
                data = self.clips.get(self.get_argument("clip"))
                if data is None:
                    return self._refuse(404, "no such clip (it may have been replaced by newer ones)")
            else:
                return self._refuse(400, "ask for ?frame=N, ?path=P&offset=S or ?clip=T")
        except PermissionError as e:
            return self._refuse(403, str(e))
        except ValueError:
            return self._refuse(400, "frame must be a whole number and offset a number of seconds")
        except LookupError as e:
            return self._refuse(404, str(e))
        except BadAudio as e:
            return self._refuse(410, f"cannot read it now: {e}")
        self.set_header("Content-Type", "audio/wav")
        self.set_header("Cache-Control", "no-store")
        self.finish(data)

    def _refuse(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message + "\n")

    def write_error(self, status_code: int, **kwargs) -> None:  # never a traceback, whatever went wrong
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code}: {self._reason}\n")


def _audio_tag(src: str, caption: str, name: str) -> str:
    return (
        f'<div class="ecovae-{name}">{html.escape(caption)}<br>'
        f'<audio controls autoplay preload="auto" src="{html.escape(src)}"></audio></div>'
    )


def _image_figure(title: str, name: str, width: int = 380) -> tuple:
    """A figure showing one spectrogram (time x mel band) and its source."""
    source = ColumnDataSource({"image": [], "dw": [], "dh": []}, name=f"{name}_image")
    fig = figure(
        title=title,
        width=width,
        height=200,
        name=name,
        tools="",
        toolbar_location=None,
        x_range=(0, 4.5),
        y_range=(0, 64),
    )
    fig.image("image", x=0, y=0, dw="dw", dh="dh", source=source, palette=Inferno256)
    fig.xaxis.axis_label, fig.yaxis.axis_label = "s", "mel band"
    return fig, source


def _show_image(fig, source: ColumnDataSource, logmel: np.ndarray | None, seconds: float) -> None:
    if logmel is None:
        source.data = {"image": [], "dw": [], "dh": []}
        return
    source.data = {"image": [np.ascontiguousarray(logmel.T)], "dw": [seconds], "dh": [logmel.shape[1]]}
    fig.x_range.end, fig.y_range.end = seconds, logmel.shape[1]


def _padded(values: np.ndarray) -> tuple[float, float]:
    """A map axis's range: its points' with 5% to spare either side."""
    spare = 0.05 * (float(np.ptp(values)) or 1.0)
    return float(values.min()) - spare, float(values.max()) + spare


def build_document(doc, *, explorer: Explorer, clips: Clips) -> None:  # noqa: PLR0915
    """One page: the map on the left, what was clicked or selected on the right."""
    ex = explorer
    n = ex.n_points
    hover = ex.hover_codes()
    data = {"x": ex.xy[:, 0], "y": ex.xy[:, 1], "c": np.zeros(n, np.float32), "t": ex.point_times_ms()}
    data |= {f"h{i}": codes for i, (codes, _) in enumerate(hover.values())}
    points = ColumnDataSource(data, name="map_points")

    x_range, y_range = Range1d(*_padded(ex.xy[:, 0])), Range1d(*_padded(ex.xy[:, 1]))
    kind = "unit" if ex.units is not None else "frame"
    fig = figure(
        width=MAP_SIZE[0],
        height=MAP_SIZE[1],
        x_range=x_range,
        y_range=y_range,
        output_backend="webgl",
        tools="pan,wheel_zoom,box_select,lasso_select,reset,save",
        active_drag="box_select",
        active_scroll="wheel_zoom",
        toolbar_location="right",
        name="map",
        min_border=0,
    )
    fig.axis.visible = False
    fig.grid.visible = False
    mapper = LinearColorMapper(palette=Viridis256, low=0, high=1, nan_color="#bbbbbb")
    size = float(np.clip(9 - 1.2 * np.log10(max(n, 10)), 2, 7))  # smaller points for more of them
    dots = fig.scatter(
        "x", "y", source=points, size=size, line_color=None, fill_alpha=0.75, color={"field": "c", "transform": mapper}
    )
    tooltips = [(name, f"@h{i}{{custom}}") for i, name in enumerate(hover)]
    if np.isfinite(data["t"]).any():
        tooltips.insert(1, ("time", "@t{%F %T}"))
    formatters = {"@t": "datetime"} | {
        f"@h{i}": CustomJSHover(args={"names": names}, code="return value < 0 ? '' : names[value]")
        for i, (_, names) in enumerate(hover.values())
    }
    fig.add_tools(HoverTool(renderers=[dots], tooltips=tooltips, formatters=formatters))
    colour_bar = ColorBar(color_mapper=mapper, width=10, title="")
    fig.add_layout(colour_bar, "right")

    colour_by = Select(title="Colour by", options=ex.colour_choices(), value=ex.colour_choices()[0], name="colour_by")
    clusters = Spinner(title="k (k-means)", low=2, high=50, step=1, value=8, width=100, name="k")
    status = Div(text=f"{n:,} {kind}s. Click a point to hear it; drag a box or lasso to select.", name="status")

    def recolour() -> None:
        try:
            colours = ex.colour(colour_by.value, k=clusters.value)
        except ValueError as e:
            status.text = html.escape(str(e))
            return
        values = colours.values
        if colours.names is not None:
            k = max(len(colours.names), 1)
            mapper.palette, mapper.low, mapper.high = _categorical(k), -0.5, len(_categorical(k)) - 0.5
            values = np.where(values < 0, np.nan, values).astype(np.float32)
            colour_bar.ticker = FixedTicker(ticks=list(range(k)))
            colour_bar.major_label_overrides = {i: name[:30] for i, name in enumerate(colours.names)}
        else:
            finite = values[np.isfinite(values)]
            low, high = (0.0, 24.0) if colours.cyclic else (float(finite.min()), float(finite.max()))
            mapper.palette = _twilight() if colours.cyclic else Viridis256
            mapper.low, mapper.high = low, high if high > low else low + 1
            colour_bar.ticker = FixedTicker(ticks=list(np.linspace(low, high, 5)))
            colour_bar.major_label_overrides = {}
        colour_bar.title = colour_by.value
        points.data["c"] = values

    colour_by.on_change("value", lambda _a, _o, _n: recolour())
    clusters.on_change("value", lambda _a, _o, _n: colour_by.value == KMEANS and recolour())
    recolour()

    # ---------------------------------------------------------------- one point
    frame_info = Div(text="", name="frame_info", width=760)
    logmel_fig, logmel_src = _image_figure("log-mel (frame ±1.5 s)", "logmel")
    frame_box = BoxAnnotation(left=0, right=0, fill_alpha=0.0, line_color="white", line_width=2)
    logmel_fig.add_layout(frame_box)
    recon_fig, recon_src = _image_figure("VAE reconstruction (the frame)", "reconstruction", width=300)

    def play(point: int) -> None:
        frame = ex.representative(point)
        f = ex.frames.iloc[frame]
        caption = f"{f['path']} frame {int(f['frame_in_recording'])} ({ex.frame_offset(frame):.1f} s)"
        if ex.units is not None:
            caption = f"{ex.unit_names[point]}: {caption}"
        if ex.root is None:
            frame_info.text = html.escape(caption) + "<br>(no recordings to play: give --recordings or --model)"
            return
        frame_info.text = _audio_tag(f"/audio?frame={frame}", caption, "frame")
        try:
            spectrograms = ex.spectrograms(frame)
        except Exception as e:
            frame_info.text += f"<p>{html.escape(str(e))}</p>"
            return
        _show_image(logmel_fig, logmel_src, spectrograms["logmel"], spectrograms["seconds"])
        frame_box.left, frame_box.right = spectrograms["frame_s"]
        _show_image(recon_fig, recon_src, spectrograms["reconstruction"], ex.spec.frame_seconds)

    def on_tap(event) -> None:
        xs = (ex.xy[:, 0] - x_range.start) / (x_range.end - x_range.start) * (fig.inner_width or MAP_SIZE[0])
        ys = (ex.xy[:, 1] - y_range.start) / (y_range.end - y_range.start) * (fig.inner_height or MAP_SIZE[1])
        sx = (event.x - x_range.start) / (x_range.end - x_range.start) * (fig.inner_width or MAP_SIZE[0])
        sy = (event.y - y_range.start) / (y_range.end - y_range.start) * (fig.inner_height or MAP_SIZE[1])
        d2 = (xs - sx) ** 2 + (ys - sy) ** 2
        nearest = int(np.argmin(d2))
        if d2[nearest] <= TAP_PIXELS**2:
            play(nearest)

    fig.on_event(Tap, on_tap)

    # ---------------------------------------------------------------- a selection
    label_names = ex.label_columns()
    in_table = list(dict.fromkeys([*label_names[:2], *([ex.column] if ex.column in label_names else [])]))
    listed = ColumnDataSource({c: [] for c in ["row", "path", "frame", "time", *in_table]}, name="selection")
    table = DataTable(
        source=listed,
        columns=[TableColumn(field=c, title=c) for c in ["path", "frame", "time", *in_table]],
        width=760,
        height=220,
        name="selection_table",
        index_position=None,
    )
    selection_info = Div(text="", name="selection_info", width=760)
    mean_fig, mean_src = _image_figure("decoded mean of the selection", "decoded_mean")
    makeup_by = Select(
        title="Make-up by", options=[*label_names, "hour"], value=(label_names or ["hour"])[0], width=160
    )
    makeup_src = ColumnDataSource({"value": [], "selection": [], "survey": []}, name="makeup")
    makeup_fig = figure(
        y_range=FactorRange(), width=380, height=260, title="share of the selection (dots: of the survey)", tools=""
    )
    makeup_fig.hbar(y="value", right="selection", height=0.7, source=makeup_src, color="#4c72b0")
    makeup_fig.scatter(x="survey", y="value", source=makeup_src, size=8, color="black")
    diel_src = ColumnDataSource({"hour": [], "day": [], "group": [], "colour": []}, name="diel")
    diel_fig = figure(
        width=760, height=420, x_range=(0, 24), y_range=FactorRange(), title="when: time of day, per site and date"
    )
    diel_fig.scatter("hour", "day", color="colour", legend_field="group", source=diel_src, size=7, alpha=0.7)
    diel_fig.xaxis.axis_label = "hour of the day"
    name_input = TextInput(title=f"Name this selection (saved as '{ex.column}')", name="label_name", width=300)
    save = Button(label="Save label", button_type="primary", name="save_label", width=120)
    saved = Div(text="", name="saved")
    selected: dict = {"rows": np.zeros(0, np.int64)}

    def show_makeup() -> None:
        rows = selected["rows"]
        if not len(rows):
            return
        table_ = ex.makeup(rows, makeup_by.value)
        makeup_fig.y_range.factors = [v[:40] for v in table_["value"]][::-1]
        makeup_src.data = {
            "value": [v[:40] for v in table_["value"]],
            "selection": table_["selection"].to_numpy(),
            "survey": table_["survey"].to_numpy(),
        }

    makeup_by.on_change("value", lambda _a, _o, _n: show_makeup())

    def on_select(_attr, _old, indices) -> None:
        rows = np.sort(ex.rows(indices))
        selected["rows"] = rows
        if not len(rows):
            return
        listing = ex.listing(rows)
        listed.data = {
            "row": rows[: len(listing)],
            "path": listing["path"].astype(str).tolist(),
            "frame": listing["frame_in_recording"].to_numpy(),
            "time": listing["frame_time"].astype(str).tolist() if "frame_time" in listing else [""] * len(listing),
            **{c: listing[c].astype("string").fillna("").tolist() for c in in_table if c in listing},
        }
        shown = f" (listed: the first {len(listing):,})" if len(listing) < len(rows) else ""
        head = f"{len(rows):,} frames from {ex.frames['path'].iloc[rows].nunique():,} recordings selected{shown}."
        parts = [html.escape(head)]
        if ex.root is not None:
            audio, count = ex.playlist(rows)
            parts.append(
                _audio_tag(f"/audio?clip={clips.put(audio)}", f"{count} of them, one after another", "playlist")
            )
        mean = ex.decode(ex.mu[rows])
        _show_image(mean_fig, mean_src, mean, ex.spec.frame_seconds)
        if mean is not None:
            parts.append(_audio_tag(f"/audio?clip={clips.put(ex.decoded_audio(mean))}", "the decoded mean", "mean"))
        selection_info.text = "".join(parts)
        show_makeup()
        when = ex.diel(rows, "site" if "site" in ex.frames else None)
        days = list(zip(when["group"], when["date"], strict=True))
        diel_fig.y_range.factors = sorted(set(days))
        palette = _categorical(int(when["code"].max()) + 1 if len(when) else 1)
        diel_src.data = {
            "hour": when["hour"].to_numpy(),
            "day": days,
            "group": when["group"].tolist(),
            "colour": [palette[c % len(palette)] for c in when["code"]],
        }

    points.selected.on_change("indices", on_select)
    listed.selected.on_change(
        "indices",
        lambda _a, _o, new: new and ex.units is None and play(int(listed.data["row"][new[0]])),
    )

    def on_save() -> None:
        rows = selected["rows"]
        if not len(rows):
            saved.text = "select some frames first"
            return
        try:
            count = ex.save(rows, name_input.value_input or name_input.value)
        except (ValueError, OSError) as e:
            saved.text = html.escape(str(e))
            return
        saved.text = html.escape(
            f"saved {count:,} frames as {(name_input.value_input or name_input.value).strip()!r} to {ex.labels_file}"
        )
        choices = ex.colour_choices()
        colour_by.options = choices
        if colour_by.value == ex.column:
            recolour()

    save.on_click(on_save)

    listen = column(frame_info, row(logmel_fig, recon_fig))
    selection = column(
        selection_info, table, row(name_input, save), saved, row(mean_fig, column(makeup_by, makeup_fig))
    )
    tabs = Tabs(
        tabs=[
            TabPanel(child=listen, title="Listen"),
            TabPanel(child=selection, title="Selection"),
            TabPanel(child=diel_fig, title="Time"),
        ],
        name="panels",
    )
    points.selected.on_change("indices", lambda _a, _o, new: new and setattr(tabs, "active", 1))
    doc.add_root(row(column(row(colour_by, clusters), fig, status), tabs))
    doc.title = "ecovae explore"


def serve(explorer: Explorer, *, port: int = 8765, host: str | None = None, open_browser: bool = True) -> None:
    """Serve the page on ``host`` (loopback unless given) until interrupted, and open it in the browser."""
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server

    clips = Clips()
    address = host or "127.0.0.1"
    origins = ["*"] if host else [f"127.0.0.1:{port}", f"localhost:{port}"]
    server = Server(
        {"/": Application(FunctionHandler(partial(build_document, explorer=explorer, clips=clips)))},
        port=port,
        address=address,
        allow_websocket_origin=origins,
        extra_patterns=[(r"/audio", AudioHandler, {"explorer": explorer, "clips": clips})],
        websocket_max_message_size=1 << 30,
    )
    server.start()
    print(f"ecovae explore: http://{address}:{port}/ ({explorer.n_points:,} points; Ctrl-C to stop)", flush=True)
    if host:
        print("  listening beyond this machine: anyone who reaches the port can hear the recordings", flush=True)
    if open_browser:
        server.io_loop.add_callback(server.show, "/")
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
