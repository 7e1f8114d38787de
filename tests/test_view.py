"""``connectome view``: a tiny run served to Neuroglancer and rendered by headless Chromium.

The rendering test opens the printed URL in headless Chromium (selenium +
chromedriver; the Debian packages ``chromium`` and ``chromium-driver`` are
installed by a session fixture when missing, and the test is skipped, naming
the reason, only when that is impossible), waits until every visible layer
reports ready and the browser has fetched segmentation chunks, raw chunks,
meshes and synapse annotations from the data server, takes screenshots and
checks that they are not blank: several distinct segment colours in the xy
panel, coloured meshes in the 3-d panel and, with the segmentation hidden,
grey-level raw data. Every wait has a deadline, and a watchdog kills the
browser's whole process group at a hard limit, so a missing file cannot hang
the suite. Set ``CONNECTOME_VIEW_SCREENSHOT=/path.png`` to keep the screenshot.

The other tests cover the refusal cases (bad run directories: one line, exit
2, naming the path and what is missing), the default 127.0.0.1 binding, the
export freshness rule, the data server's byte ranges and path confinement,
and the command itself in a subprocess until Ctrl-C.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from sample_data import SampleConfig, write_sample
from workflows.cli import main
from workflows.view import (
    EXPORT_DIR,
    STAMP,
    DataServer,
    ViewError,
    ViewServer,
    check_run_dir,
    ensure_export,
    find_input_volume,
)

pytest.importorskip("neuroglancer")

TINY = {"shape": [32, 96, 96], "n_neurons": 6, "seed": 3, "chunks_zyx": [16, 48, 48]}
REPO = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT_S = 600      # apt-get update + install, once per machine
BROWSER_DEADLINE_S = 90      # watchdog: the browser's process group is killed after this
LOAD_TIMEOUT_S = 45          # waiting for the layers to load


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished run of the tiny sample (synchronous, ~10 s)."""
    root = tmp_path_factory.mktemp("view")
    sample = root / "sample"
    write_sample(sample, SampleConfig(**TINY))
    run = root / "run"
    workflow = root / "wf.yaml"
    workflow.write_text(f"input: {{volume: {sample / 'volume.zarr'}}}\noutput: {run}\n"
                        "compute: {scheduler: synchronous, block_shape: [16, 48, 48], device: cpu}\n")
    assert main(["-q", "run", str(workflow)]) == 0
    return run


@pytest.fixture(scope="module")
def view_server(tiny_run):
    """Everything on, skeletons included (a uint8 skeleton attribute once failed the layer)."""
    with ViewServer(tiny_run, skeletons=True) as server:
        yield server


def _browser_paths() -> tuple[str | None, str | None]:
    chrome = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    return chrome, shutil.which("chromedriver")


def _run_bounded(cmd: list[str], timeout: float) -> tuple[int, str]:
    """Run ``cmd`` in its own process group; kill the group at ``timeout``."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return -1, f"{' '.join(cmd)} timed out after {timeout:.0f} s"
    return proc.returncode, out[-2000:]


def _install_chromium() -> str:
    """Try ``apt-get install chromium chromium-driver``; return what happened."""
    apt = shutil.which("apt-get")
    if apt is None:
        return "Chromium and chromedriver are not installed and apt-get is not available"
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None or _run_bounded([sudo, "-n", "true"], 10)[0] != 0:
            return "Chromium and chromedriver are not installed and installing them needs root"
        prefix = [sudo, "-n"]
    deadline = time.monotonic() + INSTALL_TIMEOUT_S
    install = [*prefix, apt, "install", "-y", "-q", "chromium", "chromium-driver"]
    rc, out = _run_bounded(install, deadline - time.monotonic())
    if rc != 0 and deadline - time.monotonic() > 30:  # stale package lists: update, then retry
        _run_bounded([*prefix, apt, "update", "-q"], min(180, deadline - time.monotonic()))
        rc, out = _run_bounded(install, max(1, deadline - time.monotonic()))
    if rc == 0:
        return "apt-get installed chromium and chromium-driver but no chromium/chromedriver is on PATH"
    return f"apt-get install chromium chromium-driver failed (exit {rc}): {out.strip()[-500:]}"


@pytest.fixture(scope="session")
def chromium():
    """(chromium, chromedriver) paths; installs the Debian packages when missing."""
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[test]'")
    chrome, driver = _browser_paths()
    if not (chrome and driver):
        reason = _install_chromium()
        chrome, driver = _browser_paths()
        if not (chrome and driver):
            pytest.skip(f"headless Chromium unavailable: {reason}")
    return chrome, driver


class _Browser:
    """Headless Chromium under selenium, with a watchdog that kills it at a hard deadline."""

    def __init__(self, chrome: str, chromedriver: str, deadline_s: float) -> None:
        import selenium.webdriver
        from selenium.webdriver.chrome.service import Service

        options = selenium.webdriver.ChromeOptions()
        options.binary_location = chrome
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-extensions",
                    "--window-size=1200,900", "--hide-scrollbars", "--force-device-scale-factor=1",
                    "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--use-gl=angle",
                    "--no-first-run", "--no-default-browser-check", "--disable-background-networking"):
            options.add_argument(arg)
        self.service = Service(chromedriver, popen_kw={"start_new_session": True})
        self.killed = threading.Event()
        self._watchdog = threading.Timer(deadline_s, self.kill)
        self._watchdog.daemon = True
        self._watchdog.start()
        try:
            self.driver = selenium.webdriver.Chrome(options=options, service=self.service)
        except BaseException:
            self.kill()
            raise
        self.driver.set_page_load_timeout(30)
        self.driver.set_script_timeout(10)

    def kill(self) -> None:
        self.killed.set()
        process = getattr(self.service, "process", None)
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self._watchdog.cancel()
        if not self.killed.is_set():
            quitter = threading.Thread(target=self.driver.quit, daemon=True)
            quitter.start()
            quitter.join(15)
        self.kill()


# Readiness as the Neuroglancer client sees it (window.viewer is the Python client's viewer).
STATE_JS = """
const v = window.viewer;
if (!v || !v.layerManager) return null;
return {
  display: v.display.isReady(),
  layers: v.layerManager.managedLayers.map(l => ({
    name: l.name, visible: l.visible, ready: !!l.isReady(),
    errors: ((l.layer && l.layer.dataSources) || []).map(
      d => (d.loadState && d.loadState.error) ? String(d.loadState.error) : null).filter(e => e),
  })),
  panels: Array.from(document.querySelectorAll('.neuroglancer-rendered-data-panel')).map(e => {
    const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; }),
};
"""


def _fetched(server: ViewServer) -> dict[str, bool]:
    paths = [(p, status) for _, p, status in list(server.data.requests)]
    ok = [p for p, status in paths if status in (200, 206)]
    return {
        "segmentation chunks": any("/precomputed/segmentation/" in p and "_" in p.rsplit("/", 1)[-1]
                                   and "-" in p.rsplit("/", 1)[-1] for p in ok),
        "segment properties": any(p.endswith("/segment_properties/info") for p in ok),
        "meshes": any("/precomputed/segmentation/mesh/" in p and p.count(":") == 2 for p in ok),
        "skeletons": any(p.startswith("/precomputed/segmentation/skeletons/") and p[-1].isdigit()
                         for p in ok),
        "synapse annotations": any(p.startswith("/precomputed/synapses/spatial0/") for p in ok),
        "raw chunks": any(p.startswith("/raw/0/c/") for p in ok),
    }


def _wait_loaded(browser: _Browser, server: ViewServer, want_visible: dict[str, bool],
                 timeout: float) -> dict:
    """Poll until the layers have the wanted visibility, all visible ones are ready and
    the display is ready, three polls in a row; fail with the last state otherwise."""
    deadline = time.monotonic() + timeout
    state, streak = None, 0
    while time.monotonic() < deadline and not browser.killed.is_set():
        state = browser.driver.execute_script(STATE_JS)
        good = bool(state) and state["display"] and all(
            (layer["ready"] or not layer["visible"]) and not layer["errors"]
            and want_visible.get(layer["name"], layer["visible"]) == layer["visible"]
            for layer in state["layers"])
        if good and all(_fetched(server).values()):
            streak += 1
            if streak >= 3:
                return state
        else:
            streak = 0
        time.sleep(0.25)
    failed = [r for r in list(server.data.requests) if r[2] >= 400]
    pytest.fail(f"Neuroglancer did not finish loading in {timeout:.0f} s: state {state}; "
                f"fetched {_fetched(server)}; failed requests {failed[:10]}")


def _screenshot(browser: _Browser):
    from PIL import Image

    return Image.open(io.BytesIO(browser.driver.get_screenshot_as_png())).convert("RGB")


def _crop(image, rect):
    x, y, w, h = (round(v) for v in rect)
    return image.crop((x + 2, y + 2, x + w - 2, y + h - 2))


def _colour_stats(panel) -> dict[str, float]:
    """Fractions of saturated (segment-coloured) and non-background pixels, the number of
    distinct saturated colours (quantised to 16 levels per channel, >= 30 pixels each), of
    hues (12 bins, each >= 0.5 % of the panel) and of grey levels."""
    import numpy as np

    rgb = np.asarray(panel, dtype=np.int16).reshape(-1, 3)
    saturation = rgb.max(axis=1) - rgb.min(axis=1)
    coloured = rgb[saturation > 60]
    background = np.bincount((rgb[:, 0] // 8) * 1024 + (rgb[:, 1] // 8) * 32 + rgb[:, 2] // 8).argmax()
    bg = np.array([background // 1024, (background // 32) % 32, background % 32]) * 8
    non_background = np.abs(rgb - bg).max(axis=1) > 24
    _, counts = np.unique((coloured // 16) @ np.array([256, 16, 1]), return_counts=True)
    greys = rgb[saturation <= 12][:, 0]
    hsv = np.asarray(panel.convert("HSV"), dtype=np.int16).reshape(-1, 3)[saturation > 60]
    hue_counts = np.bincount(hsv[:, 0] * 12 // 256, minlength=12)
    return {
        "hues": int((hue_counts > 0.005 * len(rgb)).sum()),
        "coloured": len(coloured) / len(rgb),
        "colours": int((counts >= 30).sum()),
        "non_background": float(non_background.mean()),
        "grey_levels": len(np.unique(greys // 4)),
    }


# --------------------------------------------------------------------------- rendering


def test_view_renders_in_headless_chromium(view_server, chromium, tmp_path):
    start = time.monotonic()
    server = view_server
    assert [n for n in server.layers if n in ("fill", "segmentation", "synapses")] == [
        "fill", "segmentation", "synapses"]
    browser = _Browser(*chromium, deadline_s=BROWSER_DEADLINE_S)
    try:
        browser.driver.get(server.url)
        state = _wait_loaded(browser, server, {"segmentation": True, "synapses": True, "fill": True},
                             LOAD_TIMEOUT_S)
        image = _screenshot(browser)
        image.save(tmp_path / "view.png")
        if os.environ.get("CONNECTOME_VIEW_SCREENSHOT"):
            image.save(os.environ["CONNECTOME_VIEW_SCREENSHOT"])
        panels = state["panels"]
        assert len(panels) == 4, f"expected the 4-panel layout, got panels {panels}"
        xy, three_d = _crop(image, panels[0]), _crop(image, panels[2])
        seg = _colour_stats(xy)
        assert seg["hues"] >= 3 and seg["colours"] >= 8 and seg["coloured"] > 0.05, (
            f"xy panel shows no segmentation: {seg}")
        mesh = _colour_stats(three_d)
        assert mesh["hues"] >= 3 and mesh["coloured"] > 0.05, f"3-d panel shows no meshes: {mesh}"

        # The raw fill channel alone: grey levels, no segment colours.
        with server.viewer.txn() as s:
            s.layers["segmentation"].visible = False
            s.layers["synapses"].visible = False
        _wait_loaded(browser, server, {"segmentation": False, "synapses": False, "fill": True},
                     LOAD_TIMEOUT_S)
        raw = _colour_stats(_crop(_screenshot(browser), panels[0]))
        assert raw["grey_levels"] >= 20 and raw["non_background"] > 0.1, f"raw channel looks blank: {raw}"
        assert raw["coloured"] < seg["coloured"] / 3 and raw["hues"] < seg["hues"], (
            f"segment colours without the segmentation: {raw} (with it: {seg})")
    finally:
        browser.close()
        with server.viewer.txn() as s:
            s.layers["segmentation"].visible = True
            s.layers["synapses"].visible = True
    failed = [r for r in list(server.data.requests) if r[2] >= 400]
    assert failed == [], f"the data server answered errors: {failed[:10]}"
    assert time.monotonic() - start < 60


# --------------------------------------------------------------------------- serving


def test_binds_127_0_0_1_by_default(view_server):
    import neuroglancer.server

    server = view_server
    assert urllib.parse.urlsplit(server.url).hostname == "127.0.0.1"
    assert server.data.socket.getsockname()[0] == "127.0.0.1"
    assert server.data.url.startswith("http://127.0.0.1:")
    sockets = getattr(neuroglancer.server.global_server.http_server, "_sockets", {})
    assert sockets and {s.getsockname()[0] for s in sockets.values()} == {"127.0.0.1"}
    # The viewer page and the data answer over loopback.
    with urllib.request.urlopen(server.url, timeout=10) as response:
        assert response.status == 200 and b"<html" in response.read().lower()
    with urllib.request.urlopen(f"{server.data.url}/precomputed/segmentation/info", timeout=10) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert json.loads(response.read())["type"] == "segmentation"


def test_data_server_ranges_and_confinement(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "blob").write_bytes(bytes(range(100)))
    (tmp_path / "secret").write_text("no")
    server = DataServer({"d": root}).start()
    try:
        def get(path, headers=None):
            request = urllib.request.Request(server.url + path, headers=headers or {})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, response.read(), response.headers
            except urllib.error.HTTPError as exc:
                return exc.code, b"", exc.headers

        assert get("/d/blob")[1] == bytes(range(100))
        status, body, headers = get("/d/blob", {"Range": "bytes=10-19"})
        assert (status, body, headers["Content-Range"]) == (206, bytes(range(10, 20)), "bytes 10-19/100")
        assert get("/d/blob", {"Range": "bytes=-5"})[1] == bytes(range(95, 100))
        assert get("/d/blob", {"Range": "bytes=200-"})[0] == 416
        for path in ("/d/", "/d/missing", "/d/../secret", "/d/%2e%2e/secret", "/x/blob", "/"):
            assert get(path)[0] == 404, path
    finally:
        server.stop()


def test_view_command_serves_until_ctrl_c(tiny_run, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # stderr goes to a file: a pipe nobody reads fills up with the export's log
    # lines and blocks the process (it could then never exit on Ctrl-C).
    err_path = tmp_path / "view.stderr"
    err_file = open(err_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "workflows.cli", "view", str(tiny_run)],
                            stdout=subprocess.PIPE, stderr=err_file, text=True, env=env,
                            start_new_session=True)
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(60)
        assert line and line[0].startswith("http://127.0.0.1:"), (
            f"no URL printed: {line}; stderr: {err_path.read_text()}")
        url = line[0].strip()
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
        time.sleep(0.5)
        assert proc.poll() is None, "connectome view exited instead of serving"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, err_path.read_text()[-2000:]
        assert "Traceback" not in err_path.read_text()
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        err_file.close()


# --------------------------------------------------------------------------- refusals


def _fake_run(path: Path, status: str = "complete", skip: tuple[str, ...] = ()) -> Path:
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"status": status, "input": "nowhere.zarr"}))
    for name in ("neurons.parquet", "synapses.parquet", "edges.parquet"):
        if name not in skip:
            (path / name).write_bytes(b"")
    if "labels.zarr/neurons/0" not in skip:
        (path / "labels.zarr" / "neurons" / "0").mkdir(parents=True)
    return path


@pytest.mark.parametrize("case, needles", [
    ("missing", ["does not exist"]),
    ("file", ["is not a directory"]),
    ("empty", ["run.json is missing"]),
    ("bad json", ["run.json", "unreadable"]),
    ("running", ["not complete", "'running'"]),
    ("no tables", ["lacks", "neurons.parquet", "labels.zarr/neurons/0"]),
])
def test_bad_run_dir_is_a_one_line_error(tmp_path, capsys, case, needles):
    target = tmp_path / "target"
    if case == "file":
        target.write_text("x")
    elif case == "empty":
        target.mkdir()
    elif case == "bad json":
        target.mkdir()
        (target / "run.json").write_text("{not json")
    elif case == "running":
        _fake_run(target, status="running")
    elif case == "no tables":
        _fake_run(target, skip=("neurons.parquet", "labels.zarr/neurons/0"))
    assert main(["view", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("connectome view: error:"), err
    assert str(target) in err
    for needle in needles:
        assert needle in err, err
    with pytest.raises(ViewError):
        check_run_dir(target)
    assert not (target / EXPORT_DIR).exists()


def test_bad_options_are_refused(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["view", str(tiny_run), "--port", "70000"])
    assert exc.value.code == 2
    assert main(["view", str(tiny_run), "--volume", str(tmp_path / "none.zarr")]) == 2
    err = capsys.readouterr().err
    assert "none.zarr" in err and "zarr.json is missing" in err


def test_busy_port_is_a_one_line_error(tiny_run):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "workflows.cli", "-q", "view", str(tiny_run),
                                 "--port", str(port)], capture_output=True, text=True, env=env, check=False,
                                timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------- the export and the volume


def test_export_is_reused_until_the_run_changes(tiny_run):
    out = tiny_run / EXPORT_DIR

    def stamp():
        return (out / STAMP).stat().st_mtime_ns, json.loads((out / STAMP).read_text())

    def info():
        return json.loads((out / "segmentation" / "info").read_text())

    assert ensure_export(tiny_run, skeletons=True) == out  # the view_server fixture wrote it
    before = stamp()
    assert before[1]["skeletons"] is True and info()["skeletons"] == "skeletons"
    assert ensure_export(tiny_run) == out and stamp() == before  # fresh, skeletons or not: kept
    neurons = tiny_run / "neurons.parquet"
    st = neurons.stat()
    os.utime(neurons, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the run changed
    ensure_export(tiny_run)
    after = stamp()
    assert after[1]["sources"]["neurons.parquet"] == [st.st_size, st.st_mtime_ns + 10**9]
    assert after[1]["skeletons"] is False and "skeletons" not in info()
    assert info()["segment_properties"] == "segment_properties" and info()["mesh"] == "mesh"
    ensure_export(tiny_run, skeletons=True)  # asking for skeletons rewrites an export without them
    assert stamp()[1]["skeletons"] is True and info()["skeletons"] == "skeletons"
    assert json.loads((out / "segmentation" / "skeletons" / "info").read_text())["vertex_attributes"] == [
        {"id": "radius", "data_type": "float32", "num_components": 1}]


def test_input_volume_is_found_from_a_relative_record(tmp_path, monkeypatch):
    (tmp_path / "data" / "vol.zarr").mkdir(parents=True)
    (tmp_path / "data" / "vol.zarr" / "zarr.json").write_text("{}")
    run = _fake_run(tmp_path / "runs" / "r1")
    record = {"input": "data/vol.zarr", "config": {"output": "runs/r1"}}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the folder the run was started in
    assert find_input_volume(run, record) == tmp_path / "data" / "vol.zarr"
    assert find_input_volume(run, {"input": "gone.zarr"}) is None
    with pytest.raises(ViewError, match="zarr.json is missing"):
        find_input_volume(run, record, volume=tmp_path / "gone.zarr")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_view_stops_even_when_started_with_sigint_ignored(tiny_run, tmp_path, signum):
    # A child inherits an ignored SIGINT (background jobs of scripts, some test
    # runners); Python then never raises KeyboardInterrupt unless the command
    # installs its own handler, and Ctrl-C would leave the server running.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    err_path = tmp_path / "view.stderr"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "workflows.cli", "view", str(tiny_run)],
                                stdout=subprocess.PIPE, stderr=err_file, text=True, env=env,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        try:
            line: list[str] = []
            reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
            reader.start()
            reader.join(60)
            assert line and line[0].startswith("http://127.0.0.1:"), err_path.read_text()[-2000:]
            proc.send_signal(signum)
            assert proc.wait(timeout=30) == 0, err_path.read_text()[-2000:]
            assert "stopped" in err_path.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
