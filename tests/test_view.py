"""``vstain-dask view``: the neuroglancer state (a pure function), the local server it runs (real
HTTP, CORS, byte ranges, stopping on Ctrl-C or SIGTERM) and, marked ``browser``, neuroglancer's
own client in headless Chromium showing the stain's colours; and the command's refusals.

The stain is real: a small phantom stained with the bundled model (bone purple and blue on a
white background) over two axes, with alpha, the sample mask (NGFF labels) and the uncertainty.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from vstain_dask.cli import main
from vstain_dask.viewers.neuroglancer import (
    CLIENT_PATH,
    Image,
    plan_view,
    segment_property_map,
    viewer_state,
)

SHAPE = (16, 64, 64)
CHUNKS = (8, 32, 32)


# -- a real stain -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stains(cluster, tmp_path_factory) -> dict[str, Path]:
    """{NGFF version: a stain of a phantom with alpha, the sample mask and the uncertainty}."""
    from distributed import Client

    from vstain_dask.stain import StainConfig, stain_to_zarr
    from vstain_dask.stain.run import default_model_path, resolve_ct_levels
    from vstain_dask.testing import small_phantom_store

    root = tmp_path_factory.mktemp("view")
    model = default_model_path()
    out = {}
    with Client(cluster) as client:
        for version in ("0.5", "0.4"):
            ct = small_phantom_store(root, shape=SHAPE, chunks=CHUNKS, seed=3,
                                     ngff_version=version, name=f"ct-{version}.ome.zarr")  # fmt: skip
            config = StainConfig(
                tile=64, step=32, batch_size=4, axes="zy", alpha=True, mask=True,
                uncertainty=True, ct_levels=resolve_ct_levels(ct, model, "auto"),
            )  # fmt: skip
            path = root / f"stain-{version}.ome.zarr"
            stain_to_zarr(ct, path, model=model, config=config, client=client, chunks=CHUNKS,
                          ngff_version=version, progress=False)  # fmt: skip
            out[version] = path
    return out


# -- the state, a pure function -----------------------------------------------------------------


def _image(url, *, fmt=3, axes=("c", "z", "y", "x"), shape=(3, 10, 40, 60), **kw) -> Image:
    n = len(axes)
    voxel = {"c": 1.0, "z": 4.0, "y": 3.0, "x": 2.0}
    defaults = {
        "scale": tuple(voxel[a] for a in axes),
        "translation": (0.0,) * n,
        "units": tuple(None if a == "c" else "micrometer" for a in axes),
    }
    return Image(url=url, zarr_format=fmt, axes=axes, shape=shape, **{**defaults, **kw})


def test_state_shows_rgb_ct_labels_uncertainty_and_the_z_plane():
    stain = _image("http://h:1/data/s.ome.zarr")
    ct = _image("http://h:1/data/ct.ome.zarr", axes=("z", "y", "x"), shape=(10, 40, 60),
                window=(1000.0, 3000.0), limits=(0.0, 65535.0))  # fmt: skip
    mask = _image("http://h:1/data/s.ome.zarr/labels/sample", axes=("z", "y", "x"),
                  shape=(10, 40, 60), segment_colors={1: "#ffc800"},
                  segment_properties="http://h:1/properties/s.ome.zarr/labels/sample")  # fmt: skip
    unc = _image("http://h:1/data/s.ome.zarr/uncertainty", axes=("z", "y", "x"),
                 shape=(10, 40, 60), window=(0.0, 64.0), limits=(0.0, 255.0), color="FF00FF")  # fmt: skip
    state = viewer_state(stain, name="s", ct=ct, labels={"sample": mask}, uncertainty=unc)
    json.dumps(state)  # all of it goes into a URL

    # xy in the main panel: the global dimensions in x, y, z order, µm as metres
    assert state["layout"] == "xy"
    assert state["dimensions"] == {"x": [2e-06, "m"], "y": [3e-06, "m"], "z": [4e-06, "m"]}
    assert state["position"] == [30.5, 20.5, 5.5]  # the middle voxel's centre
    layers = {layer["name"]: layer for layer in state["layers"]}
    assert [layer["name"] for layer in state["layers"]] == ["CT", "s", "sample", "uncertainty"]

    rgb = layers["s"]
    assert rgb["type"] == "image" and rgb["opacity"] == 1.0
    assert rgb["source"]["url"] == "zarr3://http://h:1/data/s.ome.zarr/"
    # the channel axis renamed c^ (one RGB pixel), the spatial axes kept at their own scale
    assert rgb["source"]["transform"]["outputDimensions"] == {
        "c^": [1, ""], "z": [4e-06, "m"], "y": [3e-06, "m"], "x": [2e-06, "m"]}  # fmt: skip
    assert "emitRGB(" in rgb["shader"]
    assert all(f"getDataValue({i})" in rgb["shader"] for i in range(3))
    assert "getDataValue(3)" not in rgb["shader"]

    assert layers["CT"]["type"] == "image"
    assert layers["CT"]["source"] == "zarr3://http://h:1/data/ct.ome.zarr/"
    assert layers["CT"]["shaderControls"] == {
        "normalized": {"range": [1000.0, 3000.0], "window": [0.0, 65535.0]}}  # fmt: skip
    assert "emitGrayscale" in layers["CT"]["shader"]

    seg = layers["sample"]
    assert seg["type"] == "segmentation"
    # the labels, and their class names as a second (precomputed segment properties) source
    assert seg["source"] == ["zarr3://http://h:1/data/s.ome.zarr/labels/sample/",
                             "precomputed://http://h:1/properties/s.ome.zarr/labels/sample/"]  # fmt: skip
    assert seg["segments"] == ["1"] and seg["segmentColors"] == {"1": "#ffc800"}
    # without names, the labels alone
    plain = viewer_state(stain, labels={"m": _image("http://h:1/data/m", axes=("z", "y", "x"),
                                                    shape=(10, 40, 60))})  # fmt: skip
    assert plain["layers"][1]["source"] == "zarr3://http://h:1/data/m/"

    u = layers["uncertainty"]
    assert u["type"] == "image" and u["visible"] is False
    assert u["shaderControls"]["normalized"]["range"] == [0.0, 64.0]
    assert 'color(default="#ff00ff")' in u["shader"]


def test_segment_property_map_of_ngff_image_labels():
    image_label = {
        "colors": [{"label-value": 0, "rgba": [0, 0, 0, 0]},
                   {"label-value": 2, "rgba": [10, 20, 30, 255]},
                   {"label-value": 7, "rgba": [1, 2, 3, 128]}],
        "properties": [{"label-value": 7, "tissue": "marrow", "note": "soft"},
                       {"label-value": 0, "tissue": "air"},
                       {"label-value": 2, "tissue": "bone", "area": 3.5}],
    }  # fmt: skip
    found = segment_property_map(image_label)
    json.dumps(found)
    assert found["@type"] == "neuroglancer_segment_properties"
    # the transparent class (air) is left out; ids in increasing value, as decimal strings
    assert found["inline"]["ids"] == ["2", "7"]
    label, note = found["inline"]["properties"]
    assert label == {"id": "tissue", "type": "label", "values": ["bone", "marrow"]}
    assert note == {"id": "note", "type": "string", "values": ["", "soft"]}
    # no names: no map
    assert segment_property_map({"colors": image_label["colors"]}) is None
    assert segment_property_map({"properties": [{"label-value": 1, "n": 3}]}) is None
    assert segment_property_map(None) is None


def test_state_of_ngff_04_rgba_and_a_lone_volume():
    # NGFF 0.4 stores are zarr v2: neuroglancer's zarr2:// source
    rgba = viewer_state(_image("http://h:1/data/s.ome.zarr", fmt=2, shape=(4, 10, 40, 60)))
    (layer,) = rgba["layers"]
    assert layer["source"]["url"] == "zarr2://http://h:1/data/s.ome.zarr/"
    assert "getDataValue(3)" in layer["shader"] and "emitRGBA(" in layer["shader"]
    assert "emitRGB(" in layer["shader"]  # opaque unless the alpha box is ticked

    # a stain of one slice (c, y, x): the xy plane, no z
    flat = viewer_state(_image("http://h:1/data/s.ome.zarr", axes=("c", "y", "x"), shape=(3, 8, 6)))
    assert flat["dimensions"] == {"x": [2e-06, "m"], "y": [3e-06, "m"]}
    assert flat["position"] == [3.5, 4.5]
    assert list(flat["layers"][0]["source"]["transform"]["outputDimensions"]) == ["c^", "y", "x"]

    # a greyscale volume (e.g. an imported CT) on its own: one grey layer in its window
    ct = _image("http://h:1/data/ct.ome.zarr", axes=("z", "y", "x"), shape=(10, 40, 60),
                window=(5.0, 9.0))  # fmt: skip
    (grey,) = viewer_state(ct, name="ct")["layers"]
    assert grey["shaderControls"] == {"normalized": {"range": [5.0, 9.0]}}
    assert "transform" not in json.dumps(grey)


# -- what an output holds -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_plan_finds_ct_labels_and_uncertainty(stains, version):
    plan = plan_view(stains[version])
    ct = stains[version].parent / f"ct-{version}.ome.zarr"
    assert plan.ct == ct.resolve() and "recorded input" in plan.ct_note
    assert plan.labels == ("sample",)
    assert plan.uncertainty == (stains[version] / "uncertainty").resolve()
    state = plan.state("http://127.0.0.1:9")
    kind = {"0.5": "zarr3", "0.4": "zarr2"}[version]
    sources = {layer["name"]: json.dumps(layer["source"]) for layer in state["layers"]}
    assert f"{kind}://http://127.0.0.1:9/data/{stains[version].name}/" in sources[
        f"stain-{version}"]  # fmt: skip
    assert sources["CT"] == f'"{kind}://http://127.0.0.1:9/data/ct-{version}.ome.zarr/"'
    # the stored windows: the CT's robust window, the uncertainty's 0..64
    ct_window = zarr.open_group(str(ct), mode="r").attrs.asdict()
    ct_window = (ct_window.get("ome") or ct_window)["omero"]["channels"][0]["window"]
    controls = {layer["name"]: layer.get("shaderControls") for layer in state["layers"]}
    assert controls["CT"]["normalized"]["range"] == [ct_window["start"], ct_window["end"]]
    assert controls["uncertainty"]["normalized"]["range"] == [0.0, 64.0]
    segs = {layer["name"]: layer for layer in state["layers"] if layer["type"] == "segmentation"}
    assert segs["sample"]["segmentColors"] == {"1": "#ffc800"}  # LabelTable.mask's colour
    assert segs["sample"]["source"][1] == (
        f"precomputed://http://127.0.0.1:9/properties/{stains[version].name}/labels/sample/"
    )
    # the phantom CT's tissue map, in its stored class colours, with its class names
    tissue = zarr.open_group(str(ct / "labels" / "tissue"), mode="r").attrs.asdict()
    colours = (tissue.get("ome") or tissue)["image-label"]["colors"]
    assert segs["tissue"]["source"] == [
        f"{kind}://http://127.0.0.1:9/data/ct-{version}.ome.zarr/labels/tissue/",
        f"precomputed://http://127.0.0.1:9/properties/ct-{version}.ome.zarr/labels/tissue/",
    ]
    assert segs["tissue"]["segmentColors"] == {
        str(c["label-value"]): "#{:02x}{:02x}{:02x}".format(*c["rgba"][:3])
        for c in colours
        if c["rgba"][3] > 0
    }
    assert len(segs["tissue"]["segmentColors"]) >= 5


def test_plan_says_when_the_recorded_ct_is_gone(stains, tmp_path):
    copy = tmp_path / "moved.ome.zarr"
    shutil.copytree(stains["0.5"], copy)
    from vstain_dask import ngff

    vstain = dict(zarr.open_group(str(copy), mode="r").attrs["vstain"])
    ngff.update_provenance(copy, input={**vstain["input"], "path": str(tmp_path / "gone.zarr")})
    plan = plan_view(copy)
    assert plan.ct is None and "gone.zarr is not there" in plan.ct_note
    assert plan_view(copy, ct=stains["0.4"].parent / "ct-0.4.ome.zarr").ct is not None


def test_a_ct_without_a_stored_window_gets_the_writers_window(stains, tmp_path):
    from vstain_dask import ngff

    rng = np.random.default_rng(0)
    vol = rng.integers(1000, 3000, size=SHAPE, dtype=np.uint16)
    ct = tmp_path / "other.ome.zarr"
    ngff.write_volume(vol, ct, axes="zyx", scale=(5.0,) * 3, units="micrometer", chunks=CHUNKS)
    group = zarr.open_group(str(ct), mode="r+")
    ome = dict(group.attrs["ome"])
    del ome["omero"]  # as another tool writes it
    group.attrs["ome"] = ome
    state = plan_view(stains["0.5"], ct=ct).state("http://127.0.0.1:9")
    low, high = np.percentile(vol, (0.5, 99.5))
    assert state["layers"][0]["name"] == "CT"
    assert state["layers"][0]["shaderControls"]["normalized"] == {
        "range": [float(np.floor(low)), float(np.ceil(high))]
    }


# -- the served view ----------------------------------------------------------------------------


class _View:
    """``vstain-dask view OUT --neuroglancer --port 0`` as a user runs it."""

    def __init__(self, out: Path, *extra: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vstain_dask.cli", "view", str(out), "--neuroglancer",
             "--port", "0", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.url = self._first_line(timeout=60)
        self.base = self.url.split(CLIENT_PATH)[0]

    def _first_line(self, *, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.proc.kill()
            pytest.fail(f"view printed no URL within {timeout} s: {self.proc.stderr.read()}")
        line = self.proc.stdout.readline().strip()
        assert line.startswith("http"), (line, self.proc.stderr.read())
        return line

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.base).port

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("view did not stop within 20 s")
        return self.proc.returncode, err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:  # only the process started here, by its PID
            self.proc.kill()
            self.proc.wait()


def _get(url: str, **headers) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False  # something still listens
    with socket.socket() as s:
        # as any server binds (SO_REUSEADDR): the served connections' TIME_WAIT does not count
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    return True


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_view_serves_the_store_and_stops_on_ctrl_c(stains, version):
    out = stains[version]
    meta = "zarr.json" if version == "0.5" else ".zattrs"
    with _View(out) as view:
        assert view.url.startswith(f"http://127.0.0.1:{view.port}{CLIENT_PATH}#!")
        state = json.loads(urllib.parse.unquote(view.url.split("#!", 1)[1]))
        assert state == plan_view(out).state(view.base)

        # the metadata as a browser on another origin would fetch it
        status, headers, body = _get(f"{view.base}/data/{out.name}/{meta}",
                                     Origin="https://elsewhere.example")  # fmt: skip
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
        assert json.loads(body) == json.loads((out / meta).read_text())
        status, headers, part = _get(f"{view.base}/data/{out.name}/{meta}", Range="bytes=2-9")
        assert status == 206 and part == body[2:10]
        assert headers["Content-Range"] == f"bytes 2-9/{len(body)}"
        # the client of the neuroglancer package, from the same server
        status, headers, page = _get(f"{view.base}{CLIENT_PATH}")
        assert status == 200 and b"<script" in page
        # the class names of the sample mask, as neuroglancer's segment property map
        status, headers, body = _get(f"{view.base}/properties/{out.name}/labels/sample/info")
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
        names = json.loads(body)["inline"]
        assert names["ids"] == ["1"] and names["properties"][0]["values"] == ["sample"]
        assert _get(f"{view.base}/properties/{out.name}/info")[0] == 404  # not a label image
        assert _get(f"{view.base}/properties/{out.name}/0/info")[0] == 404  # an array
        # nothing outside the stores
        assert _get(f"{view.base}/data/{out.name}/../../{out.parent.name}")[0] == 404
        assert _get(f"{view.base}/data/other/zarr.json")[0] == 404

        code, err = view.stop(signal.SIGINT)
    assert code in (0, 130), err
    assert err.strip().splitlines()[-1] == f"stopped serving on {view.base}", err
    assert "Traceback" not in err
    assert _port_is_free(view.port)


def test_view_with_another_client_stops_on_sigterm(stains):
    client = "https://neuroglancer.example/"
    with _View(stains["0.5"], "--client-url", client) as view:
        assert view.url.startswith(f"{client}#!")
        state = json.loads(urllib.parse.unquote(view.url.split("#!", 1)[1]))
        url = state["layers"][1]["source"]["url"]
        assert url.startswith("zarr3://http://127.0.0.1:")
        base = url.removeprefix("zarr3://").split("/data/")[0]
        assert _get(f"{base}/data/{stains['0.5'].name}/zarr.json")[0] == 200
        assert _get(f"{base}{CLIENT_PATH}")[0] == 404  # the data only
        view.base = base
        code, err = view.stop(signal.SIGTERM)
    assert code == 0, err
    assert err.strip().splitlines()[-1] == f"stopped serving on {view.base}"
    assert _port_is_free(view.port)


def test_serve_ends_held_streams_and_leaves_no_thread(stains):
    # in this process, to see its threads: a browser's event stream is held open by the server
    # (the bundled client keeps one), and Ctrl-C must still end everything at once
    import threading

    from vstain_dask.viewers.neuroglancer import serve

    before = set(threading.enumerate())
    seen: dict[str, object] = {}
    main_thread = threading.main_thread().ident

    def browser(base: str) -> None:
        with urllib.request.urlopen(f"{base}/events/vstain", timeout=30) as r:
            seen["stream"] = r.headers["Content-Type"]
            seen["first"] = r.readline()
            signal.pthread_kill(main_thread, signal.SIGINT)  # Ctrl-C while the stream is held
            seen["rest"] = r.read()  # returns when the server ends the stream

    def ready(url: str, base: str) -> None:
        seen["base"] = base
        seen["client"] = threading.Thread(target=browser, args=(base,))
        seen["client"].start()

    # Ctrl-C as a fresh `vstain-dask view` process gets it: a module imported by an earlier
    # test (dask_jobqueue.runner) replaces Python's SIGINT handler with sys.exit for the process
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        t0 = time.monotonic()
        serve(plan_view(stains["0.5"]), port=0, on_ready=ready)
        stopped = time.monotonic() - t0
    finally:
        signal.signal(signal.SIGINT, handler)
    seen["client"].join(timeout=10)
    assert stopped < 5, f"took {stopped:.1f} s to stop"
    assert seen["stream"] == "text/event-stream" and seen["first"].startswith(b":")
    assert "rest" in seen  # the server ended the held stream
    # no request thread, no client left (threads of earlier tests may have ended meanwhile)
    assert set(threading.enumerate()) - before == set()
    assert _port_is_free(urllib.parse.urlsplit(seen["base"]).port)


# -- in a browser -------------------------------------------------------------------------------


def _stain_colours(out: Path, planes: range) -> np.ndarray:
    """The distinct RGB colours of some z-planes of the stain's level 0."""
    rgb = np.asarray(
        zarr.open_array(store=str(out), path="0", mode="r")[:3, planes.start : planes.stop]
    )
    return np.unique(rgb.reshape(3, -1).T, axis=0).astype(np.int16)


def _matches(png: bytes, colours: np.ndarray) -> tuple[float, float]:
    """(fraction of the main panel's pixels that are stain colours, fraction that are stain
    colours and saturated: the stain's purple and blue, not its white background)."""
    import imageio.v3 as iio
    from scipy.spatial import cKDTree

    img = iio.imread(png)[60:, :, :3].reshape(-1, 3).astype(np.int16)  # below the layer bar
    distinct, inverse = np.unique(img, axis=0, return_inverse=True)
    near = cKDTree(colours).query(distinct, distance_upper_bound=4.0)[0] < np.inf
    is_stain = near[inverse.ravel()]
    saturated = img.max(axis=1) - img.min(axis=1) > 40
    return float(is_stain.mean()), float((is_stain & saturated).mean())


@pytest.mark.browser
@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_neuroglancer_shows_the_stain_in_colour(stains, version, tmp_path):
    from _screenshot import find_chromium, screenshot

    if find_chromium() is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    import imageio.v3 as iio

    out = stains[version]
    colours = _stain_colours(out, range(SHAPE[0] // 2 - 1, SHAPE[0] // 2 + 2))
    png = tmp_path / f"neuroglancer-{version}.png"

    def drawn(shot: bytes) -> bool:  # chunks arrive over a few seconds
        return _matches(shot, colours)[1] > 0.02

    with _View(out) as view:
        screenshot(view.url, png, wait=5.0, size=(1000, 700), until=drawn, patience=60.0)
        code, err = view.stop(signal.SIGINT)
    if os.environ.get("VSTAIN_KEEP_SCREENSHOT"):  # to look at it: VSTAIN_KEEP_SCREENSHOT=dir
        Path(os.environ["VSTAIN_KEEP_SCREENSHOT"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(os.environ["VSTAIN_KEEP_SCREENSHOT"]) / png.name)
    assert code in (0, 130) and _port_is_free(view.port), err

    img = iio.imread(png)[..., :3]
    assert img.shape[:2] == (700, 1000)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50, "a blank page?"
    stain, coloured = _matches(png.read_bytes(), colours)
    # the panel shows the stain's own colours, R, G and B together (one grey channel, or
    # the channels as separate grey layers, would not give them), and its purple parts
    assert stain > 0.3, f"only {stain:.0%} of the main panel has the stain's colours"
    assert coloured > 0.02, f"only {coloured:.1%} of the main panel is stain-coloured"


def _with_panel_open(url: str, layer: str) -> str:
    """``url`` with ``layer`` shown and its segment list open in the side panel, as a user
    gets it by clicking the layer and its "Seg." tab."""
    client, fragment = url.split("#!", 1)
    state = json.loads(urllib.parse.unquote(fragment))
    for entry in state["layers"]:
        if entry["name"] == layer:
            entry.update(visible=True, tab="segments")
    state["selectedLayer"] = {"layer": layer, "visible": True}
    return f"{client}#!{urllib.parse.quote(json.dumps(state), safe='')}"


# what the page shows: the names in the open segment list, each layer's value under the mouse
# at the main panel's centre (in the layer bar), and neuroglancer's own state
_SEGMENT_LIST = """(() => {
  const panel = document.querySelector('.neuroglancer-rendered-data-panel');
  const box = panel.getBoundingClientRect();
  panel.dispatchEvent(new MouseEvent('mousemove', {bubbles: true,
    clientX: box.left + box.width / 2, clientY: box.top + box.height / 2}));
  const text = selector => Array.from(document.querySelectorAll(selector), e => e.textContent);
  return JSON.stringify({
    names: text('.neuroglancer-segment-list-entry-name'),
    layers: text('.neuroglancer-layer-item-label'),
    values: text('.neuroglancer-layer-item-value'),
    state: window.viewer.state.toJSON()});
})()"""


def _listed_and_hovered(value: str, names: set[str]) -> bool:
    page = json.loads(value)
    return names <= set(page["names"]) and any(any(c.isalpha() for c in v) for v in page["values"])


@pytest.mark.browser
def test_neuroglancer_lists_the_label_classes_by_name(stains):
    from _screenshot import evaluate, find_chromium

    if find_chromium() is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    out = stains["0.5"]
    tissue = zarr.open_group(str(out.parent / "ct-0.5.ome.zarr/labels/tissue"), mode="r")
    image_label = tissue.attrs["ome"]["image-label"]
    shown = {c["label-value"] for c in image_label["colors"] if c["rgba"][3] > 0}
    names = {p["tissue"] for p in image_label["properties"] if p["label-value"] in shown}
    colours = {str(c["label-value"]): "#{:02x}{:02x}{:02x}".format(*c["rgba"][:3])
               for c in image_label["colors"] if c["label-value"] in shown}  # fmt: skip
    assert len(names) >= 4  # the phantom's tissues: bone, marrow, ...

    with _View(out) as view:
        page = evaluate(
            _with_panel_open(view.url, "tissue"), _SEGMENT_LIST, wait=3.0, patience=60.0,
            size=(1200, 800), until=lambda v: _listed_and_hovered(v, names),
        )  # fmt: skip
        code, err = view.stop(signal.SIGINT)
    assert code in (0, 130) and _port_is_free(view.port), err
    page = json.loads(page)
    # the class names, from the label image's metadata, in neuroglancer's segment list
    assert names <= set(page["names"]), page["names"]
    assert "air" not in page["names"]  # a transparent class is not listed
    # under the mouse, the tissue layer shows the class there by id and name
    hovered = dict(zip(page["layers"], page["values"], strict=True))["tissue"]
    value, name = hovered.split(" ", 1)
    by_value = {str(p["label-value"]): p["tissue"] for p in image_label["properties"]}
    assert name == by_value[value], hovered
    # neuroglancer kept the stored colours and both sources of the layer
    layer = next(lr for lr in page["state"]["layers"] if lr["name"] == "tissue")
    assert layer["segmentColors"] == colours
    sources = [src if isinstance(src, str) else src["url"] for src in layer["source"]]
    assert sources[1].startswith("precomputed://") and "/properties/" in sources[1]


# -- refusals -----------------------------------------------------------------------------------


def _refused(args: list[str]) -> str:
    r = CliRunner().invoke(main, ["view", *args])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def test_view_refuses_what_is_not_a_vstain_output(stains, tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    assert "not a zarr store" in _refused([str(folder), "--neuroglancer"])
    zarr.create_array(store=str(tmp_path / "plain.zarr"), shape=(4, 4, 4), dtype="uint8")
    for mode in (["--neuroglancer"], []):  # napari's too: refused before any window opens
        msg = _refused([str(tmp_path / "plain.zarr"), *mode])
        assert "not a vstain-dask output" in msg
    label = stains["0.5"] / "labels" / "sample"
    msg = _refused([str(label), "--neuroglancer"])
    assert "label image" in msg and str(stains["0.5"]) in msg
    assert "does not exist" in _refused([str(tmp_path / "nothing.ome.zarr"), "--print-state"])
    # napari shows no CT and serves nothing: --ct and --port without --neuroglancer
    assert "--ct is for --neuroglancer" in _refused([str(stains["0.5"]), "--ct", str(label)])
    assert "--port is for --neuroglancer" in _refused([str(stains["0.5"]), "--port", "9"])
    # a stain as the CT
    assert "--ct must be a greyscale" in _refused([str(stains["0.5"]), "--ct", str(stains["0.4"]),
                                                   "--print-state"])  # fmt: skip


def test_view_refuses_an_incomplete_store(stains, tmp_path):
    from vstain_dask import ngff

    copy = tmp_path / "unfinished.ome.zarr"
    shutil.copytree(stains["0.5"], copy)
    ngff.update_provenance(copy, complete=False)
    msg = _refused([str(copy), "--neuroglancer"])
    assert "is incomplete" in msg and "--resume" in msg


def test_view_refuses_a_port_in_use(stains):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        msg = _refused([str(stains["0.5"]), "--neuroglancer", "--port", str(port)])
    assert f"port {port}" in msg and "--port" in msg


def test_print_state_prints_json_and_does_not_serve(stains):
    r = CliRunner().invoke(main, ["view", str(stains["0.5"]), "--print-state", "--port", "8123"])
    assert r.exit_code == 0, r.output
    state = json.loads(r.stdout)
    assert state == plan_view(stains["0.5"]).state("http://127.0.0.1:8123")
    assert "port" in _refused([str(stains["0.5"]), "--print-state", "--port", "0"])


def test_view_without_the_neuroglancer_package_says_what_to_install(stains, monkeypatch):
    monkeypatch.setitem(sys.modules, "neuroglancer", None)  # as if it were not installed
    msg = _refused([str(stains["0.5"]), "--neuroglancer", "--port", "0"])
    assert "pip install 'vstain-dask[view]'" in msg and "--client-url" in msg


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the display check is Linux's")
def test_napari_mode_without_a_display_says_so(stains, monkeypatch):
    # view's default opens napari; with no display to open a window on, one line says so
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    msg = _refused([str(stains["0.5"])])
    assert "no display" in msg and "--neuroglancer" in msg
