"""Count the work a model does, pass by pass, so that a cost model can be checked against time.

A forward pre-hook on the model's token embedding sees every forward pass (training steps,
scoring, teachers, checks) with its attention mask. It records real (unpadded) tokens and the
sum of squared sequence lengths (attention's cost), split by kind of pass:
``full`` (gradients on, embedding trainable: every weight is being trained), ``lora`` (gradients
on, frozen weights) and ``infer`` (no gradients). ``copy.deepcopy`` copies the hook with the
module, so the augmented model's and the student's copies of a metered base count too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch


@dataclass
class Work:
    """Tokens and squared sequence lengths of each kind of pass."""

    full_tokens: int = 0
    full_sq: int = 0
    lora_tokens: int = 0
    lora_sq: int = 0
    infer_tokens: int = 0
    infer_sq: int = 0
    infer_sequences: int = 0
    train_sequences: int = 0

    def __sub__(self, other: Work) -> Work:
        return Work(
            **{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)}
        )

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class WorkMeter:
    work: Work = field(default_factory=Work)

    def attach(self, model: torch.nn.Module) -> WorkMeter:
        # Plain closures, not bound methods: deepcopy copies a bound method's object (the meter
        # would be copied with the model) but shares a function.
        seen: dict[str, torch.Tensor | None] = {"mask": None}

        def remember_mask(module, args, kwargs):
            seen["mask"] = kwargs.get("attention_mask")

        def count(embedding, args):
            self._count(embedding, args[0], seen["mask"])

        model.register_forward_pre_hook(remember_mask, with_kwargs=True)
        model.get_input_embeddings().register_forward_pre_hook(count)
        return self

    def _count(self, embedding: torch.nn.Module, ids: torch.Tensor, mask) -> None:
        lengths = None
        if mask is not None and mask.dim() == 2 and mask.shape[-1] >= ids.shape[-1]:
            # with a key/value cache the mask spans past + new tokens: count the new ones
            lengths = mask[:, -ids.shape[-1] :].sum(-1)
        if lengths is None:
            lengths = torch.full((ids.shape[0],), ids.shape[-1])
        tokens = int(lengths.sum())
        sq = int((lengths.double() ** 2).sum())
        w = self.work
        if not torch.is_grad_enabled():
            w.infer_tokens += tokens
            w.infer_sq += sq
            w.infer_sequences += ids.shape[0]
        elif embedding.weight.requires_grad:
            w.full_tokens += tokens
            w.full_sq += sq
            w.train_sequences += ids.shape[0]
        else:
            w.lora_tokens += tokens
            w.lora_sq += sq
            w.train_sequences += ids.shape[0]

    def snapshot(self) -> Work:
        return Work(**self.work.as_dict())
