"""Finding weights: local files and folders, and Hub downloads served from a loopback server.

The Hub tests run a small HTTP server on 127.0.0.1 that answers like the Hugging Face Hub
(``/<owner>/<name>/resolve/<revision>/<file>`` with ``X-Repo-Commit`` and an LFS ``ETag`` that
is the file's SHA-256). It listens on loopback only, serves a handful of requests per test and
is shut down when the test ends.
"""

import hashlib
import http.server
import io
import threading

import pytest
import torch

from gpfm.backbone.weights import (
    ChecksumMismatchError,
    HubId,
    WeightsError,
    WeightsNotFoundError,
    file_sha256,
    parse_hub_id,
    resolve_weights,
)
from gpfm.backbone.zoo import load_encoder, register_encoder, unregister_encoder

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeHub:
    """Files of fake repositories served the way the Hub serves LFS files."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.claimed: dict[tuple[str, str], str] = {}  # an ETag that lies, to test the check
        self.requests: list[tuple[str, str]] = []
        handler = self._handler()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.timeout = 5
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo: str, filename: str, data: bytes) -> None:
        self.files[(repo, filename)] = data

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.requests if m == method)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def _handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _answer(self, with_body: bool) -> None:
                hub.requests.append((self.command, self.path))
                parts = self.path.lstrip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    self.send_error(404)
                    return
                repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                data = hub.files.get((repo, filename))
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = hub.claimed.get((repo, filename), sha256(data))
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if with_body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._answer(with_body=False)

            def do_GET(self):
                self._answer(with_body=True)

        return Handler


@pytest.fixture
def hub():
    server = FakeHub()
    yield server
    server.close()


@pytest.fixture
def hub_options(hub, tmp_path):
    """Download into a private cache, from the loopback server, sending no token."""
    return {"endpoint": hub.endpoint, "cache_dir": tmp_path / "hub-cache", "token": False}


def checkpoint_bytes(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save({"weight": torch.randn(4, 4)}, buffer)
    return buffer.getvalue()


# ---- local files and folders ----


def test_a_local_file_is_used_as_it_is_with_its_sha256(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(checkpoint_bytes())
    found = resolve_weights(path)
    assert found.path == path and found.source == str(path)
    assert found.sha256 == sha256(path.read_bytes()) == file_sha256(path)
    assert resolve_weights(str(path), sha256=found.sha256.upper()).sha256 == found.sha256


def test_a_file_with_another_sha256_than_expected_is_refused(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(checkpoint_bytes())
    with pytest.raises(ChecksumMismatchError, match="expected 00000"):
        resolve_weights(path, sha256="0" * 64)
    with pytest.raises(WeightsError, match="64 hexadecimal"):
        resolve_weights(path, sha256="abc")


def test_a_folder_gives_its_preferred_or_only_weights_file(tmp_path):
    (tmp_path / "notes.txt").write_text("not weights")
    (tmp_path / "only.pth").write_bytes(checkpoint_bytes())
    assert resolve_weights(tmp_path).path.name == "only.pth"
    (tmp_path / "pytorch_model.bin").write_bytes(checkpoint_bytes(1))
    assert resolve_weights(tmp_path).path.name == "pytorch_model.bin"
    (tmp_path / "model.safetensors").write_bytes(b"...")
    assert resolve_weights(tmp_path).path.name == "model.safetensors"


def test_a_folder_with_several_candidates_or_none_is_an_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="no weights file"):
        resolve_weights(tmp_path)
    (tmp_path / "a.pth").write_bytes(b"a")
    (tmp_path / "b.bin").write_bytes(b"b")
    with pytest.raises(WeightsError, match=r"several weights files \(a.pth, b.bin\)"):
        resolve_weights(tmp_path)


def test_a_missing_path_is_an_error_that_suggests_the_hub_spelling(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="no weights file or folder"):
        resolve_weights(tmp_path / "nope.pth")
    with pytest.raises(WeightsNotFoundError, match="hf-hub:MahmoodLab/UNI"):
        resolve_weights("MahmoodLab/UNI")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf-hub:MahmoodLab/UNI", HubId("MahmoodLab/UNI")),
        ("hf_hub:owkin/phikon-v2", HubId("owkin/phikon-v2")),
        ("hf-hub:a/b/sub/w.pth", HubId("a/b", filename="sub/w.pth")),
        ("hf-hub:a/b@v1.0", HubId("a/b", revision="v1.0")),
        ("hf-hub:a/b/w.bin@" + COMMIT, HubId("a/b", filename="w.bin", revision=COMMIT)),
        ("weights/model.pth", None),
    ],
)
def test_hub_ids_are_parsed(text, expected):
    assert parse_hub_id(text) == expected
    if expected is not None:
        assert parse_hub_id(str(expected)) == expected


@pytest.mark.parametrize("text", ["hf-hub:", "hf-hub:onlyowner", "hf-hub:a/b@"])
def test_malformed_hub_ids_are_errors(text):
    with pytest.raises(WeightsError, match="not a Hub id"):
        parse_hub_id(text)


# ---- the Hub, served from 127.0.0.1 ----


def test_a_hub_file_is_downloaded_once_checked_and_then_read_from_the_cache(hub, hub_options):
    data = checkpoint_bytes()
    hub.add("lab/model", "pytorch_model.bin", data)
    first = resolve_weights("hf-hub:lab/model", hub_filename="pytorch_model.bin", **hub_options)
    assert first.path.read_bytes() == data and first.sha256 == sha256(data)
    assert first.source == "hf-hub:lab/model"
    assert hub.count("GET") == 1
    again = resolve_weights("hf-hub:lab/model", hub_filename="pytorch_model.bin", **hub_options)
    assert again.path == first.path and hub.count("GET") == 1  # no second download
    hub.close()  # offline from now on: the cache alone must answer
    offline = resolve_weights(
        "hf-hub:lab/model", hub_filename="pytorch_model.bin", local_files_only=True, **hub_options
    )
    assert offline.path.read_bytes() == data


def test_a_download_whose_content_is_not_the_published_hash_is_refused_and_evicted(
    hub, hub_options
):
    data = checkpoint_bytes()
    hub.add("lab/model", "model.safetensors", data)
    hub.claimed[("lab/model", "model.safetensors")] = sha256(b"what the hub says it holds")
    with pytest.raises(ChecksumMismatchError, match="download it again"):
        resolve_weights("hf-hub:lab/model", **hub_options)
    del hub.claimed[("lab/model", "model.safetensors")]
    fixed = resolve_weights("hf-hub:lab/model", **hub_options)  # fetched again, now correct
    assert fixed.sha256 == sha256(data) and hub.count("GET") == 2


def test_a_pinned_sha256_is_checked_against_the_download(hub, hub_options):
    hub.add("lab/model", "model.safetensors", checkpoint_bytes())
    with pytest.raises(ChecksumMismatchError):
        resolve_weights("hf-hub:lab/model", sha256="f" * 64, **hub_options)


def test_without_a_filename_the_usual_names_are_tried_in_order(hub, hub_options):
    data = checkpoint_bytes()
    hub.add("lab/model", "pytorch_model.bin", data)
    found = resolve_weights("hf-hub:lab/model", **hub_options)
    assert found.path.name == "pytorch_model.bin" and found.path.read_bytes() == data
    named = resolve_weights("hf-hub:lab/model/pytorch_model.bin", **hub_options)
    assert named.sha256 == found.sha256


def test_a_file_absent_from_the_repository_is_named_in_the_error(hub, hub_options):
    hub.add("lab/model", "other.pth", b"x")
    with pytest.raises(WeightsNotFoundError, match=r"model.safetensors or pytorch_model.bin"):
        resolve_weights("hf-hub:lab/model", **hub_options)


def test_offline_with_nothing_cached_is_an_error_that_says_what_to_do(hub, hub_options):
    # (an unreachable Hub ends the same way, after huggingface_hub's own retries)
    hub.add("lab/model", "w.pth", b"never fetched")
    with pytest.raises(WeightsNotFoundError, match="pass its path as weights="):
        resolve_weights(
            "hf-hub:lab/model", hub_filename="w.pth", local_files_only=True, **hub_options
        )
    assert hub.requests == []


def test_a_zoo_entry_loads_from_its_hub_id(hub, hub_options):
    @register_encoder(
        "hub-tiny",
        embed_dim=192,
        preprocessing=load_encoder("vit_tiny_patch16", device="meta").preprocessing,
        hub_id="lab/hub-tiny",
        hub_filename="tiny.pth",
        embedding=lambda model, batch: model(batch)["cls"],
    )
    def hub_tiny():
        from gpfm.backbone.vit import create_vit

        return create_vit("vit_tiny_patch16", depth=2)

    try:
        source = hub_tiny().eval()
        buffer = io.BytesIO()
        torch.save(source.state_dict(), buffer)
        hub.add("lab/hub-tiny", "tiny.pth", buffer.getvalue())
        encoder = load_encoder("hub-tiny", weights="hf-hub:lab/hub-tiny", **hub_options)
        assert encoder.weights_sha256 == sha256(buffer.getvalue())
        batch = torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            torch.testing.assert_close(encoder(batch), source(batch)["cls"])
    finally:
        unregister_encoder("hub-tiny")
