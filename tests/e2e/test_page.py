"""The page in a real headless Chromium (Debian's package, driven by Playwright) against a real server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clipseek import load_model, synth
from clipseek.collection import Collection
from clipseek.indexer import Indexer

from ..conftest import missing, need_module
from ..serving import running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]

if not CHROMIUM:
    missing("chromium", "`make test` installs it (apt-get install chromium)")
sync_api = need_module("playwright.sync_api")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    torch = need_module("torch")
    import dataclasses

    from clipseek.models.loader import export_model
    from clipseek.train import create_model

    base = tmp_path_factory.mktemp("page")
    gallery = synth.write_dataset(base / "g", 48, seed=101)
    tiny = load_model("tiny")
    spec = dataclasses.replace(tiny.spec, name="tiny-b", slug="tiny_b", bundled_dir=None, aliases=())
    torch.manual_seed(0)
    other = load_model(f"local-dir:{export_model(create_model(tiny.spec), spec, base / 'tiny_b')}")
    with Collection.create(base / "c") as coll:
        Indexer(coll, tiny).run([gallery / "images"])
        Indexer(coll, other).run([gallery / "images"])
    captions = [line.split("\t", 1) for line in (gallery / "captions.txt").read_text().splitlines()]
    with running_server(base / "c", base, "--model", "tiny") as (url, _port), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser, url + "/", captions, gallery
        browser.close()


def library_top(caption: str, gallery: Path) -> str:
    """The library's own first hit for a caption (the page must show the same)."""
    model = load_model("tiny")
    vecs = model.embed_images(sorted((gallery / "images").iterdir()))
    names = sorted(p.name for p in (gallery / "images").iterdir())
    return names[int((vecs @ model.embed_texts([caption])[0]).argmax())]


def open_page(browser, url, width=1280, height=720):
    """The page loaded and its model list filled; page errors (uncaught JavaScript) collect in the list."""
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("#model option", state="attached")
    return page, errors


def test_search_detail_more_like_this_upload_compare(site):
    browser, url, captions, gallery = site
    page, errors = open_page(browser, url, width=1200, height=900)
    name, caption = captions[30]
    page.fill("#q", caption)
    page.keyboard.press("Enter")
    page.wait_for_selector("#pane1 .card")
    first = page.locator("#pane1 .card").first
    assert first.locator(".rel span").last.inner_text() == library_top(caption, gallery)
    assert name in page.locator("#pane1 .card .rel span:last-child").all_inner_texts()[:5]
    assert "48 matches" in page.locator("#pane1 .status").inner_text()
    assert page.locator("#pane1 .card img").first.evaluate("img => img.complete && img.naturalWidth > 0")

    first.click()  # detail view
    page.wait_for_selector("#detail[open]")
    assert "file" in page.locator("#detail-info").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-detail.png"))
    clicked = page.locator("#detail-info dd").first.inner_text()
    page.click("#like")  # more like this: the image itself comes first
    page.wait_for_function("document.querySelector('#file-name').textContent.startsWith('like')")
    page.wait_for_function(f"document.querySelector('#pane1 .card .rel span:last-child')?.textContent === '{clicked}'")

    page.set_input_files("#file", str(gallery / "images" / name))  # search by image
    page.wait_for_function(f"document.querySelector('#pane1 .card .rel span:last-child')?.textContent === '{name}'")

    other = page.eval_on_selector("#model2",
                                  "s => [...s.options].map(o => o.value).find(v => v.startsWith('local-dir:'))")
    page.select_option("#model2", other)  # compare with the second model, side by side
    page.wait_for_selector("#pane2 .card")
    assert page.locator("#pane2 .status").inner_text().startswith("local-dir:")
    page.screenshot(path=str(ARTIFACTS / "page-compare.png"), full_page=True)
    assert errors == []


def test_errors_are_shown_in_words(site):
    browser, url, _, _ = site
    page, _errors = open_page(browser, url)
    page.keyboard.press("Enter")  # nothing typed
    page.wait_for_selector("#error:not([hidden])")
    assert "Type what you are looking for" in page.inner_text("#error")


def test_phone_width_and_keyboard(site):
    browser, url, captions, _ = site
    page, errors = open_page(browser, url, width=390, height=800)
    page.fill("#q", captions[3][1])
    page.keyboard.press("Enter")
    page.wait_for_selector("#pane1 .card")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.locator("#pane1 .card").first.focus()
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement === document.querySelectorAll('.card')[1]")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#detail').open", timeout=5000)
    assert errors == [], errors
    page.keyboard.press("Escape")
    page.wait_for_function("!document.querySelector('#detail').open")
    page.screenshot(path=str(ARTIFACTS / "page-phone.png"))


def test_the_duplicates_toggle_asks_for_collapsed_results(site):
    import json

    browser, url, captions, _ = site
    page, errors = open_page(browser, url)
    asked: list[dict] = []
    page.on("request", lambda r: asked.append(json.loads(r.post_data or "{}")) if "/api/search" in r.url else None)
    page.fill("#q", captions[7][1])
    page.keyboard.press("Enter")
    page.wait_for_selector("#pane1 .card")
    assert asked and "collapse" not in asked[-1]
    with page.expect_response(lambda r: "/api/search" in r.url) as answer:
        page.check("#collapse")
    assert answer.value.ok and asked[-1].get("collapse") == "true", asked
    page.wait_for_selector("#pane1 .card")
    assert errors == []
