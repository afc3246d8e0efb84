"""``gpfm-train CONFIG --dry-run``: everything checked and counted, nothing downloaded or run.

The student, teacher, heads and experts are built on the meta device (shapes, no memory, no
weights), every weights reference is checked for its form (a Hub id is parsed, a path must
exist), and the parameter counts and the resolved configuration are reported.
"""

from __future__ import annotations

from gpfm.apps.train.config import TrainConfig, to_yaml
from gpfm.apps.train.trainer import build_model
from gpfm.backbone import check_weights_reference, count_parameters


def dry_run(config: TrainConfig) -> str:
    """The report of a dry run, or an error (``WeightsError``, ``ValueError``, ...).

    Raises:
        WeightsError: a weights reference that is malformed or names nothing.
    """
    lines = ["weights:"]
    if config.student.weights:
        lines.append(f"  student: {check_weights_reference(config.student.weights)}")
    for expert in config.experts:
        if expert.random_init:
            source = "random weights (tests and demos)"
        elif expert.weights:
            source = check_weights_reference(expert.weights)
        else:
            raise ValueError(
                f"expert {expert.name!r} ({expert.encoder}) has no weights; set "
                f"experts.N.weights=FILE|FOLDER|hf-hub:owner/name, or random_init=true"
            )
        lines.append(f"  expert {expert.name} ({expert.encoder}): {source}")

    model = build_model(config, meta=True)
    lines.append("parameters:")
    lines.append(f"  student backbone  {count_parameters(model.student['backbone']):>14,}")
    for name, module in model.student.items():
        if name != "backbone":
            lines.append(f"  student {name:<9} {count_parameters(module):>14,}")
    for name, head in model.loss.experts.heads.items():
        lines.append(f"  head of {name:<9} {count_parameters(head):>14,}")
    trainable = sum(p.numel() for _, p in model.trainable_named_parameters())
    lines.append(f"  trainable total   {trainable:>14,}")
    lines.append(f"  EMA teacher       {count_parameters(model.teacher):>14,}")
    for name, frozen in model.experts.items():
        lines.append(f"  expert {name:<10} {count_parameters(frozen):>14,}  (frozen)")
    lines.append("resolved configuration:")
    lines.append(to_yaml(config))
    return "\n".join(lines)
