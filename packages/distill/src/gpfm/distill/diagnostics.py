"""Collapse diagnostics for self-distillation: is the teacher still telling images apart?

DINO-style training can collapse without a NaN or an error: the centred teacher targets turn
uniform, the DINO loss sits at ln K and the encoder stops learning. At small scale it is common:
with LayerScale initialised at 1e-5 a shallow ViT gives every image almost the same class token,
the EMA centre absorbs that one teacher distribution within tens of steps, and the centred
targets become uniform. These statistics show it as it happens (``collapse_statistics``), and
``CollapseDetector`` turns them into one message in words.

Nothing here changes the objective: the statistics read the teacher outputs that
``DistillationModel`` keeps when ``keep_teacher_outputs`` is on (see ``TeacherOutputs``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gpfm.distill.errors import DistillConfigError


@dataclass(frozen=True)
class TeacherOutputs:
    """The teacher's outputs on the global crops of the last forward pass (no gradients).

    Attributes:
        cls_tokens: (B, D) backbone class tokens (B = global crops x images).
        cls_logits: (B, K) DINO head outputs, before centring.
        cls_targets: (B, K) the targets the student was trained on (after centring).
        teacher_temp: the teacher temperature of that step.
    """

    cls_tokens: Tensor
    cls_logits: Tensor
    cls_targets: Tensor
    teacher_temp: float


@dataclass(frozen=True)
class CollapseStatistics:
    """One step's collapse diagnostics (all in [0, 1] except the entropies and the rank).

    Attributes:
        entropy: mean entropy (nats) of softmax(teacher logits / τ), before centring.
        centred_entropy: mean entropy (nats) of the targets after centring (or Sinkhorn).
        entropy_ratio, centred_entropy_ratio: the two entropies ÷ ln K (1 = uniform).
        head_cosine: mean pairwise cosine of the teacher head's outputs across the batch
            (1 = the same output for every image).
        cls_cosine: mean pairwise cosine of the teacher backbone's class tokens.
        prototype_rank: effective rank of the prototype matrix (K, bottleneck), between 1 and
            the bottleneck width.
        prototypes: K.
    """

    entropy: float
    centred_entropy: float
    entropy_ratio: float
    centred_entropy_ratio: float
    head_cosine: float
    cls_cosine: float
    prototype_rank: float
    prototypes: int

    def as_dict(self, prefix: str = "collapse/") -> dict[str, float]:
        """``{"collapse/centred_entropy_ratio": ..., ...}`` for trackers and logs."""
        names = (
            "entropy",
            "centred_entropy",
            "entropy_ratio",
            "centred_entropy_ratio",
            "head_cosine",
            "cls_cosine",
            "prototype_rank",
        )
        return {f"{prefix}{name}": float(getattr(self, name)) for name in names}


@torch.no_grad()
def mean_entropy(probabilities: Tensor) -> float:
    """Mean entropy (nats) of the rows of (N, K) probability distributions."""
    p = probabilities.float()
    return float(-(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1).mean())


@torch.no_grad()
def mean_pairwise_cosine(vectors: Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct rows of (N, D); 1.0 for N < 2."""
    n = vectors.shape[0]
    if n < 2:
        return 1.0
    unit = F.normalize(vectors.float(), dim=-1)
    # sum over all pairs = |sum of unit vectors|² − N (the diagonal), without an N x N matrix
    total = unit.sum(dim=0).square().sum() - (unit.square().sum())
    return float(total / (n * (n - 1)))


@torch.no_grad()
def effective_rank(matrix: Tensor) -> float:
    """Effective rank (Roy & Vetterli 2007): exp(entropy of the normalised singular values).

    Between 1 (one direction) and min(rows, columns) (all singular values equal). Computed from
    the eigenvalues of the smaller Gram matrix, so a (65,536, 256) matrix costs a 256 x 256
    eigendecomposition.
    """
    m = matrix.detach().double()
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    singular = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    if singular.sum() <= 0:
        return 0.0
    p = singular / singular.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum()))


@torch.no_grad()
def collapse_statistics(outputs: TeacherOutputs, prototypes: Tensor) -> CollapseStatistics:
    """The diagnostics of one step from the teacher's outputs and prototype matrix (K, d)."""
    k = outputs.cls_logits.shape[-1]
    log_k = math.log(k) if k > 1 else 1.0
    before = F.softmax(outputs.cls_logits.float() / outputs.teacher_temp, dim=-1)
    entropy = mean_entropy(before)
    centred = mean_entropy(outputs.cls_targets)
    return CollapseStatistics(
        entropy=entropy,
        centred_entropy=centred,
        entropy_ratio=entropy / log_k,
        centred_entropy_ratio=centred / log_k,
        head_cosine=mean_pairwise_cosine(outputs.cls_logits),
        cls_cosine=mean_pairwise_cosine(outputs.cls_tokens),
        prototype_rank=effective_rank(prototypes),
        prototypes=k,
    )


@dataclass(frozen=True)
class CollapseEvent:
    """A collapse the detector is sure of: what collapsed, since which step, and the figures."""

    kind: str  # "uniform_targets", "constant_outputs" or both joined by "+"
    since: int
    step: int
    statistics: CollapseStatistics

    def describe(self) -> str:
        """The collapse in words (without advice on settings, which depends on the tool)."""
        s = self.statistics
        what = []
        if "uniform_targets" in self.kind:
            what.append(
                f"the centred teacher targets are uniform over the {s.prototypes} prototypes "
                f"(entropy {s.centred_entropy_ratio:.4f} x ln K; the DINO loss sits near "
                f"ln K = {math.log(s.prototypes):.3f}), so the student learns nothing from them"
            )
        if "constant_outputs" in self.kind:
            what.append(
                "the teacher head gives the same output for every image (mean pairwise cosine "
                f"{s.head_cosine:.4f}; class tokens {s.cls_cosine:.4f})"
            )
        return (
            f"self-distillation collapsed at step {self.since} (still so at step {self.step}): "
            + "; and ".join(what)
            + "."
        )


class CollapseDetector:
    """Flags a collapse that has lasted ``patience`` steps after ``start_step``.

    A step counts as collapsed when the centred teacher targets are within ``uniform_tolerance``
    of uniform (centred entropy ÷ ln K ≥ 1 − tolerance) or the teacher head's outputs are the
    same for every image (mean pairwise cosine ≥ ``cosine_threshold``). ``update`` returns a
    ``CollapseEvent`` once, the first time the condition has held without a break for
    ``patience`` steps, all at or after ``start_step`` (typically the end of the teacher
    temperature's warm-up); before that, and after it has fired, it returns None.

    Args:
        start_step: the first step that counts.
        patience: steps the condition must hold (measured between the first and the current
            step at which it was seen; statistics may come every few steps).
        uniform_tolerance: 0.01 = within 1% of uniform.
        cosine_threshold: pairwise cosine of the head's outputs that counts as "the same".
    """

    def __init__(
        self,
        start_step: int = 0,
        patience: int = 100,
        uniform_tolerance: float = 0.01,
        cosine_threshold: float = 0.999,
    ) -> None:
        if patience < 0 or not 0 < uniform_tolerance < 1 or not 0 < cosine_threshold <= 1:
            raise DistillConfigError(
                "patience must be >= 0, uniform_tolerance in (0, 1) and cosine_threshold in "
                f"(0, 1]; got {patience}, {uniform_tolerance}, {cosine_threshold}"
            )
        self.start_step = start_step
        self.patience = patience
        self.uniform_tolerance = uniform_tolerance
        self.cosine_threshold = cosine_threshold
        self.since: int | None = None
        self.event: CollapseEvent | None = None

    def kind(self, statistics: CollapseStatistics) -> str:
        """What looks collapsed in these statistics ("" when nothing does)."""
        kinds = []
        if statistics.centred_entropy_ratio >= 1 - self.uniform_tolerance:
            kinds.append("uniform_targets")
        if statistics.head_cosine >= self.cosine_threshold:
            kinds.append("constant_outputs")
        return "+".join(kinds)

    def update(self, step: int, statistics: CollapseStatistics) -> CollapseEvent | None:
        """Feed one step's statistics; the event on the step the collapse becomes certain."""
        if self.event is not None or step < self.start_step:
            return None
        kind = self.kind(statistics)
        if not kind:
            self.since = None
            return None
        if self.since is None:
            self.since = step
        if step - self.since >= self.patience:
            self.event = CollapseEvent(kind, self.since, step, statistics)
            return self.event
        return None
