"""Training configuration: dataclasses, YAML files and ``key=value`` overrides (OmegaConf)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gpfm.distill import LossConfig, MultiCropConfig


@dataclass
class StudentConfig:
    arch: str = "vit_large_patch14"
    img_size: int = 224
    drop_path_rate: float = 0.4
    init_values: float | None = 1e-5
    num_register_tokens: int = 0
    ffn_layer: str = "mlp"
    depth: int | None = None  # override the architecture's depth (tiny runs)
    weights: str | None = None  # initialise from a checkpoint (any layout convert_checkpoint knows)


@dataclass
class ExpertConfig:
    name: str = ""
    encoder: str = ""  # a gpfm.backbone zoo entry or a create_vit architecture name
    weights: str | None = None  # a file, a folder or hf-hub:owner/name
    random_init: bool = False  # tests and demos only
    overrides: dict[str, Any] = field(default_factory=dict)  # create_vit overrides
    cls_weight: float = 1.0
    patch_weight: float = 0.0
    preprocessing: str = "shared"  # GPFM: the student's global crops as they are; or "own"
    target: str = "gpfm"  # what GPFM distils from (CONCH: projected); or "embedding"


@dataclass
class DataSettings:
    source: str = "synthetic"  # synthetic | folder | slides | hf
    # folder or list file (folder); coords folder (slides); store folder or Hub dataset id (hf)
    path: str | None = None
    slides_dir: str | None = None  # where slides are, if coords files do not record it
    patches_per_slide: int = 64
    synthetic_length: int = 256
    synthetic_size: int = 256
    batch_size_per_device: int = 96
    num_workers: int = 8
    hf_revision: str | None = None  # hf: the Hub dataset's branch, tag or commit
    hf_shards_in_memory: int = 4  # hf: shards shuffled together (per DataLoader worker)


@dataclass
class OptimSettings:
    base_lr: float = 4e-4  # scaled by sqrt(global batch / 1024)
    min_lr: float = 1e-6
    warmup_steps: int = 10_000
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    layer_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    clip_grad: float = 3.0
    momentum_teacher: float = 0.992
    momentum_teacher_end: float = 1.0
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 37_500  # 30 of the reference code's 1,250-step "epochs"
    freeze_last_layer_steps: int = 1_250  # one "epoch"
    adam_betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class CollapseSettings:
    """When gpfm-train calls self-distillation collapsed (``gpfm.distill.CollapseDetector``)."""

    check: bool = True  # compute the diagnostics every log_every steps and watch them
    patience_steps: int = 100  # how long the collapse must last before the warning
    start_step: int | None = None  # first step watched; None: the teacher temp's warm-up end
    uniform_tolerance: float = 0.01  # centred teacher entropy >= (1 - this) x ln K: uniform
    cosine_threshold: float = 0.999  # teacher head outputs this alike: the same for every image


@dataclass
class PerformanceSettings:
    """Speed and memory switches; none changes the objective."""

    compile: bool = False  # torch.compile each transformer block of student and teacher
    compile_backend: str = "inductor"  # torch.compile backend ("eager" checks the wiring only)
    activation_checkpointing: bool = False  # recompute the student's blocks in the backward


@dataclass
class TrainConfig:
    output_dir: str = "runs/gpfm"
    seed: int = 0
    max_steps: int = 125_000
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "bf16"  # no | fp16 | bf16 (CPU runs use no)
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 3
    log_every: int = 10
    resume: bool = True
    stop_on_collapse: bool = False  # stop (keeping the checkpoints) when collapse is detected
    collapse: CollapseSettings = field(default_factory=CollapseSettings)
    student: StudentConfig = field(default_factory=StudentConfig)
    experts: list[ExpertConfig] = field(default_factory=list)
    # Every setting of the objective (gpfm.distill.LossConfig); its ``experts`` come from
    # ``experts`` above and stay empty here.
    loss: LossConfig = field(default_factory=LossConfig)
    # Pathology tiles have no canonical orientation: vertical flips and 90° rotations on.
    augment: MultiCropConfig = field(
        default_factory=lambda: MultiCropConfig(vertical_flip=True, rotate90=True)
    )
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    performance: PerformanceSettings = field(default_factory=PerformanceSettings)


def bundled_configs() -> list[str]:
    """Names of the configurations shipped with gpfm-train (``tiny_cpu``, ``gpfm_vitl14``, ...)."""
    folder = resources.files("gpfm.apps.train") / "configs"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def resolve_config_path(name: str) -> Path:
    """A YAML path as given, or a bundled configuration by name (``tiny_cpu``, ``configs/...``)."""
    path = Path(name)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml")
    bundled = resources.files("gpfm.apps.train") / "configs" / f"{stem}.yaml"
    if bundled.is_file():
        return Path(str(bundled))
    raise FileNotFoundError(
        f"{name}: no such configuration file; bundled ones are {bundled_configs()}"
    )


def load_config(name: str, overrides: list[str] | None = None) -> TrainConfig:
    """Merge defaults, the YAML file and ``key=value`` overrides; unknown keys are errors.

    Overrides use dotted keys, list items by index (``experts.0.weights=PATH``); values are
    YAML (``loss.mask_ratio=[0.1,0.4]``).

    Raises:
        ValueError: an unknown key, a value of the wrong type, or a malformed override; one
            line that names the key.
    """
    path = resolve_config_path(name)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(path))
    except OmegaConfBaseException as error:
        raise ValueError(f"{path}: {_first_line(error)}") from None
    _clear_read_only(merged)  # frozen dataclasses (LossConfig) give read-only nodes
    for override in overrides or []:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ValueError(f"override {override!r} is not key=value")
        try:
            value = OmegaConf.from_dotlist([f"value={text}"])["value"]
            OmegaConf.update(merged, key.strip(), value, merge=True)
        except OmegaConfBaseException as error:
            raise ValueError(f"override {key}: {_first_line(error)}") from None
    try:
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ValueError(f"{path}: {_first_line(error)}") from None
    assert isinstance(config, TrainConfig)
    if config.loss.experts:
        raise ValueError("configure experts under 'experts:', not 'loss.experts'")
    return config


def _clear_read_only(node: Any) -> None:
    if isinstance(node, DictConfig | ListConfig):
        OmegaConf.set_readonly(node, None)
        for child in node.values() if isinstance(node, DictConfig) else node:
            _clear_read_only(child)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def to_yaml(config: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_flat_dict(config: TrainConfig) -> dict[str, Any]:
    """``{"optim.base_lr": 4e-4, ...}`` with plain values, for trackers' hyperparameters."""
    container = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, bool | int | float | str) or value is None:
            flat[prefix] = value
        else:
            flat[prefix] = str(value)

    walk("", container)
    return flat


def config_reference() -> str:
    """Every configuration key with its type and default, as a Markdown table (for the docs)."""
    rows = ["| key | type | default |", "|---|---|---|"]

    def walk(prefix: str, instance: Any) -> None:
        hints = typing.get_type_hints(type(instance))
        for item in dataclasses.fields(instance):
            key, value = f"{prefix}{item.name}", getattr(instance, item.name)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(f"{key}.", value)
            elif key == "experts":
                walk("experts.N.", ExpertConfig())
            elif key != "loss.experts":  # filled from ``experts``
                rows.append(f"| `{key}` | {_type_name(hints[item.name])} | `{_shown(value)}` |")

    walk("", TrainConfig())
    return "\n".join(rows) + "\n"


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if value == "":
        return '""'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    return str(value)


def _type_name(hint: Any) -> str:
    text = str(hint) if typing.get_origin(hint) else getattr(hint, "__name__", str(hint))
    for noise in ("typing.", "gpfm.apps.train.config.", "gpfm.distill.expert_loss."):
        text = text.replace(noise, "")
    return text.replace(" | ", " or ")
