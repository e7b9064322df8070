"""``radfm app`` in a real headless browser: Debian's chromium, driven by Playwright, against the app served on a
free 127.0.0.1 port over the champion of a local registry (the tiny checkpoint of tests/registry).

The test uploads a NIfTI made with nibabel, scrolls its slices, asks a question and reads both answers; each must
be what the library gives for the same input: :func:`radfm.registry.inference.predict` (``radfm predict``) for the
answer, and for the image-ablated answer the served model's own path with the image replaced by zeros of its
preprocessed shape (RadBench's ``ablated`` system). Every request the page makes that leaves 127.0.0.1 is refused
and recorded: the page must render and work with the network closed.

A screenshot of the answered page is kept: ``<pytest tmp dir>/radfm-app.png``, and copied to
``$RADFM_TEST_ARTIFACTS/radfm-app.png`` when that variable names a folder (CI keeps it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests.registry import test_registry as shared

pytestmark = pytest.mark.timeout(240)

# The fixtures live in test_registry (no conftest of their own); binding them here makes pytest see them.
checkpoint_dir, local_registry = shared.checkpoint_dir, shared.local_registry

QUESTION = "Is there a nodule?"
MAX_NEW_TOKENS = 12
DEPTH = 8
ARTIFACTS_ENV = "RADFM_TEST_ARTIFACTS"
# No GPU, no background services (safe browsing, component updates, sync): nothing but the page's own requests.
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run",
                # every host name but the loopback address resolves to nothing: the network is closed
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


@pytest.fixture()
def champion(local_registry: str, checkpoint_dir: Path) -> str:
    """The tiny checkpoint registered and made ``models:/radfm@champion`` → the tracking URI."""
    import mlflow

    from radfm.registry.pyfunc import log_pyfunc
    from radfm.registry.registry import register

    version = register(log_pyfunc(checkpoint_dir, radbench_summary=shared.summary(0.9, 0.8)))
    mlflow.MlflowClient().set_registered_model_alias("radfm", "champion", version.version)
    return local_registry


@pytest.fixture()
def nifti(tmp_path: Path) -> Path:
    """A small axial scan of ``DEPTH`` slices, each brighter than the last (so a slice can be told apart)."""
    import nibabel as nib

    rng = np.random.default_rng(3)
    vol = rng.normal(size=(32, 32, DEPTH)).astype(np.float32) + np.arange(DEPTH, dtype=np.float32)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0])), path)
    return path


@pytest.fixture()
def browser() -> Iterator[object]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`apt-get install -y chromium`; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        try:
            yield b
        finally:
            b.close()


def reference_answers(uri: str, image: Path) -> tuple[str, str]:
    """(answer, image-ablated answer) from the library: ``radfm predict``'s function, and the served model's own
    decoding with the preprocessed image replaced by zeros."""
    import torch

    from radfm.data.transforms import checkpoint_transform, preprocess
    from radfm.registry.inference import load, predict

    pyfunc = load("models:/radfm@champion", uri)  # loaded here, apart from the app's own copy
    answer = predict("models:/radfm@champion", QUESTION, [image], max_new_tokens=MAX_NEW_TOKENS, model=pyfunc)
    served = pyfunc.unwrap_python_model()
    model, tok = served.model, served.tokenizer
    pixels = preprocess(image, checkpoint_transform(served.checkpoint_dir, model.cfg.vision.image_size))
    batch = tok.pad([tok.format_prompt(QUESTION, None, ["start"])], side="left")
    with torch.no_grad():
        new = model.generate(batch["input_ids"], batch["attention_mask"], [torch.zeros_like(pixels)],
                             max_new_tokens=MAX_NEW_TOKENS, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    return answer, tok.decode(new[0].tolist())


def keep_artifact(path: Path) -> Path | None:
    folder = os.environ.get(ARTIFACTS_ENV)
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(path, Path(folder) / path.name))


def test_upload_scroll_ask_in_a_browser(champion: str, nifti: Path, browser: object, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from radfm.app import DEFAULT_MODEL
    from radfm.app.session import AppModel
    from radfm.app.ui import running

    expected_answer, expected_ablated = reference_answers(champion, nifti)
    assert expected_answer.strip() and expected_ablated.strip()
    model = AppModel.load(DEFAULT_MODEL, tracking_uri=champion)
    with running(model, "127.0.0.1", 0, max_new_tokens=MAX_NEW_TOKENS) as url:
        assert urlsplit(url).hostname == "127.0.0.1"
        origin = url.rstrip("/")
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        outside: list[str] = []

        def only_the_app(route: object) -> None:
            request_url = route.request.url
            if request_url.startswith((origin + "/", "data:", "blob:")) or request_url == origin:
                route.continue_()
            else:
                outside.append(request_url)
                route.abort()

        page.route("**/*", only_the_app)
        page.goto(url)
        # the guard itself: a request beyond the app is refused and recorded (then forgotten: it was ours)
        probe = "https://fonts.googleapis.com/css2?family=Probe"
        page.evaluate("url => fetch(url).catch(() => null)", probe)
        assert outside == [probe]
        outside.clear()
        page.locator("#upload input[type=file]").set_input_files(str(nifti))

        label = page.locator("#slice-image").get_by_text("of 8")
        expect(label).to_have_text(f"Slice {DEPTH // 2 + 1} of {DEPTH}")
        expect(page.locator("#study-info")).to_contain_text(f"32 × 32 × {DEPTH}")
        first = page.locator("#slice-image img").get_attribute("src")
        rng = page.locator("#slice input[type=range]")
        rng.focus()
        rng.press("ArrowRight")
        rng.press("ArrowRight")
        expect(label).to_have_text(f"Slice {DEPTH // 2 + 3} of {DEPTH}")
        expect(page.locator("#slice-image img")).not_to_have_attribute("src", first or "")

        page.locator("#question textarea").fill(QUESTION)
        page.locator("#ask").click()
        expect(page.locator("#answer textarea")).to_have_value(expected_answer, timeout=60_000)
        expect(page.locator("#ablated textarea")).to_have_value(expected_ablated)
        shot = tmp_path / "radfm-app.png"
        page.screenshot(path=str(shot), full_page=True)
        page.close()
    assert shot.stat().st_size > 10_000
    kept = keep_artifact(shot)
    print(f"screenshot: {shot}" + (f" (kept as {kept})" if kept else ""))
    assert outside == [], f"the page asked for something beyond the app: {outside}"
