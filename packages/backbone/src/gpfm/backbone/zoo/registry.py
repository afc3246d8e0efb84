"""The registry of named encoders: ``register_encoder``, ``list_encoders``, ``load_encoder``.

A zoo entry is one function that builds the network with random weights, decorated with what
the zoo needs to know about it::

    @register_encoder(
        "my-vit-s",
        embed_dim=384,
        preprocessing=Preprocessing(224, 224, IMAGENET_MEAN, IMAGENET_STD),
        hub_id="me/my-vit-s",            # optional: where weights="hf-hub:..." fetches from
    )
    def my_vit_s() -> nn.Module:          # forward(batch) -> (B, 384)
        return timm.create_model("vit_small_patch16_224", num_classes=0)

    encoder = load_encoder("my-vit-s", weights="my-vit-s.safetensors")

``load_encoder`` builds the network on the meta device (no memory, no initialisation), converts
the weights file from the entry's published key layout (``convert=``), materialises the network
on the requested device and loads the weights strictly: a missing or unexpected key is an error
that lists them.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from gpfm.backbone.checkpoint import CheckpointError, read_checkpoint, unwrap
from gpfm.backbone.errors import BackboneError
from gpfm.backbone.weights import EXPORT_CONFIG, WeightsError, WeightsFile, resolve_weights
from gpfm.backbone.zoo.encoder import EmbedFn, Encoder, TokensFn, model_tokens
from gpfm.backbone.zoo.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

Converter = Callable[[Mapping[str, Any], nn.Module], dict[str, Tensor]]
"""``(published checkpoint, network) -> the network's state dict``, like timm's
``checkpoint_filter_fn``: the network (possibly on the meta device) gives target shapes."""
Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)


class UnknownEncoderError(BackboneError, LookupError):
    """A name that is neither a registered encoder nor an exported encoder folder."""


class MissingWeightsError(WeightsError):
    """A zoo encoder asked for without ``weights=`` (and without ``random_init=True``)."""


@dataclass(frozen=True)
class EncoderSpec:
    """What the zoo knows about one encoder; built by ``register_encoder``."""

    name: str
    factory: Factory
    """Builds the network with random weights; keyword arguments override its architecture."""
    embed_dim: int
    preprocessing: Preprocessing
    embedding: EmbedFn | None = None
    """``(model, batch) -> (B, embed_dim)``; None: the network's own ``forward``."""
    tokens: TokensFn | None = None
    """``(model, batch) -> tokens``; None: the network's ``forward_tokens`` if it has one."""
    convert: Converter | None = None
    """Published layout -> the network's state dict; None: unwrap only (same names)."""
    hub_id: str | None = None
    hub_filename: str | None = None
    sha256: str | None = None
    requires_weights: bool = True
    published_params: int | None = None
    params_source: str = ""
    weights_hint: str = ""
    """Where to get the weights when they are not on the Hub."""
    description: str = ""


_REGISTRY: dict[str, EncoderSpec] = {}
_BUILTINS = "gpfm.backbone.zoo.builtin"


def register_encoder(
    name: str,
    *,
    embed_dim: int,
    preprocessing: Preprocessing,
    embedding: EmbedFn | None = None,
    tokens: TokensFn | None = None,
    convert: Converter | None = None,
    hub_id: str | None = None,
    hub_filename: str | None = None,
    sha256: str | None = None,
    requires_weights: bool = True,
    published_params: int | None = None,
    params_source: str = "",
    weights_hint: str = "",
    description: str = "",
    replace: bool = False,
) -> Callable[[F], F]:
    """Decorator: register the decorated network factory as the encoder ``name``.

    Args:
        name: the zoo name (``load_encoder(name)``).
        embed_dim: size of the embedding.
        preprocessing: the authors' resize / crop / normalisation.
        embedding: how to get the embedding from the network when its ``forward`` does not.
        tokens: how to get the tokens from the network when its ``forward_tokens`` does not.
        convert: ``(checkpoint, network) -> state dict``: reads the published layout (the
            network, maybe on the meta device, gives the target shapes).
        hub_id: the Hub repository that ``weights="hf-hub:<hub_id>"`` fetches from.
        hub_filename: the weights file in that repository.
        sha256: SHA-256 of the published weights file, checked when known.
        requires_weights: False for networks that are meaningful without trained weights.
        published_params: the parameter count the authors publish (checked by the tests).
        params_source: where that number comes from.
        weights_hint: where to obtain weights that are not on the Hub.
        description: one line for ``list_encoders`` and the docs.
        replace: allow replacing an existing entry of that name.

    Raises:
        ValueError: the name is taken (and ``replace`` is False), or ``embed_dim`` < 1.
    """
    if embed_dim < 1:
        raise ValueError(f"embed_dim must be positive, got {embed_dim}")

    def decorate(factory: F) -> F:
        if name in _REGISTRY and not replace:
            raise ValueError(f"an encoder named {name!r} is already registered")
        _REGISTRY[name] = EncoderSpec(
            name=name,
            factory=factory,
            embed_dim=embed_dim,
            preprocessing=preprocessing,
            embedding=embedding,
            tokens=tokens,
            convert=convert,
            hub_id=hub_id,
            hub_filename=hub_filename,
            sha256=sha256,
            requires_weights=requires_weights,
            published_params=published_params,
            params_source=params_source,
            weights_hint=weights_hint,
            description=description,
        )
        return factory

    return decorate


def unregister_encoder(name: str) -> None:
    """Remove an entry (e.g. one a test or a notebook registered).

    Raises:
        UnknownEncoderError: no such entry.
    """
    _ensure_builtins()
    if _REGISTRY.pop(name, None) is None:
        raise UnknownEncoderError(f"no encoder named {name!r} is registered")


def list_encoders() -> list[str]:
    """Names of every registered encoder, sorted."""
    _ensure_builtins()
    return sorted(_REGISTRY)


def get_encoder_spec(name: str) -> EncoderSpec:
    """The registry entry of ``name``.

    Raises:
        UnknownEncoderError: no such entry (the message lists the registered names).
    """
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEncoderError(
            f"no encoder named {name!r}; registered: {', '.join(sorted(_REGISTRY))}. "
            "A folder exported by training can be passed by its path."
        ) from None


def load_encoder(
    name: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    random_init: bool = False,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
) -> Encoder:
    """A ready encoder (eval mode): a zoo name with its weights, or an exported folder.

    Args:
        name: a registered name (``list_encoders()``) or the path of a folder exported by
            training (``gpfm.backbone.zoo.exported``).
        weights: a file, a folder, or ``hf-hub:owner/name`` (see ``gpfm.backbone.weights``),
            in the entry's published key layout or ours.
        device: where to put the network. On ``"meta"`` nothing is loaded: shapes only
            (parameter counts, memory planning), no weights needed.
        dtype: parameter dtype (default float32); inputs are cast to it.
        random_init: build a zoo model with random weights instead (tests, demos).
        sha256: expected SHA-256 of the weights file.
        cache_dir: where Hub downloads are kept (passed to the download).
        revision: a Hub branch, tag or commit.
        token: Hub token for gated repositories.
        endpoint: another Hub server.

    Raises:
        UnknownEncoderError: an unknown name.
        MissingWeightsError: a zoo model without ``weights=`` nor ``random_init=True``.
        WeightsError / CheckpointError: weights not found, not verified, or not matching the
            architecture (the missing and unexpected keys are listed).
    """
    device = torch.device(device)
    path = Path(os.fspath(name))
    if path.is_dir() and (path / EXPORT_CONFIG).is_file():
        from gpfm.backbone.zoo.exported import load_exported_encoder

        return load_exported_encoder(path, device=device, dtype=dtype, sha256=sha256)
    spec = get_encoder_spec(os.fspath(name))
    if device.type == "meta":
        if weights is not None:
            raise ValueError("weights cannot be loaded onto the meta device; use device='cpu'")
        return _assemble(spec, build_network(spec, "meta", dtype), None)
    if weights is None:
        if spec.requires_weights and not random_init:
            raise MissingWeightsError(missing_weights_message(spec))
        torch_dtype = dtype or torch.get_default_dtype()
        with torch.device(device):
            model = spec.factory().to(dtype=torch_dtype)
        return _assemble(spec, model.eval(), None)
    if random_init:
        raise ValueError("pass either weights= or random_init=True, not both")
    found = resolve_weights(
        weights,
        sha256=sha256 or spec.sha256,
        hub_filename=spec.hub_filename if _names_entry_hub(weights, spec) else None,
        cache_dir=cache_dir,
        revision=revision,
        token=token,
        endpoint=endpoint,
    )
    model = build_network(spec, "meta", None)
    state = convert_published(spec, read_checkpoint(found.path), model, source=found.source)
    materialize(model, state, device=device, dtype=dtype, source=f"{found.source} ({spec.name})")
    logger.info("loaded %s from %s", spec.name, found.source)
    return _assemble(spec, model.eval(), found)


def build_network(
    spec: EncoderSpec, device: str | torch.device, dtype: torch.dtype | None
) -> nn.Module:
    """The entry's network on ``device`` with random weights (cheap on ``"meta"``)."""
    with torch.device(device):
        model = spec.factory()
    return model.to(dtype=dtype) if dtype is not None else model


def convert_published(
    spec: EncoderSpec,
    checkpoint: Mapping[str, Any],
    model: nn.Module,
    *,
    source: str = "checkpoint",
) -> dict[str, Tensor]:
    """The network's state dict from a checkpoint in the entry's published layout.

    Raises:
        CheckpointError: the converter does not recognise the checkpoint.
    """
    try:
        if spec.convert is not None:
            return spec.convert(checkpoint, model)
        return unwrap(checkpoint)
    except CheckpointError as error:
        raise CheckpointError(f"{source}: not a {spec.name} checkpoint: {error}") from error
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{source}: not a {spec.name} checkpoint in its published layout "
            f"({type(error).__name__}: {error})"
        ) from error


def materialize(
    model: nn.Module,
    state: Mapping[str, Tensor],
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    source: str = "checkpoint",
) -> None:
    """Allocate a meta-built ``model`` on ``device`` and fill it from ``state``, strictly.

    Non-persistent buffers (e.g. Swin's attention masks) are recomputed by the modules' own
    ``init_non_persistent_buffers``.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped keys, each listed.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{source}: the weights do not match the architecture: missing {_listed(missing)}; "
            f"unexpected {_listed(unexpected)}; shape mismatches {_listed(mismatched)}"
        )
    model.to_empty(device=device)
    model.load_state_dict(state, strict=True)
    _init_non_persistent_buffers(model)
    model.to(dtype=dtype or torch.get_default_dtype())


def _init_non_persistent_buffers(model: nn.Module) -> None:
    for module in model.modules():
        non_persistent: set[str] = getattr(module, "_non_persistent_buffers_set", set())
        transient = [
            name
            for name, buffer in module.named_buffers(recurse=False)
            if buffer is not None and name in non_persistent
        ]
        if not transient:
            continue
        initialise = getattr(module, "init_non_persistent_buffers", None)
        if not callable(initialise):
            raise CheckpointError(
                f"{type(module).__name__} has non-persistent buffers {transient} and no "
                "init_non_persistent_buffers(); it cannot be built on the meta device"
            )
        initialise()


def missing_weights_message(spec: EncoderSpec) -> str:
    """What to pass as ``weights=`` for an entry, said in one message."""
    where = []
    if spec.hub_id:
        where.append(
            f"weights='hf-hub:{spec.hub_id}' to fetch it from the Hugging Face Hub when online "
            "(gated repositories: request access on the model page, then `hf auth login`)"
        )
    if spec.weights_hint:
        where.append(f"weights='path/to/the/file' after downloading it ({spec.weights_hint})")
    else:
        where.append("weights='path/to/the/file' (a file or folder on this machine)")
    return (
        f"{spec.name} needs its trained weights: pass {' or '.join(where)}. "
        "random_init=True builds it with random weights (tests, demos)."
    )


def _names_entry_hub(weights: str | os.PathLike[str], spec: EncoderSpec) -> bool:
    text = os.fspath(weights)
    return spec.hub_id is not None and text.split(":", 1)[-1].split("@")[0] == spec.hub_id


def _assemble(spec: EncoderSpec, model: nn.Module, weights: WeightsFile | None) -> Encoder:
    return Encoder(
        spec.name,
        model,
        spec.embed_dim,
        spec.preprocessing,
        embedding=spec.embedding,
        tokens=spec.tokens if spec.tokens is not None else model_tokens(model),
        weights=weights,
    )


def _listed(items: list[str], limit: int = 12) -> str:
    if not items:
        return "none"
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{items[:limit]}{more}"


def _ensure_builtins() -> None:
    importlib.import_module(_BUILTINS)
