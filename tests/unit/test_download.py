"""Downloading weights from the hub: resumable, kept only with the SHA-256 the hub publishes (a local stand-in hub)."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest

from clipseek.errors import ModelError
from clipseek.models import get_spec
from clipseek.models.loader import download_weights

from ..hub_server import Hub, serve

REPO_ID, FILE = "someone/clip-weights", "open_clip_model.safetensors"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    hub = Hub()
    server, _thread = serve(hub)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    data = tmp_path / "served.bin"
    data.write_bytes(os.urandom(3_000_000))
    hub.sha = hub.add(REPO_ID, FILE, data)
    yield hub
    server.shutdown()


@pytest.fixture
def spec():
    return dataclasses.replace(get_spec("ViT-B/32"), weights={"hf_hub": REPO_ID, "filename": FILE})


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_download_is_verified_and_kept(hub, spec, tmp_path):
    said = []
    path = download_weights(spec, tmp_path / "w", said.append)
    assert path == tmp_path / "w" / spec.slug / FILE and sha256(path) == hub.sha
    assert ("HEAD", f"/{REPO_ID}/resolve/main/{FILE}", None) in hub.requests
    assert any(REPO_ID in s for s in said)
    hub.requests.clear()
    assert download_weights(spec, tmp_path / "w", said.append) == path and hub.requests == []  # no second download


def test_a_dropped_connection_resumes_on_the_next_run(hub, spec, tmp_path):
    hub.truncate_after = 1_000_000
    with pytest.raises(ModelError, match="stopped after 1.0 of 3.0 MB.*run the same command again to resume"):
        download_weights(spec, tmp_path / "w", lambda _m: None)
    partial = tmp_path / "w" / spec.slug / (FILE + ".part")
    assert partial.stat().st_size == 1_000_000 and not (tmp_path / "w" / spec.slug / FILE).exists()
    said = []
    path = download_weights(spec, tmp_path / "w", said.append)
    assert sha256(path) == hub.sha and not partial.exists()
    assert hub.requests[-1][0] == "GET" and hub.requests[-1][2] == "bytes=1000000-"  # asked for the rest only
    assert any("resuming at 1.0 MB" in s for s in said)


def test_a_corrupt_download_is_deleted_and_the_next_run_starts_over(hub, spec, tmp_path):
    hub.corrupt = True
    with pytest.raises(ModelError, match=f"but the hub publishes {hub.sha}: the download was deleted"):
        download_weights(spec, tmp_path / "w", lambda _m: None)
    assert list((tmp_path / "w" / spec.slug).iterdir()) == []
    hub.corrupt = False
    assert sha256(download_weights(spec, tmp_path / "w", lambda _m: None)) == hub.sha
    assert hub.requests[-1][2] is None  # a fresh download, not a resume of the bad bytes


def test_a_file_the_hub_publishes_no_hash_for_is_refused(hub, spec, tmp_path):
    hub.publish_hash = False
    with pytest.raises(ModelError, match="publishes no SHA-256.*--weights FILE"):
        download_weights(spec, tmp_path / "w", lambda _m: None)
    assert not (tmp_path / "w" / spec.slug / FILE).exists()


def test_the_registry_hash_wins_over_the_hub(hub, spec, tmp_path):
    pinned = dataclasses.replace(spec, weights={**spec.weights, "sha256": "0" * 64})
    with pytest.raises(ModelError, match="but the registry records 0000"):
        download_weights(pinned, tmp_path / "w", lambda _m: None)
