"""Find a model's weights: a local file, a local folder, or a Hugging Face Hub repository.

``resolve_weights`` accepts

- a **file** (``.safetensors``, ``.pth``, ``.pt``, ``.bin``): used as it is;
- a **folder**: a folder exported by training (``encoder.json`` names its weights file, see
  ``gpfm.backbone.zoo.exported``), a Hub snapshot or any folder holding exactly one weights file
  (``model.safetensors`` and ``pytorch_model.bin`` are preferred when several are present);
- a **Hub id** written ``hf-hub:owner/name`` (optionally ``hf-hub:owner/name/path/in/repo.bin``
  and ``@revision``): fetched with ``huggingface_hub`` when the machine is online and kept in its
  cache, so the next call needs no network (``HF_HUB_OFFLINE=1`` forces the cache).

Every resolved file gets its SHA-256. It is checked against ``sha256=`` when given, and against
the Hub's own content hash for files the Hub stores in LFS (their ETag is the SHA-256), so a
truncated or tampered download is an error, never a model with wrong weights. The digest is kept
with the encoder (``Encoder.weights_sha256``) for the provenance of every feature file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpfm.backbone.checkpoint import CheckpointError

logger = logging.getLogger(__name__)

HUB_PREFIXES = ("hf-hub:", "hf_hub:")
"""How a Hub id is written in ``weights=`` (timm's spelling, both variants)."""

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
PREFERRED_FILENAMES = ("model.safetensors", "pytorch_model.bin")
"""Weights file names tried first in a folder or a Hub repository, in this order."""

EXPORT_CONFIG = "encoder.json"
"""The file that marks a folder exported by training (``gpfm.backbone.zoo.exported``)."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHUNK = 8 * 1024 * 1024


class WeightsError(CheckpointError):
    """Weights that cannot be found, fetched or verified."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """Nothing at the path or Hub id given, or the Hub is unreachable and nothing is cached."""


class ChecksumMismatchError(WeightsError):
    """A weights file whose SHA-256 is not the one expected (corrupt, truncated or different)."""


@dataclass(frozen=True)
class HubId:
    """A parsed ``hf-hub:owner/name[/path/in/repo][@revision]``."""

    repo_id: str
    filename: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        text = HUB_PREFIXES[0] + self.repo_id
        if self.filename:
            text += "/" + self.filename
        if self.revision:
            text += "@" + self.revision
        return text


@dataclass(frozen=True)
class WeightsFile:
    """A weights file on this machine, where it came from, and its SHA-256."""

    path: Path
    source: str
    """What was asked for: the path or the ``hf-hub:`` id."""
    sha256: str
    config: dict[str, Any] | None = field(default=None, compare=False)
    """The ``encoder.json`` of a folder exported by training, else None."""


def parse_hub_id(text: str) -> HubId | None:
    """``HubId`` for ``hf-hub:owner/name[/file][@revision]``; None when ``text`` is not one.

    Raises:
        WeightsError: the ``hf-hub:`` prefix is there but no ``owner/name`` follows.
    """
    prefix = next((p for p in HUB_PREFIXES if text.startswith(p)), None)
    if prefix is None:
        return None
    body = text[len(prefix) :]
    revision = None
    if "@" in body:
        body, revision = body.rsplit("@", 1)
    parts = body.strip("/").split("/")
    repo_id = "/".join(parts[:2])
    if len(parts) < 2 or not _REPO_ID.match(repo_id) or revision == "":
        raise WeightsError(
            f"{text!r} is not a Hub id; write it as 'hf-hub:owner/name', optionally followed by "
            "'/path/in/repo.safetensors' and '@revision'"
        )
    filename = "/".join(parts[2:]) or None
    return HubId(repo_id=repo_id, filename=filename, revision=revision)


def check_weights_reference(weights: str | os.PathLike[str]) -> str:
    """What ``weights`` names, in words, checked without downloading or reading any weights.

    A Hub id must be well formed (its files are not fetched); a path must exist.

    Raises:
        WeightsError: a malformed Hub id.
        WeightsNotFoundError: a path with nothing there (the message suggests ``hf-hub:`` when
            the text looks like a Hub repository).
    """
    text = os.fspath(weights)
    hub = parse_hub_id(text)
    if hub is not None:
        where = f"/{hub.filename}" if hub.filename else ""
        revision = f" at {hub.revision}" if hub.revision else ""
        return f"Hugging Face Hub repository {hub.repo_id}{where}{revision}"
    path = Path(text).expanduser()
    if path.is_dir():
        return f"local folder {text}"
    if path.is_file():
        return f"local file {text}"
    message = f"no weights file or folder at {text!r}"
    if _REPO_ID.match(text):
        message += f"; for a Hugging Face Hub repository write weights='hf-hub:{text}'"
    raise WeightsNotFoundError(message)


def resolve_weights(
    weights: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    hub_filename: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    local_files_only: bool = False,
) -> WeightsFile:
    """The weights file that ``weights`` names, on this machine, with its verified SHA-256.

    Args:
        weights: a file, a folder, or ``hf-hub:owner/name[/file][@revision]`` (see the module
            docstring).
        sha256: the expected SHA-256 (64 hex digits) of the weights file; None checks only
            what the Hub itself publishes.
        hub_filename: the file to take from a Hub repository whose id names none (the zoo
            passes the one its entry was published as); else ``model.safetensors``, then
            ``pytorch_model.bin``.
        cache_dir: where Hub downloads are kept (default: huggingface_hub's cache, ``HF_HOME``).
        revision: a Hub branch, tag or commit (an ``@revision`` in the id wins).
        token: Hub token for gated repositories (None: the one ``hf auth login`` stored;
            False: send none).
        endpoint: another Hub server (default: huggingface.co, or ``HF_ENDPOINT``).
        local_files_only: never use the network, only the Hub cache.

    Raises:
        WeightsNotFoundError: nothing at that path, no weights file in that folder, or the Hub
            could not be reached and the file is not cached.
        ChecksumMismatchError: the file's SHA-256 is not ``sha256`` (or the Hub's).
        WeightsError: a folder with several candidate files, or an unreadable ``encoder.json``.
    """
    if sha256 is not None and not _SHA256.match(sha256.lower()):
        raise WeightsError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    text = os.fspath(weights)
    hub = parse_hub_id(text)
    if hub is not None:
        return _resolve_hub(
            hub,
            sha256=sha256,
            hub_filename=hub_filename,
            cache_dir=cache_dir,
            revision=revision,
            token=token,
            endpoint=endpoint,
            local_files_only=local_files_only,
        )
    check_weights_reference(text)
    path = Path(text).expanduser()
    if path.is_dir():
        file, config = _weights_in_folder(path)
        if sha256 is None and config is not None:
            sha256 = config.get("weights_sha256")
        return WeightsFile(file, text, _verified(file, sha256, source=text), config)
    return WeightsFile(path, text, _verified(path, sha256, source=text))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, hex; remembered per (path, size, mtime) for this process."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    cached = _DIGESTS.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    _DIGESTS[key] = value
    return value


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _verified(path: Path, expected: str | None, *, source: str) -> str:
    actual = file_sha256(path)
    if expected is not None and actual != expected.lower():
        raise ChecksumMismatchError(
            f"{source}: {path} has SHA-256 {actual}, expected {expected.lower()}; the file is "
            "corrupt, truncated or not the weights asked for — download it again"
        )
    return actual


def _weights_in_folder(folder: Path) -> tuple[Path, dict[str, Any] | None]:
    config_path = folder / EXPORT_CONFIG
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as error:
            raise WeightsError(f"{config_path}: not readable JSON: {error}") from error
        name = config.get("weights") if isinstance(config, dict) else None
        if not isinstance(name, str) or not (folder / name).is_file():
            raise WeightsNotFoundError(
                f"{config_path} names the weights file {name!r}, which is not in {folder}"
            )
        return folder / name, config
    for name in PREFERRED_FILENAMES:
        if (folder / name).is_file():
            return folder / name, None
    candidates = sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
    )
    if len(candidates) == 1:
        return candidates[0], None
    if not candidates:
        raise WeightsNotFoundError(
            f"no weights file ({', '.join(WEIGHT_SUFFIXES)}) in the folder {folder}"
        )
    raise WeightsError(
        f"{folder} holds several weights files ({', '.join(p.name for p in candidates)}); "
        "pass the one to load as weights="
    )


def _resolve_hub(
    hub: HubId,
    *,
    sha256: str | None,
    hub_filename: str | None,
    cache_dir: str | os.PathLike[str] | None,
    revision: str | None,
    token: str | bool | None,
    endpoint: str | None,
    local_files_only: bool,
) -> WeightsFile:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (  # where every huggingface_hub >= 0.24 exports them
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    filenames = [hub.filename] if hub.filename else [hub_filename] if hub_filename else []
    filenames = filenames or list(PREFERRED_FILENAMES)
    revision = hub.revision or revision
    source = str(hub)
    for index, filename in enumerate(filenames):
        logger.info("fetching %s from %s (revision %s)", filename, hub.repo_id, revision or "main")
        try:
            local = hf_hub_download(
                hub.repo_id,
                filename,
                revision=revision,
                cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
                token=token,
                endpoint=endpoint,
                local_files_only=local_files_only,
            )
        except GatedRepoError as error:
            raise WeightsNotFoundError(
                f"{source} is gated: request access on its Hub page, then log in "
                f"(`hf auth login`) or pass token=. ({error})"
            ) from error
        except (RepositoryNotFoundError, RevisionNotFoundError) as error:
            raise WeightsNotFoundError(
                f"{source}: no such repository or revision on the Hub, or it is private and no "
                f"token was given ({type(error).__name__})"
            ) from error
        except EntryNotFoundError as error:
            remote = not isinstance(error, LocalEntryNotFoundError)
            if remote and index + 1 < len(filenames):
                continue
            if remote:
                raise WeightsNotFoundError(
                    f"{source}: the repository has no {' or '.join(filenames)}; name the file "
                    f"in the id, e.g. 'hf-hub:{hub.repo_id}/weights.pth'"
                ) from error
            raise WeightsNotFoundError(
                f"{source}: {filename} is not in the local Hub cache and the Hub cannot be "
                "reached (offline, HF_HUB_OFFLINE=1, or local_files_only). Download it on a "
                "machine with internet and pass its path as weights="
            ) from error
        except (HfHubHTTPError, OSError) as error:
            raise WeightsNotFoundError(
                f"{source}: download of {filename} failed ({error}); check the network, or "
                "download the file by hand and pass its path as weights="
            ) from error
        path = Path(local)
        expected = sha256 or _hub_content_hash(path)
        try:
            digest = _verified(path, expected, source=source)
        except ChecksumMismatchError:
            _evict(path)
            raise
        logger.info("%s -> %s (sha256 %s)", source, path, digest[:12])
        return WeightsFile(path, source, digest)
    raise AssertionError("unreachable: at least one filename is always tried")


def _hub_content_hash(path: Path) -> str | None:
    """The SHA-256 the Hub published for a cached file: the blob's name, for LFS files."""
    blob = path.resolve().name
    return blob if _SHA256.match(blob) else None


def _evict(path: Path) -> None:
    """Drop a bad download from the Hub cache so that the next call fetches it again."""
    blob = path.resolve()
    for target in (path, blob):
        try:
            target.unlink()
        except OSError:
            logger.warning("could not remove %s from the Hub cache", target)
