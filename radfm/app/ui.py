"""The page of ``radfm app`` (Gradio Blocks) and the server that serves it on loopback.

Gradio is mounted on our own FastAPI app and run by uvicorn here, not by ``Blocks.launch``: launch checks for
new Gradio versions online, can open share tunnels and binds wherever it is told, none of which belongs in a view
of patients' scans. What this server does instead:

- binds one loopback socket (:func:`radfm.app.check_host`) and answers only requests whose ``Host`` is a loopback
  name (Starlette's ``TrustedHostMiddleware``, as radfm's Prefect server: a DNS-rebinding page gets 400);
- turns Gradio's analytics off (``GRADIO_ANALYTICS_ENABLED`` and the Blocks' own flag) and serves its fonts and
  scripts itself: Gradio 6's themes use fonts it ships, so the page renders with the network closed;
- keeps uploads in a temporary folder of this process (``GRADIO_TEMP_DIR``), removed when the app stops, and
  refuses an upload over ``RADFM_MAX_IMAGE_BYTES`` (:mod:`radfm.registry.limits`) before it is stored.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from radfm.app import PortInUseError, check_host
from radfm.app.session import AppModel

TITLE = "radfm: ask a model about a scan"
# The slice fills its frame whatever its size: a 32-pixel phantom is scaled up, a 512-pixel CT slice fits.
CSS = "#slice-image img { width: 100%; height: 100%; object-fit: contain; }"
NOTICE = ("A research model, **not for clinical use**. The *image-ablated answer* is the same question asked with "
          "a blank image (RadBench's `ablated` baseline): where the two answers agree, the answer did not come "
          "from the image.")


def build_blocks(model: AppModel, max_new_tokens: int, work: Path) -> Any:
    """The page: upload, slice slider and picture, question, answer beside the image-ablated answer. ``work`` is
    where a DICOM series uploaded as several files is put together."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from radfm.app.study import Study, assemble, load_study
    from radfm.registry.limits import PredictInputError

    def on_upload(files: list[str] | None) -> tuple[Any, ...]:
        if not files:
            return on_clear()
        try:
            study = load_study(assemble(files, work))
        except PredictInputError as exc:
            raise gr.Error(str(exc)) from None
        middle = study.depth // 2 + 1  # slices are counted from 1, on the slider as in the picture's label
        slider = gr.Slider(minimum=1, maximum=max(study.depth, 2), value=middle, step=1,
                           visible=study.depth > 1, interactive=study.depth > 1)
        return study, slider, _picture(study, middle), study.summary, "", ""

    def on_clear() -> tuple[Any, ...]:
        return None, gr.Slider(value=1, visible=False), gr.Image(value=None, label="Slice"), "", "", ""

    def on_slice(study: Study | None, k: float) -> Any:
        return _picture(study, int(k)) if study is not None else gr.Image()

    def on_ask(study: Study | None, question: str) -> tuple[str, str]:
        if study is None:
            raise gr.Error("upload an image or scan first")
        try:
            answers = model.ask(question, study.path, max_new_tokens)
        except PredictInputError as exc:
            raise gr.Error(study.plain(str(exc))) from None
        return answers.answer, answers.ablated

    def _picture(study: Study, number: int) -> Any:
        """Slice ``number`` (from 1) with its number as the label."""
        number = min(max(number, 1), study.depth)
        return gr.Image(value=study.slice(number - 1), label=f"Slice {number} of {study.depth}")

    with gr.Blocks(title="radfm", analytics_enabled=False, delete_cache=(600, 3600)) as blocks:
        gr.Markdown(f"## {TITLE}\nModel: `{model.uri}`. {NOTICE}")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Image or scan: PNG/JPEG, NIfTI (.nii/.nii.gz), or the .dcm files of one "
                                "DICOM series", file_count="multiple", type="filepath", elem_id="upload")
                info = gr.Markdown(elem_id="study-info")
                question = gr.Textbox(label="Question", lines=2, placeholder="e.g. Which modality is this image?",
                                      elem_id="question")
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column(scale=1):
                picture = gr.Image(label="Slice", type="numpy", image_mode=None, format="png", interactive=False,
                                   height=480, buttons=["download", "fullscreen"], elem_id="slice-image")
                slider = gr.Slider(minimum=1, maximum=2, value=1, step=1, label="Slice (scroll through the scan)",
                                   visible=False, elem_id="slice")
        with gr.Row():
            answer = gr.Textbox(label="Answer", interactive=False, lines=3, elem_id="answer")
            ablated = gr.Textbox(label="Image-ablated answer (the same question, a blank image)", interactive=False,
                                 lines=3, elem_id="ablated")
        loaded = [state, slider, picture, info, answer, ablated]
        files.upload(on_upload, [files], loaded)
        files.clear(on_clear, None, loaded)
        slider.change(on_slice, [state, slider], [picture], show_progress="hidden")
        for event in (ask.click, question.submit):
            event(on_ask, [state, question], [answer, ablated])
    return blocks


def create_app(model: AppModel, host: str, port: int, max_new_tokens: int, upload_dir: Path) -> Any:
    """The FastAPI app: the page at ``/``, loopback ``Host`` names only, uploads under ``upload_dir`` (which must
    be ``GRADIO_TEMP_DIR`` while the app runs: :func:`_uploads`)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr
    from fastapi import FastAPI
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from radfm.registry.limits import max_image_bytes
    from radfm.services.process import LOOPBACK_NAMES

    blocks = build_blocks(model, max_new_tokens, upload_dir / "series")
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    own = f"[{host}]" if ":" in host else host  # a browser sends an IPv6 address in brackets: Host: [::1]:7860
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=sorted({*LOOPBACK_NAMES, own}))
    return gr.mount_gradio_app(app, blocks, path="/", server_name=host, server_port=port, footer_links=[],
                               max_file_size=max_image_bytes(), ssr_mode=False, mcp_server=False, pwa=False,
                               enable_monitoring=False, css=CSS)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on loopback ``host``:``port`` (0: a free port); :class:`PortInUseError` when it is
    taken, :class:`ValueError` (:func:`radfm.app.check_host`) for an address that is not loopback."""
    host = check_host(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUseError(f"cannot listen on {host}:{port} ({exc.strerror}): pass another --port, or 0 for "
                             "a free one") from None
    sock.listen(128)
    return sock


@contextmanager
def running(model: AppModel, host: str = "127.0.0.1", port: int = 0, max_new_tokens: int = 64) -> Iterator[str]:
    """The app served from a background thread while the block runs → its URL (``port`` 0: a free port)."""
    import threading

    sock = bind(host, port)
    try:
        with _uploads() as uploads:
            server, url = _server(model, sock, max_new_tokens, uploads)
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="radfm-app", daemon=True)
            thread.start()
            try:
                while not server.started:
                    if not thread.is_alive():
                        raise RuntimeError("radfm app: the server stopped while starting (see the log above)")
                    thread.join(0.05)
                yield url
            finally:
                server.should_exit = True
                thread.join(30)
    finally:
        sock.close()


def serve(model: AppModel, sock: socket.socket, max_new_tokens: int = 64,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the app on ``sock`` (:func:`bind`) in this thread until Ctrl-C (or SIGTERM); ``on_ready(url)`` once
    it answers. The caller binds first, so that a port in use is reported before the model is loaded."""
    with _stopped_by_signal(), _uploads() as uploads:
        server, url = _server(model, sock, max_new_tokens, uploads)
        if on_ready is not None:
            startup = server.startup

            async def announce(sockets: Any = None) -> None:  # after the app's startup, when it really answers
                await startup(sockets)
                on_ready(url)

            server.startup = announce  # type: ignore[method-assign]
        server.run(sockets=[sock])


class _TerminatedError(Exception):
    """SIGTERM, once uvicorn has shut down and hands the signal back."""


@contextmanager
def _stopped_by_signal() -> Iterator[None]:
    """A clean end on Ctrl-C or SIGTERM. uvicorn shuts down gracefully on either, then raises the signal again for
    its caller: Ctrl-C would come back as a ``KeyboardInterrupt`` with a traceback, and SIGTERM's default action
    would end the process before the uploads folder is removed."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()  # signal handlers belong to the main thread

    def stop(signum: int, frame: Any) -> None:
        raise _TerminatedError

    previous = signal.signal(signal.SIGTERM, stop) if main else None
    try:
        yield
    except (KeyboardInterrupt, _TerminatedError):
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


@contextmanager
def _uploads() -> Iterator[Path]:
    """A temporary folder for this app's uploads, removed when it stops. Gradio reads ``GRADIO_TEMP_DIR`` when it
    builds the page and again whenever it checks that a file it serves is one of its uploads: it is set while the
    app runs, and the previous value restored after (the app may run inside a longer process, as in tests)."""
    previous = os.environ.get("GRADIO_TEMP_DIR")
    with tempfile.TemporaryDirectory(prefix="radfm-app-") as folder:
        os.environ["GRADIO_TEMP_DIR"] = folder
        try:
            yield Path(folder)
        finally:
            if previous is None:
                os.environ.pop("GRADIO_TEMP_DIR", None)
            else:
                os.environ["GRADIO_TEMP_DIR"] = previous


def _server(model: AppModel, sock: socket.socket, max_new_tokens: int, upload_dir: Path) -> tuple[Any, str]:
    """(uvicorn server, the page's URL) for the app on the bound ``sock`` (its port is known, even for port 0,
    before Gradio needs it)."""
    import uvicorn

    host, port = str(sock.getsockname()[0]), int(sock.getsockname()[1])
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    app = create_app(model, host, port, max_new_tokens, upload_dir)
    # no access log: one line per slider step would bury what matters
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    return uvicorn.Server(config), url
