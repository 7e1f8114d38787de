"""``connectome view RUN_DIR``: look at a run in Neuroglancer.

One command serves everything a run produced to a local Neuroglancer viewer:

- the raw channels of the input volume (the OME-Zarr 0.5 image recorded in
  ``run.json["input"]``), one image layer per channel, read by Neuroglancer
  straight from the Zarr v3 store (``zarr3://``), coloured and windowed from
  the volume's ``omero`` metadata; only the ``fill`` channel starts visible;
- the segmentation (``labels.zarr/neurons``) with meshes (and, on request,
  skeletons) and the neurons' cell type, barcode and size as segment
  properties;
- the synapses as line annotations from the pre- to the post-synaptic site,
  linked to the segmentation through ``pre_segment`` / ``post_segment``.

Segmentation, meshes and synapses come from the Neuroglancer precomputed
export (:func:`graph.export.export` with format ``precomputed``), written once
into ``RUN_DIR/neuroglancer/`` and rewritten when the run changes (a
fingerprint of the run's tables, label metadata and ``run.json`` is kept in
``RUN_DIR/neuroglancer/source.json``). When the run directory is read-only
the export goes to a temporary folder that is removed on exit.

Two HTTP servers run in background threads, both bound to ``127.0.0.1``
unless told otherwise: Neuroglancer's own Python-integration server (the
client and the viewer state; its URL is printed) and :class:`DataServer`, a
small static file server with CORS and byte-range support that serves the
export and the raw volume and nothing else.

Examples
--------
From the shell::

    connectome view runs/sample              # prints http://127.0.0.1:PORT/v/TOKEN/
    connectome view runs/sample --port 8080
    connectome view runs/sample --host 0.0.0.0 --port 8080   # reachable from other machines

From Python::

    >>> from workflows.view import ViewServer
    >>> with ViewServer("runs/sample") as server:  # doctest: +SKIP
    ...     print(server.url)
"""

from __future__ import annotations

import collections
import json
import logging
import mimetypes
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from pipeline.errors import PipelineError

__all__ = [
    "DataServer",
    "ViewError",
    "ViewServer",
    "check_run_dir",
    "ensure_export",
    "find_input_volume",
    "serve",
]

log = logging.getLogger(__name__)

#: Seconds :meth:`ViewServer.close` waits for Neuroglancer's server to stop.
STOP_TIMEOUT_S = 5.0

#: Folder of the Neuroglancer export inside a run directory.
EXPORT_DIR = "neuroglancer"
#: Fingerprint file inside :data:`EXPORT_DIR`.
STAMP = "source.json"
#: Bump when the view needs a differently made export (old ones are then rewritten).
EXPORT_VERSION = 1
#: Files of a run directory that the view needs (relative paths).
REQUIRED = ("run.json", "neurons.parquet", "synapses.parquet", "edges.parquet",
            "labels.zarr/neurons/0")
#: Files whose size and modification time make up the export's fingerprint.
FINGERPRINT = ("run.json", "neurons.parquet", "synapses.parquet", "edges.parquet",
               "labels.zarr/neurons/zarr.json", "labels.zarr/neurons/0/zarr.json")
#: Segments selected (meshes shown in 3-d) when the run has at most this many neurons.
MAX_SELECTED = 500


class ViewError(PipelineError, ValueError):
    """A run directory cannot be viewed; the message names the path and what is missing."""


# --------------------------------------------------------------------------- the run directory


def check_run_dir(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Check that ``run_dir`` is a finished run and return its ``run.json``.

    Parameters
    ----------
    run_dir : str or os.PathLike
        Directory written by ``connectome run``.

    Returns
    -------
    dict
        The parsed ``run.json``.

    Raises
    ------
    ViewError
        If the directory does not exist, is not a run directory, is not
        complete, or lacks a table or the label image; the message names the
        path and every missing entry.
    """
    run = Path(run_dir)
    if not run.exists():
        raise ViewError(f"run directory {str(run)!r} does not exist")
    if not run.is_dir():
        raise ViewError(f"{str(run)!r} is not a directory (expected a run directory written by "
                        "'connectome run')")
    record_path = run / "run.json"
    if not record_path.is_file():
        raise ViewError(f"{str(run)!r} is not a run directory: run.json is missing "
                        "(write one with 'connectome run WORKFLOW.yaml --output RUN_DIR')")
    try:
        record = json.loads(record_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ViewError(f"{record_path}: unreadable run record ({exc})") from None
    if not isinstance(record, dict):
        raise ViewError(f"{record_path}: expected a JSON object, got {type(record).__name__}")
    status = record.get("status")
    if status != "complete":
        raise ViewError(f"run {str(run)!r} is not complete (run.json status {status!r}); finish it "
                        "with 'connectome run' first")
    missing = [name for name in REQUIRED if not (run / name).exists()]
    if missing:
        raise ViewError(f"run directory {str(run)!r} lacks {', '.join(missing)}; rerun "
                        "'connectome run' to write them")
    return record


def _fingerprint(run: Path, skeletons: bool) -> dict[str, Any]:
    sources = {}
    for name in FINGERPRINT:
        path = run / name
        if path.exists():
            st = path.stat()
            sources[name] = [st.st_size, st.st_mtime_ns]
    return {"export_version": EXPORT_VERSION, "sources": sources, "skeletons": skeletons}


def _export_is_fresh(out: Path, fingerprint: dict[str, Any]) -> bool:
    try:
        stamp = json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict):
        return False
    needed = ("segmentation/info", "segmentation/segment_properties/info", "synapses/info")
    return (stamp.get("export_version") == fingerprint["export_version"]
            and stamp.get("sources") == fingerprint["sources"]
            and (stamp.get("skeletons") is True or not fingerprint["skeletons"])
            and all((out / n).is_file() for n in needed))


def ensure_export(run_dir: str | os.PathLike, output: str | os.PathLike | None = None, *,
                  rebuild: bool = False, skeletons: bool = False) -> Path:
    """Write the run's Neuroglancer precomputed export unless an up-to-date one exists.

    Parameters
    ----------
    run_dir : str or os.PathLike
        A finished run directory (see :func:`check_run_dir`).
    output : str or os.PathLike, optional
        Export folder; default ``RUN_DIR/neuroglancer``.
    rebuild : bool, default False
        Rewrite the export even when its fingerprint matches the run.
    skeletons : bool, default False
        Include kimimaro skeletons. They are the slow part of the export (about
        40 s of the 43 s on the bundled 96 x 256 x 256 sample, versus 3 s for
        segmentation, meshes and synapses), so the view leaves them out unless
        asked; an export that has them is reused either way.

    Returns
    -------
    pathlib.Path
        The export folder (``segmentation/``, ``synapses/``, ``source.json``).

    Raises
    ------
    ViewError
        If the export cannot be written (missing data, unwritable folder).

    Notes
    -----
    The export is fresh when ``output/source.json`` records the same export
    version and the same size and modification time of every file in
    :data:`FINGERPRINT` as the run has now (and skeletons, when asked for); ``connectome run`` rewrites
    ``run.json`` on every run, so a rerun always refreshes the export.
    """
    from graph.export import export
    from graph.export_common import ExportError

    run = Path(run_dir)
    out = Path(output) if output is not None else run / EXPORT_DIR
    fingerprint = _fingerprint(run, skeletons)
    if not rebuild and _export_is_fresh(out, fingerprint):
        log.info("using the Neuroglancer export in %s (up to date)", out)
        return out
    log.info("writing the Neuroglancer precomputed export to %s%s", out,
             " (with skeletons: this takes a while)" if skeletons else "")
    try:
        export(run, "precomputed", out, overwrite=True, skeletons=skeletons)
        tmp = out / f".{STAMP}.tmp"
        tmp.write_text(json.dumps(fingerprint, indent=1))
        os.replace(tmp, out / STAMP)
    except ExportError as exc:
        raise ViewError(f"cannot export run {str(run)!r} for Neuroglancer: {exc}") from None
    except PermissionError as exc:
        raise ViewError(f"cannot write the Neuroglancer export {str(out)!r}: {exc}") from None
    return out


def _candidates(run: Path, record: dict[str, Any], recorded: str) -> list[Path]:
    """Where a relative ``run.json["input"]`` may point: it is relative to the
    folder ``connectome run`` ran in, which we recover from the configured
    ``output`` (also relative to it) when the run directory ends with it."""
    path = Path(recorded)
    if path.is_absolute():
        return [path]
    out: list[Path] = []
    configured = (record.get("config") or {}).get("output")
    if isinstance(configured, str) and configured and not Path(configured).is_absolute():
        parts = Path(os.path.normpath(configured)).parts
        resolved = run.resolve()
        if len(resolved.parts) > len(parts) and resolved.parts[-len(parts):] == parts:
            out.append(Path(*resolved.parts[: -len(parts)]) / path)
    out += [Path.cwd() / path, run / path, run.parent / path]
    return out


def find_input_volume(run_dir: str | os.PathLike, record: dict[str, Any] | None = None,
                      volume: str | os.PathLike | None = None) -> Path | None:
    """The OME-Zarr input volume of a run, or None when it cannot be found.

    Parameters
    ----------
    run_dir : str or os.PathLike
        The run directory.
    record : dict, optional
        Its ``run.json`` (read when not given).
    volume : str or os.PathLike, optional
        An explicit volume path (``connectome view --volume``); it must exist.

    Returns
    -------
    pathlib.Path or None
        The volume folder (a Zarr v3 group with ``zarr.json``); None, with a
        warning naming the recorded path, when ``run.json["input"]`` is missing
        or points nowhere (the view then shows no raw channels).

    Raises
    ------
    ViewError
        If ``volume`` is given but is not a Zarr v3 group.
    """
    run = Path(run_dir)
    if volume is not None:
        path = Path(volume)
        if not (path / "zarr.json").is_file():
            raise ViewError(f"--volume {str(path)!r} is not an OME-Zarr (Zarr v3) volume: "
                            f"{path / 'zarr.json'} is missing")
        return path
    if record is None:
        record = json.loads((run / "run.json").read_text())
    recorded = record.get("input")
    if not isinstance(recorded, str) or not recorded:
        log.warning("run.json of %s records no input volume: showing no raw channels "
                    "(pass --volume PATH)", run)
        return None
    for path in _candidates(run, record, recorded):
        if (path / "zarr.json").is_file():
            return path
    log.warning("input volume %r of run %s not found: showing no raw channels "
                "(pass --volume PATH)", recorded, run)
    return None


# --------------------------------------------------------------------------- the data server


class _DataHandler(BaseHTTPRequestHandler):
    """GET/HEAD of files under the server's roots, with CORS and byte ranges."""

    server: DataServer
    protocol_version = "HTTP/1.1"
    _RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("data server: " + format, *args)

    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "range, x-requested-with, content-type")
        self.send_header("Access-Control-Expose-Headers", "content-range, content-length, etag")

    def _error(self, status: HTTPStatus, head: bool) -> None:
        self.server.record(self.command, self.path, int(status))
        body = f"{int(status)} {status.phrase}\n".encode()
        self.send_response(status)
        self._cors()
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _resolve(self) -> Path | None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        root_name, _, rest = path.lstrip("/").partition("/")
        root = self.server.roots.get(root_name)
        if root is None or not rest:
            return None
        target = (root / rest).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return None
        return target

    def do_OPTIONS(self) -> None:
        self.server.record(self.command, self.path, 204)
        self.send_response(HTTPStatus.NO_CONTENT)
        self._cors()
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self._send(head=True)

    def do_GET(self) -> None:
        self._send(head=False)

    def _send(self, head: bool) -> None:
        target = self._resolve()
        if target is None:
            self._error(HTTPStatus.NOT_FOUND, head)
            return
        try:
            size = target.stat().st_size
            start, end = 0, size  # [start, end)
            status = HTTPStatus.OK
            spec = self.headers.get("Range")
            if spec:
                m = self._RANGE.match(spec.strip())
                if m is None or (not m.group(1) and not m.group(2)):
                    self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, head)
                    return
                if m.group(1):
                    start = int(m.group(1))
                    end = min(size, int(m.group(2)) + 1) if m.group(2) else size
                else:  # suffix: the last N bytes
                    start = max(0, size - int(m.group(2)))
                if start >= size or start >= end:
                    self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, head)
                    return
                status = HTTPStatus.PARTIAL_CONTENT
            with open(target, "rb") as f:
                f.seek(start)
                data = b"" if head else f.read(end - start)
        except OSError:
            self._error(HTTPStatus.NOT_FOUND, head)
            return
        self.server.record(self.command, self.path, int(status))
        self.send_response(status)
        self._cors()
        if target.name in ("info", "zarr.json", STAMP) or target.suffix == ".json":
            ctype = "application/json"
        else:
            ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-store")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if not head:
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                log.debug("data server: client closed the connection during %s", self.path)


class DataServer(ThreadingHTTPServer):
    """Static, read-only file server for Neuroglancer: CORS headers and byte ranges.

    ``GET /NAME/REL/PATH`` returns the file ``roots[NAME]/REL/PATH``; anything
    else (directories, paths leaving a root, unknown names) is a 404. Runs in
    a daemon thread after :meth:`start`.

    Parameters
    ----------
    roots : mapping of str to path
        URL prefix -> folder served under it.
    host : str, default "127.0.0.1"
        Address to bind.
    port : int, default 0
        Port to bind; 0 picks a free one.

    Attributes
    ----------
    requests : collections.deque
        The last 10 000 ``(method, path, status)`` answered (for diagnostics and tests).
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, roots: dict[str, str | os.PathLike], host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.roots = {name: Path(p).resolve() for name, p in roots.items()}
        self.requests: collections.deque = collections.deque(maxlen=10_000)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _DataHandler)

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``."""
        host, port = self.server_address[:2]
        return f"http://{_url_host(host)}:{port}"

    def start(self) -> DataServer:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="connectome-view-data",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server_close()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return socket.getfqdn()
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------- the viewer


def _import_neuroglancer():
    try:
        import neuroglancer
    except ImportError as exc:
        raise ViewError(
            f"'connectome view' needs the neuroglancer package ({exc}); install it with "
            "pip install 'neuroglancer>=2.41,<3' (or reinstall this project: pip install -e .)"
        ) from None
    return neuroglancer


def _channel_shader(color: str | None, window: tuple[float, float] | None) -> str:
    rgb = color if isinstance(color, str) and re.fullmatch(r"[0-9A-Fa-f]{6}", color) else "FFFFFF"
    lines = [f'#uicontrol vec3 color color(default="#{rgb.lower()}")']
    if window is not None:
        lines.append(f"#uicontrol invlerp normalized(range=[{float(window[0]):g}, "
                     f"{float(window[1]):g}])")
    else:
        lines.append("#uicontrol invlerp normalized")
    lines.append("void main() {\n  emitRGB(color * normalized());\n}")
    return "\n".join(lines)


ANNOTATION_SHADER = """\
#uicontrol vec3 color color(default="#ffff00")
void main() {
  setColor(color);
  setEndpointMarkerSize(4.0, 4.0);
  setEndpointMarkerColor(vec4(1.0, 0.5, 0.0, 1.0), vec4(0.0, 1.0, 1.0, 1.0));
}
"""


#: ViewServers sharing neuroglancer's process-wide server; the last one to close stops it.
_NG_USERS = 0
_NG_LOCK = threading.Lock()


class ViewServer:
    """Serve a run directory to Neuroglancer (see the module docstring).

    Parameters
    ----------
    run_dir : str or os.PathLike
        A finished run directory.
    host : str, default "127.0.0.1"
        Address both servers bind; ``0.0.0.0`` exposes the run to the network.
    port : int, default 0
        Port of the viewer (the printed URL); 0 picks a free one. The data
        server always takes a free port.
    volume : str or os.PathLike, optional
        Input volume for the raw channels; default the one in ``run.json``.
    rebuild : bool, default False
        Rewrite the Neuroglancer export even when it is up to date.
    skeletons : bool, default False
        Also show skeletons (computed by the export when missing; slow).

    Attributes
    ----------
    url : str
        The Neuroglancer URL (after :meth:`start`).
    data : DataServer
        The file server (after :meth:`start`).
    viewer : neuroglancer.Viewer
        The viewer whose state the URL shows (after :meth:`start`).
    export_dir : pathlib.Path
        The precomputed export served under ``/precomputed/``.
    volume : pathlib.Path or None
        The raw volume served under ``/raw/``, if found.

    Examples
    --------
    >>> with ViewServer("runs/sample") as server:  # doctest: +SKIP
    ...     print(server.url)                     # open it in a browser
    """

    def __init__(self, run_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 0,
                 volume: str | os.PathLike | None = None, rebuild: bool = False,
                 skeletons: bool = False) -> None:
        if not isinstance(port, int) or not 0 <= port < 65536:
            raise ViewError(f"port must be an integer in 0..65535, got {port!r}")
        self.run_dir = Path(run_dir)
        self.host = host
        self.port = port
        self._volume_arg = volume
        self.rebuild = rebuild
        self.skeletons = skeletons
        self.url: str | None = None
        self.data: DataServer | None = None
        self.viewer: Any = None
        self.export_dir: Path | None = None
        self.volume: Path | None = None
        self.layers: list[str] = []
        self._tmp: Path | None = None
        self._ng_user = False

    # -- lifecycle --------------------------------------------------------
    def start(self) -> str:
        """Prepare the export, start both servers and set the viewer state.

        Returns
        -------
        str
            The Neuroglancer URL.

        Raises
        ------
        ViewError
            Bad run directory, unwritable export, port in use, neuroglancer missing.
        """
        neuroglancer = _import_neuroglancer()
        record = check_run_dir(self.run_dir)
        self.volume = find_input_volume(self.run_dir, record, self._volume_arg)
        self.export_dir = self._export()
        roots = {"precomputed": self.export_dir}
        if self.volume is not None:
            roots["raw"] = self.volume
        try:
            self.data = DataServer(roots, host=self.host).start()
            self._start_neuroglancer(neuroglancer)
            self.viewer = neuroglancer.Viewer()
            self.url = self.viewer.get_viewer_url()
            self._set_state(neuroglancer)
        except BaseException:
            self.close()
            raise
        log.info("serving %s (data at %s)", self.run_dir, self.data.url)
        return self.url

    def _export(self) -> Path:
        target = self.run_dir / EXPORT_DIR
        try:
            return ensure_export(self.run_dir, target, rebuild=self.rebuild, skeletons=self.skeletons)
        except ViewError:
            if os.access(self.run_dir, os.W_OK) and (not target.exists() or os.access(target, os.W_OK)):
                raise
        self._tmp = Path(tempfile.mkdtemp(prefix="connectome-view-"))
        log.warning("run directory %s is not writable: writing the Neuroglancer export to %s "
                    "(removed on exit)", self.run_dir, self._tmp)
        return ensure_export(self.run_dir, self._tmp / EXPORT_DIR, rebuild=True,
                             skeletons=self.skeletons)

    def _start_neuroglancer(self, neuroglancer) -> None:
        """Start (or share) neuroglancer's process-wide server with this host and port."""
        server = neuroglancer.server
        global _NG_USERS
        with _NG_LOCK:
            running = server.global_server
            if running is not None:
                host, port = running._bind_address, running.port
                if host != self.host or self.port not in (0, port):
                    raise ViewError(
                        f"a Neuroglancer server already runs in this process at {host}:{port}; "
                        f"close its viewers before serving on {self.host}:{self.port}")
            else:
                neuroglancer.set_server_bind_address(self.host, bind_port=self.port)
                try:
                    server.start()
                except OSError as exc:
                    raise ViewError(f"cannot serve the viewer on {self.host}:{self.port}: "
                                    f"{exc.strerror or exc}") from None
            _NG_USERS += 1
            self._ng_user = True

    def close(self) -> None:
        """Stop both servers and remove a temporary export."""
        if self.viewer is not None:
            import neuroglancer.server

            running = neuroglancer.server.global_server
            if running is not None:
                running.viewers.pop(self.viewer.token, None)
            self.viewer = None
        if self._ng_user:
            import neuroglancer.server

            global _NG_USERS
            with _NG_LOCK:
                _NG_USERS -= 1
                if _NG_USERS == 0:
                    # Neuroglancer's stop() joins its server thread with no timeout
                    # and waits for open connections to close (a browser keeps one):
                    # bound it, so Ctrl-C always ends the command.
                    stopper = threading.Thread(target=neuroglancer.server.stop, daemon=True,
                                               name="connectome-view-stop")
                    stopper.start()
                    stopper.join(STOP_TIMEOUT_S)
                    if stopper.is_alive():
                        log.warning("the Neuroglancer server did not stop within %.0f s; leaving it",
                                    STOP_TIMEOUT_S)
            self._ng_user = False
        if self.data is not None:
            self.data.stop()
            self.data = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the viewer state -------------------------------------------------
    def _set_state(self, neuroglancer) -> None:
        import pandas as pd

        info = json.loads((self.export_dir / "segmentation" / "info").read_text())
        scale = info["scales"][0]
        resolution = [float(v) for v in scale["resolution"]]  # x, y, z nm
        size = [int(v) for v in scale["size"]]
        data = self.data.url
        neurons = pd.read_parquet(self.run_dir / "neurons.parquet", columns=["neuron_id"])
        ids = [int(i) for i in neurons["neuron_id"].tolist()]
        with self.viewer.txn() as s:
            s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                                        scales=resolution)
            s.position = [v / 2 for v in size]
            # Fit the volume into the panels: scales are in units of the smallest voxel edge.
            extent = max(n * r for n, r in zip(size, resolution)) / min(resolution)
            s.cross_section_scale = extent / 300
            s.projection_scale = extent * 1.5
            for name, layer, visible in self._raw_layers(neuroglancer, data):
                s.layers[name] = layer
                s.layers[name].visible = visible
            s.layers["segmentation"] = neuroglancer.SegmentationLayer(
                source=f"precomputed://{data}/precomputed/segmentation",
                segments=ids if len(ids) <= MAX_SELECTED else [],
                # skeletons as thin lines: the default points clutter the cross-sections
                skeleton_rendering=neuroglancer.SkeletonRenderingOptions(mode2d="lines", mode3d="lines"),
            )
            s.layers["synapses"] = neuroglancer.AnnotationLayer(
                source=f"precomputed://{data}/precomputed/synapses",
                linked_segmentation_layer={"pre_segment": "segmentation",
                                           "post_segment": "segmentation"},
                shader=ANNOTATION_SHADER,
            )
            s.selected_layer.layer = "segmentation"
            s.layout = "4panel"
            self.layers = [layer.name for layer in s.layers]
        log.debug("viewer layers: %s", self.layers)

    def _raw_layers(self, neuroglancer, data: str):
        if self.volume is None:
            return []
        from pipeline.volume import Volume

        try:
            volume = Volume.open(self.volume, mode="r")
        except PipelineError as exc:
            log.warning("input volume %s is unusable (%s): showing no raw channels", self.volume, exc)
            return []
        layers = []
        fill_seen = False
        for index, channel in enumerate(volume.channels):
            visible = channel.role == "fill" and not fill_seen
            fill_seen = fill_seen or visible
            layer = neuroglancer.ImageLayer(
                source=f"zarr3://{data}/raw/",
                shader=_channel_shader(channel.color, channel.window),
                blend="additive",
            )
            layer.local_position = [index]
            name = f"raw {channel.name}" if channel.name in ("segmentation", "synapses") else channel.name
            layers.append([name, layer, visible])
        if layers and not fill_seen:
            layers[0][2] = True
        return layers


def serve(run_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 0,
          volume: str | os.PathLike | None = None, rebuild: bool = False,
          skeletons: bool = False, stop: threading.Event | None = None) -> int:
    """Serve a run to Neuroglancer until Ctrl-C (or ``stop`` is set); print the URL.

    Parameters
    ----------
    run_dir : str or os.PathLike
        A finished run directory.
    host : str, default "127.0.0.1"
        Address to bind; the default keeps the run private to this machine.
    port : int, default 0
        Viewer port; 0 picks a free one.
    volume : str or os.PathLike, optional
        Input volume for the raw channels (default: ``run.json``'s ``input``).
    rebuild : bool, default False
        Rewrite the Neuroglancer export even when it is up to date.
    skeletons : bool, default False
        Also show skeletons (the export computes them when missing; slow).
    stop : threading.Event, optional
        Serve until it is set instead of until Ctrl-C.

    Returns
    -------
    int
        0 once stopped.

    Raises
    ------
    ViewError
        See :meth:`ViewServer.start`.
    """
    server = ViewServer(run_dir, host=host, port=port, volume=volume, rebuild=rebuild,
                        skeletons=skeletons)
    url = server.start()
    previous = _catch_stop_signals()
    try:
        print(url, flush=True)
        log.info("Neuroglancer is serving %s; press Ctrl-C to stop", run_dir)
        waiter = stop if stop is not None else threading.Event()
        while not waiter.wait(0.5):
            pass
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _catch_stop_signals() -> dict:
    """Make Ctrl-C (SIGINT) and SIGTERM stop the server cleanly; return the handlers they replace.

    A process started with SIGINT ignored (a background job of a script, or a
    child of a process that ignores it) inherits that, and Python then never
    raises KeyboardInterrupt: the command could not be stopped with Ctrl-C.
    Only possible from the main thread; elsewhere nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, _raise_interrupt)
    return previous
