"""A vision-language model on frozen features: projector (+ pooler) -> a causal LM with LoRA.

Visual features of one sample, (N, D) with a padding mask, become K embeddings of the LM:
slide bags (thousands of tiles) go through ``AttentionPooler`` (K learned queries
cross-attending to the bag), ROI tokens (the encoder's CLS and patch tokens) pass as they are;
then ``Projector`` (Linear -> GELU -> Linear) maps them to the LM's width. In the prompt, the
placeholder ``<image>`` is replaced by [begin-of-image, K visual embeddings, end-of-image];
begin and end are learned embeddings. The LM's own weights stay frozen; LoRA adapters (PEFT)
learn on top of them. The loss is on answer tokens only: prompt, image and padding are -100.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from gpfm.heads.errors import HeadsError, InvalidInputError
from gpfm.heads.features import atomic_path

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
CONFIG_NAME = "vlm_config.json"
WEIGHTS_NAME = "vlm_weights.safetensors"
Stage = Literal["projector", "lora"]


class Projector(nn.Sequential):
    """Visual features (…, visual_dim) -> LM embeddings (…, llm_dim): Linear, GELU, Linear."""

    def __init__(self, visual_dim: int, llm_dim: int, hidden_dim: int | None = None) -> None:
        hidden = hidden_dim or llm_dim
        super().__init__(nn.Linear(visual_dim, hidden), nn.GELU(), nn.Linear(hidden, llm_dim))


class AttentionPooler(nn.Module):
    """A bag of N features pooled to K tokens by K learned queries (cross-attention, masked)."""

    def __init__(self, dim: int, num_queries: int, num_heads: int = 8) -> None:
        super().__init__()
        heads = num_heads if dim % num_heads == 0 else 1
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * dim**-0.5)
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, bag: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, N, D) bag and (B, N) mask (True = a real tile) -> (B, K, D)."""
        keys = self.norm(bag)
        queries = self.queries.unsqueeze(0).expand(bag.shape[0], -1, -1)
        padding = None if mask is None else ~mask.bool()
        pooled, _ = self.attention(
            queries, keys, keys, key_padding_mask=padding, need_weights=False
        )
        return pooled + queries


@dataclass
class VLMConfig:
    """What ``VisionLanguageModel.save`` writes as JSON, and ``load`` rebuilds from."""

    visual_dim: int
    num_visual_tokens: int
    pool: bool = True
    projector_hidden: int | None = None
    pooler_heads: int = 8
    image_token: str = "<image>"
    system_prompt: str | None = None
    lora: dict[str, Any] | None = None
    llm: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    """Embeddings ready for the LM: (B, L, E) embeddings, (B, L) mask and labels."""

    inputs_embeds: Tensor
    attention_mask: Tensor
    labels: Tensor | None = None


class VisionLanguageModel(nn.Module):
    """Frozen features -> pooler/projector -> a Hugging Face causal LM, with LoRA adapters.

    Args:
        llm: an ``AutoModelForCausalLM`` (its weights are frozen here).
        tokenizer: its tokenizer; its chat template is used when it has one.
        visual_dim: D of the features (1024 for GPFM).
        num_visual_tokens: K. With ``pool=True`` the bag is pooled to K tokens; with
            ``pool=False`` the features are the tokens (ROI: CLS + patch tokens) and K is
            only what the prompt length is planned for.
        pool: pool with ``AttentionPooler`` (slides); False for ROI tokens.
        projector_hidden: the projector's hidden width (default: the LM's width).
        pooler_heads: attention heads of the pooler.
        image_token: the placeholder in prompts; a prompt without it gets it in front.
        system_prompt: a system message for chat templates.
    """

    llm: Any  # a transformers causal LM, or PEFT's wrapper of one after add_lora

    def __init__(
        self,
        llm: nn.Module,
        tokenizer: Any,
        visual_dim: int,
        num_visual_tokens: int,
        *,
        pool: bool = True,
        projector_hidden: int | None = None,
        pooler_heads: int = 8,
        image_token: str = "<image>",
        system_prompt: str | None = None,
    ) -> None:
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        llm.requires_grad_(False)
        embeddings = self.llm.get_input_embeddings().weight
        width = embeddings.shape[1]
        self.config = VLMConfig(
            visual_dim=visual_dim,
            num_visual_tokens=num_visual_tokens,
            pool=pool,
            projector_hidden=projector_hidden,
            pooler_heads=pooler_heads,
            image_token=image_token,
            system_prompt=system_prompt,
            llm=str(getattr(llm.config, "name_or_path", "")),
        )
        self.pooler = AttentionPooler(visual_dim, num_visual_tokens, pooler_heads) if pool else None
        self.projector = Projector(visual_dim, width, projector_hidden)
        # Learned begin- and end-of-image embeddings around the visual tokens.
        start = embeddings.detach().float().mean(0, keepdim=True).repeat(2, 1)
        self.image_markers = nn.Parameter(start)  # new parts are float32 whatever the LM's dtype
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    # ---------------------------------------------------------------- adapters and stages
    def add_lora(
        self,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.05,
        target_modules: str | list[str] = "all-linear",
        **kwargs: Any,
    ) -> None:
        """Wrap the LM with PEFT LoRA adapters (trainable; the LM's own weights stay frozen)."""
        if isinstance(self.llm, PeftModel):
            raise HeadsError("this model already has LoRA adapters")
        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=target_modules,
            task_type="CAUSAL_LM",
            **kwargs,
        )
        self.llm = get_peft_model(self.llm, config)
        self.config.lora = {
            "r": r,
            "alpha": alpha,
            "dropout": dropout,
            "target_modules": target_modules,
            **kwargs,
        }

    def set_stage(self, stage: Stage) -> None:
        """``projector``: train projector, pooler and image markers only; ``lora``: + LoRA."""
        if stage not in ("projector", "lora"):
            raise InvalidInputError(f"stage must be 'projector' or 'lora', not {stage!r}")
        if stage == "lora" and not isinstance(self.llm, PeftModel):
            raise HeadsError("stage 'lora' needs adapters: call add_lora() first")
        for name, parameter in self.llm.named_parameters():
            parameter.requires_grad_(stage == "lora" and "lora_" in name)
        for module in (self.projector, self.pooler):
            if module is not None:
                module.requires_grad_(True)
        self.image_markers.requires_grad_(True)

    def trainable_parameters(self) -> int:
        """How many parameters train in the current stage."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def gradient_checkpointing(self, enable: bool = True) -> None:
        """Recompute the LM's layer activations in the backward pass instead of keeping them.

        Less memory while training (the activations of one layer at a time), about a third
        more compute. Non-reentrant checkpointing, so that gradients reach LoRA adapters and
        the projector although the LM's own input embeddings are frozen.
        """
        llm: Any = self.llm.get_base_model() if isinstance(self.llm, PeftModel) else self.llm
        options = {"use_reentrant": False}
        if hasattr(llm, "activation_checkpointing_enable"):  # the name from transformers 5.2x on
            if enable:
                llm.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
            else:
                llm.activation_checkpointing_disable()
        elif enable:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
        else:
            llm.gradient_checkpointing_disable()

    def merge(self) -> None:
        """Fold the LoRA adapters into the LM's weights (faster inference; no more adapters)."""
        if isinstance(self.llm, PeftModel):
            self.llm = self.llm.merge_and_unload()
            self.config.extra["merged"] = True

    # ---------------------------------------------------------------- inputs
    @property
    def device(self) -> torch.device:
        return self.image_markers.device

    def visual_embeddings(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, N, D) features (or (B, D)) and (B, N) mask -> (B, K + 2, E) LM embeddings."""
        if features.dim() == 2:
            features = features.unsqueeze(1)
        if features.shape[-1] != self.config.visual_dim:
            raise InvalidInputError(
                f"features have dimension {features.shape[-1]}, the model expects "
                f"visual_dim={self.config.visual_dim}"
            )
        features = features.to(self.device, torch.float32)
        if self.pooler is not None:
            features = self.pooler(features, None if mask is None else mask.to(self.device))
        tokens = self.projector(features)
        markers = self.image_markers.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return torch.cat([markers[:, :1], tokens, markers[:, 1:]], dim=1)

    def prompt_text(self, prompt: str) -> str:
        """The full prompt as text, with the chat template when the tokenizer has one."""
        token = self.config.image_token
        content = prompt if token in prompt else f"{token}\n{prompt}"
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": content}]
            if self.config.system_prompt:
                messages.insert(0, {"role": "system", "content": self.config.system_prompt})
            return str(
                self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            )
        return f"{self.tokenizer.bos_token or ''}{content}\nAnswer: "

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def build_batch(
        self,
        features: Tensor,
        prompts: Sequence[str],
        targets: Sequence[str] | None = None,
        mask: Tensor | None = None,
        padding_side: Literal["left", "right"] = "right",
    ) -> Batch:
        """LM inputs for a batch: prompt text, image embeddings in place of ``<image>``, target.

        With ``targets``, labels are the target tokens (and end-of-sequence) and -100 elsewhere.
        """
        if len(prompts) != features.shape[0] or (
            targets is not None and len(targets) != len(prompts)
        ):
            raise InvalidInputError(
                f"{features.shape[0]} feature sets, {len(prompts)} prompts"
                + ("" if targets is None else f", {len(targets)} targets")
                + ": one of each per sample"
            )
        visual = self.visual_embeddings(features, mask)
        embed = self.llm.get_input_embeddings()
        dtype = embed.weight.dtype
        rows, labels = [], []
        for index, prompt in enumerate(prompts):
            before, _, after = self.prompt_text(prompt).partition(self.config.image_token)
            answer = []
            if targets is not None:
                answer = [*self._ids(targets[index]), self.tokenizer.eos_token_id]
            ids_before, ids_after = self._ids(before), self._ids(after) + answer
            device = self.device
            pieces = [
                embed(torch.tensor(ids_before, dtype=torch.long, device=device)),
                visual[index].to(dtype),
                embed(torch.tensor(ids_after, dtype=torch.long, device=device)),
            ]
            rows.append(torch.cat(pieces))
            ignored = len(ids_before) + visual.shape[1] + len(ids_after) - len(answer)
            labels.append([IGNORE_INDEX] * ignored + answer)
        return self._pad(rows, labels if targets is not None else None, padding_side)

    def _pad(
        self, rows: list[Tensor], labels: list[list[int]] | None, side: Literal["left", "right"]
    ) -> Batch:
        length = max(row.shape[0] for row in rows)
        width = rows[0].shape[1]
        pad_embedding = self.llm.get_input_embeddings()(
            torch.tensor([self.tokenizer.pad_token_id], device=self.device)
        )
        embeds = pad_embedding.expand(len(rows), length, width).clone()
        attention = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        target = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long, device=self.device)
        for index, row in enumerate(rows):
            span = (
                slice(0, row.shape[0]) if side == "right" else slice(length - row.shape[0], length)
            )
            embeds[index, span] = row
            attention[index, span] = 1
            if labels is not None:
                target[index, span] = torch.tensor(labels[index], device=self.device)
        return Batch(embeds, attention, target if labels is not None else None)

    # ---------------------------------------------------------------- training and inference
    def forward(
        self,
        features: Tensor,
        prompts: Sequence[str],
        targets: Sequence[str],
        mask: Tensor | None = None,
    ) -> Tensor:
        """The mean cross-entropy of the target tokens given features and prompts."""
        return self.answer_loss(self.build_batch(features, prompts, targets, mask))

    def answer_loss(self, batch: Batch) -> Tensor:
        """The mean next-token cross-entropy over the labelled positions of ``batch``.

        The LM head runs only from the first position that predicts a target onwards: the
        logits over the whole vocabulary (49 k entries for SmolLM2) at every prompt position
        would otherwise be the largest tensors of training, and the loss is the same.
        """
        if batch.labels is None:
            raise InvalidInputError("answer_loss needs a batch built with targets")
        # Position t predicts token t + 1: the first kept position precedes the first target.
        targets = batch.labels[:, 1:]
        labelled = (targets != IGNORE_INDEX).any(dim=0).nonzero()
        first = int(labelled[0]) if len(labelled) else targets.shape[1] - 1
        keep = batch.labels.shape[1] - first
        options: dict[str, Any] = {"logits_to_keep": keep} if self._keeps_logits() else {}
        logits = self.llm(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            use_cache=False,
            **options,
        ).logits
        logits = logits[:, -keep:-1]  # the last position predicts nothing
        return nn.functional.cross_entropy(
            logits.float().flatten(0, 1),
            targets[:, first:].flatten(),
            ignore_index=IGNORE_INDEX,
        )

    def _keeps_logits(self) -> bool:
        """Whether the LM's forward takes ``logits_to_keep`` (most transformers >= 4.45 do)."""
        llm = self.llm.get_base_model() if isinstance(self.llm, PeftModel) else self.llm
        return "logits_to_keep" in inspect.signature(llm.forward).parameters

    @torch.no_grad()
    def generate(
        self,
        features: Tensor,
        prompts: Sequence[str],
        mask: Tensor | None = None,
        *,
        max_new_tokens: int = 64,
        num_beams: int = 1,
        **kwargs: Any,
    ) -> list[str]:
        """Answers or reports for a batch (greedy, or beam search with ``num_beams``; KV cache).

        Prompts are left-padded so that every row continues from its last prompt token.
        """
        batch = self.build_batch(features, prompts, None, mask, padding_side="left")
        output = self.llm.generate(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            use_cache=True,
            **kwargs,
        )
        return [
            text.strip() for text in self.tokenizer.batch_decode(output, skip_special_tokens=True)
        ]

    # ---------------------------------------------------------------- files
    def trained_state(self) -> dict[str, Tensor]:
        """The weights that training changes: projector, pooler, image markers, LoRA."""
        state = {f"projector.{k}": v for k, v in self.projector.state_dict().items()}
        if self.pooler is not None:
            state |= {f"pooler.{k}": v for k, v in self.pooler.state_dict().items()}
        state["image_markers"] = self.image_markers.detach()
        if isinstance(self.llm, PeftModel):
            lora = get_peft_model_state_dict(self.llm, save_embedding_layers=False)
            state |= {f"lora.{k}": v for k, v in lora.items()}
        return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}

    def save(self, folder: str | Path) -> Path:
        """Write adapters, projector and pooler to ``folder`` (safetensors + a JSON config)."""
        if self.config.extra.get("merged"):
            raise HeadsError("a merged model has no adapters to save: save before merge()")
        folder = Path(folder)
        with atomic_path(folder / WEIGHTS_NAME) as temporary:
            save_file(self.trained_state(), str(temporary))
        with atomic_path(folder / CONFIG_NAME) as temporary:
            temporary.write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, llm: nn.Module, tokenizer: Any) -> VisionLanguageModel:
        """A model saved by ``save``, on top of the same LM and tokenizer."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise HeadsError(
                f"{folder} holds no saved VisionLanguageModel ({CONFIG_NAME}, {WEIGHTS_NAME}): "
                "give the folder that VisionLanguageModel.save wrote"
            )
        saved = json.loads((folder / CONFIG_NAME).read_text())
        config = VLMConfig(**saved)
        model = cls(
            llm,
            tokenizer,
            config.visual_dim,
            config.num_visual_tokens,
            pool=config.pool,
            projector_hidden=config.projector_hidden,
            pooler_heads=config.pooler_heads,
            image_token=config.image_token,
            system_prompt=config.system_prompt,
        )
        if config.lora is not None:
            lora = dict(config.lora)
            model.add_lora(
                lora.pop("r"),
                lora.pop("alpha"),
                lora.pop("dropout"),
                lora.pop("target_modules"),
                **lora,
            )
        model.load_trained_state(load_file(str(folder / WEIGHTS_NAME)))
        return model

    def load_trained_state(self, state: dict[str, Tensor]) -> None:
        """Load what ``trained_state`` returned (strictly: every key must fit)."""
        groups: dict[str, dict[str, Tensor]] = {"projector": {}, "pooler": {}, "lora": {}}
        for key, value in state.items():
            prefix, _, rest = key.partition(".")
            if key == "image_markers":
                self.image_markers.data.copy_(value)
            elif prefix in groups:
                groups[prefix][rest] = value
            else:
                raise HeadsError(f"unexpected weight {key!r} in a saved VisionLanguageModel")
        self.projector.load_state_dict(groups["projector"])
        if self.pooler is not None:
            self.pooler.load_state_dict(groups["pooler"])
        if groups["lora"]:
            if not isinstance(self.llm, PeftModel):
                raise HeadsError("saved LoRA weights, but this model has no adapters")
            result = set_peft_model_state_dict(self.llm, groups["lora"])
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise HeadsError(f"saved LoRA weights do not fit the adapters: {unexpected[:5]}")
