"""What a finished store holds: ``stats.json`` (patches per cohort and tissue type, the mix
against its target, rejections, failed slides), ``mosaic.png`` (random patches per tissue type)
and the dataset card ``README.md`` that states the mix."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from gpfm.slide.quality import REJECTION_REASONS
from gpfm.slide.sampling import group_targets
from gpfm.slide.storage import atomic_path
from gpfm.slide.store import CARD_FILE, COLUMNS, PatchStore, read_table

if TYPE_CHECKING:
    from gpfm.apps.curate.inputs import SlideEntry
    from gpfm.apps.curate.run import CurateSettings

MOSAIC_FILE = "mosaic.png"
STATS_FILE = "stats.json"
_THUMB = 96  # px per patch in the mosaic
_LABEL = 120  # px of the label column


def store_statistics(
    store: Path,
    entries: Sequence[SlideEntry],
    quotas: Sequence[int],
    groups: Sequence[str],
    settings: CurateSettings,
) -> dict[str, Any]:
    """Counts of the store's patches (from its shards) and of what was rejected and failed."""
    patches = PatchStore(store)
    labels: list[tuple[str, str]] = []
    for number in range(len(patches.shards)):
        table = read_table(patches.shard_path(number), columns=["cohort", "tissue_type"])
        cohorts, kinds = table.column("cohort").to_pylist(), table.column("tissue_type").to_pylist()
        labels += zip(cohorts, kinds, strict=True)
    records = [json.loads((store / "slides" / f"{e.slide_id}.json").read_text()) for e in entries]
    rejected = Counter(dict.fromkeys(REJECTION_REASONS, 0))
    for record in records:
        rejected.update(record.get("rejected", {}))
    got: Counter[str] = Counter()
    for record, group in zip(records, groups, strict=True):
        got[group] += int(record["patches"])
    mix: dict[str, Any] = {}
    if settings.balance_by:
        targets = group_targets(groups, sum(quotas), settings.mix)
        mix = {
            str(g): {"target": int(t), "patches": int(got[g]), "shortfall": int(max(0, t - got[g]))}
            for g, t in targets.items()
        }
    return {
        "patches": len(labels),
        "slides": len(entries),
        "by_cohort": dict(sorted(Counter(c for c, _ in labels).items())),
        "by_tissue_type": dict(sorted(Counter(t for _, t in labels).items())),
        "by_cohort_and_tissue_type": dict(sorted(Counter(f"{c}/{t}" for c, t in labels).items())),
        "balance_by": list(settings.balance_by),
        "mix": mix,
        "tiles_tried": sum(int(r.get("tried", 0)) for r in records),
        "rejected": dict(rejected),
        "failed_slides": [
            {"slide_id": r["slide_id"], "error": r["error"]}
            for r in records
            if r["status"] == "failed"
        ],
    }


def mosaic(store: Path, per_type: int = 8, seed: int = 0, max_shards: int = 16) -> Image.Image:
    """Up to ``per_type`` random patches per tissue type, one row each, labelled.

    Patches are drawn from at most ``max_shards`` shards (seeded), so a large store is not read
    whole.
    """
    patches = PatchStore(store)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(patches.shards))[:max_shards]
    by_type: dict[str, list[bytes]] = {}
    for number in sorted(chosen.tolist()):
        table = read_table(patches.shard_path(number), columns=["image", "tissue_type"])
        images = table.column("image").combine_chunks().field("bytes").to_pylist()
        for image, kind in zip(images, table.column("tissue_type").to_pylist(), strict=True):
            by_type.setdefault(kind, []).append(image)
    kinds = sorted(by_type)
    canvas = Image.new("RGB", (_LABEL + per_type * _THUMB, max(1, len(kinds)) * _THUMB), "white")
    draw = ImageDraw.Draw(canvas)
    for row, kind in enumerate(kinds):
        pool = by_type[kind]
        picks = rng.choice(len(pool), size=min(per_type, len(pool)), replace=False)
        draw.text((4, row * _THUMB + _THUMB // 2 - 6), kind[:18], fill="black")
        for column, pick in enumerate(sorted(picks.tolist())):
            thumb = Image.open(io.BytesIO(pool[pick])).convert("RGB").resize((_THUMB, _THUMB))
            canvas.paste(thumb, (_LABEL + column * _THUMB, row * _THUMB))
    return canvas


def _version() -> str:
    try:
        return version("gpfm-curate")
    except PackageNotFoundError:
        return "0+unknown"


def _table(title: str, counts: dict[str, int], total: int) -> list[str]:
    lines = [f"| {title} | patches | share |", "|---|---:|---:|"]
    for key, count in counts.items():
        lines.append(f"| {key} | {count} | {count / max(total, 1):.1%} |")
    return lines


def dataset_card(stats: dict[str, Any], settings: CurateSettings, store_name: str) -> str:
    """The store's ``README.md``: Hub metadata, the mix, and how the patches were chosen."""
    features = {name: ("image" if name == "image" else "value") for name in COLUMNS}
    resolution = (
        f"{settings.mpp} µm/px" if settings.level is None else f"pyramid level {settings.level}"
    )
    q = settings.quality
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: data/*.parquet",
        "tags:",
        "- pathology",
        "- whole-slide-images",
        "- gpfm-curate",
        "task_categories:",
        "- image-feature-extraction",
        "---",
        "",
        f"# {store_name}",
        "",
        f"{stats['patches']} patches of {settings.patch_size} x {settings.patch_size} px at "
        f"{resolution} from {stats['slides']} slides ({len(stats['failed_slides'])} failed), "
        f"made by gpfm-curate {_version()} with seed {settings.seed}. Each row: "
        + ", ".join(f"`{n}`" for n in features)
        + '. Load it with `datasets.load_dataset("parquet", data_files="data/*.parquet")`.',
        "",
        "## Mix",
        "",
        *_table("tissue type", stats["by_tissue_type"], stats["patches"]),
        "",
        *_table("cohort", stats["by_cohort"], stats["patches"]),
        "",
    ]
    if stats["mix"]:
        lines += [
            f"Balanced by {' and '.join(stats['balance_by'])}: target and result per group.",
            "",
            "| group | target | patches | shortfall |",
            "|---|---:|---:|---:|",
        ]
        for group, row in stats["mix"].items():
            lines.append(f"| {group} | {row['target']} | {row['patches']} | {row['shortfall']} |")
        lines.append("")
    lines += [
        "## How patches were chosen",
        "",
        f"- Candidates: tiles with at least {settings.mask_min_tissue:.0%} tissue on the slide's "
        f"tissue mask (at {settings.tissue_mpp} µm/px), tried in a seeded "
        f"{settings.strategy} order until the slide's quota is met.",
        f"- Blank: fewer than {q.min_tissue:.0%} of the pixels with HSV saturation >= "
        f"{q.min_saturation} and value >= {q.min_value}.",
        f"- Blurred: variance of the Laplacian of the grey patch < {q.min_sharpness}.",
        f"- Near-duplicate: 64-bit DCT perceptual hash within {q.max_hash_distance} bits of a "
        "patch kept from the same slide.",
        f"- Tried {stats['tiles_tried']} tiles; rejected "
        + ", ".join(f"{n} {reason}" for reason, n in stats["rejected"].items())
        + f". JPEG quality {settings.jpeg_quality}.",
        "",
    ]
    if stats["failed_slides"]:
        lines += ["## Failed slides", ""]
        lines += [f"- {f['slide_id']}: {f['error']}" for f in stats["failed_slides"]]
        lines.append("")
    return "\n".join(lines)


def write_report(
    store: Path,
    entries: Sequence[SlideEntry],
    quotas: Sequence[int],
    groups: Sequence[str],
    settings: CurateSettings,
) -> dict[str, Any]:
    """Write ``stats.json``, ``mosaic.png`` and ``README.md`` into ``store``; return the stats."""
    stats = store_statistics(store, entries, quotas, groups, settings)
    with atomic_path(store / STATS_FILE) as temporary:
        temporary.write_text(json.dumps(stats, indent=2) + "\n")
    with atomic_path(store / MOSAIC_FILE) as temporary:
        mosaic(store, seed=settings.seed).save(temporary, format="PNG")
    with atomic_path(store / CARD_FILE) as temporary:
        temporary.write_text(dataset_card(stats, settings, store.resolve().name))
    return stats
