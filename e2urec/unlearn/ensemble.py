"""Several models answering as one: the sharded methods' aggregate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from e2urec.backbones import Backbone
from e2urec.data.prompts import Prompt
from e2urec.scoring import answer_distributions


@dataclass
class Ensemble:
    """Shard models whose answer distributions are mixed with fixed weights."""

    members: list[Backbone]
    weights: list[float]

    @property
    def format(self):
        return self.members[0].format

    def parameter_count(self) -> int:
        return sum(m.parameter_count() for m in self.members)

    def answer_log_probs(self, prompts: Sequence[Prompt], batch_size: int = 128) -> torch.Tensor:
        mixed = None
        for member, weight in zip(self.members, self.weights, strict=True):
            probs = answer_distributions(member, prompts, batch_size=batch_size).exp() * weight
            mixed = probs if mixed is None else mixed + probs
        return mixed.clamp_min(1e-30).log()
