"""Sharded baselines: SISA (shards by sample) and RecEraser-style (shards by user).

The train set is split into shards with one model each; a deletion retrains only the shards that
held the deleted data, from the base, on what they keep. Predictions are aggregated: SISA averages
the members, RecEraser learns aggregation weights on validation data.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Literal

import torch

from e2urec.backbones import Backbone
from e2urec.data.prompts import Prompt
from e2urec.data.samples import Sample
from e2urec.scoring import answer_distributions, yes_probability
from e2urec.training import TrainConfig, train_llmrec
from e2urec.unlearn.base import PeakMemory, UnlearnResult, UnlearnTask
from e2urec.unlearn.ensemble import Ensemble
from e2urec.unlearn.fresh import fresh_base


def assign_shards(
    train: Sequence[Sample], n_shards: int, by: Literal["sample", "user"], seed: int
) -> list[int]:
    """Shard index of every train sample: at random per sample (SISA) or per user (RecEraser)."""
    rng = random.Random(seed)
    if by == "sample":
        return [rng.randrange(n_shards) for _ in train]
    users = sorted({s.user_id for s in train})
    rng.shuffle(users)
    group = {u: i % n_shards for i, u in enumerate(users)}
    return [group[s.user_id] for s in train]


def _fit_weights(ensemble: Ensemble, prompts: list[Prompt], labels: list[int]) -> list[float]:
    """Aggregation weights (a softmax over shards) that minimise validation log-loss."""
    fmt = ensemble.format
    p_yes = []
    for member in ensemble.members:
        logp = answer_distributions(member, prompts)
        p_yes.append(yes_probability(logp, fmt))
    p = torch.stack(p_yes, dim=1)  # [N, shards]
    y = torch.tensor(labels, dtype=torch.float32)
    theta = torch.zeros(p.size(1), requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=0.1)
    for _ in range(200):
        mix = (p * torch.softmax(theta, 0)).sum(1).clamp(1e-6, 1 - 1e-6)
        loss = -(y * mix.log() + (1 - y) * (1 - mix).log()).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.softmax(theta.detach(), 0).tolist()


def sharded_unlearn(
    original: Backbone,
    task: UnlearnTask,
    train: Sequence[Sample],
    train_config: TrainConfig,
    base_spec: str,
    *,
    by: Literal["sample", "user"],
    n_shards: int = 4,
    progress: bool = True,
    valid: Sequence[Sample] | None = None,
) -> UnlearnResult:
    """Retrain, from the base, every shard that held a forget sample, on its remaining samples.

    A shard untouched by the deletion keeps its model; training it is the sharded system's
    original cost, not the deletion's, and is left out of the time. ``valid`` is what each
    shard's early stopping judges by (default ``task.valid``; ``[]`` for a fixed schedule).
    """
    name = "sisa" if by == "sample" else "receraser"
    forget_users = {s.user_id for s in task.forget}
    forget_keys = {(s.user_id, s.item_id, s.timestamp) for s in task.forget}
    shard_of = assign_shards(train, n_shards, by, train_config.seed)
    members: list[Backbone] = []
    seconds = 0.0
    history: list[dict] = []
    with PeakMemory(original.device) as memory:
        for shard in range(n_shards):
            samples = [s for s, k in zip(train, shard_of, strict=True) if k == shard]
            affected = any((s.user_id, s.item_id, s.timestamp) in forget_keys for s in samples)
            keep = [s for s in samples if s.user_id not in forget_users]
            started = time.perf_counter()
            model = fresh_base(original, base_spec, train_config.seed + shard)
            result = train_llmrec(
                model,
                task.catalog,
                keep if affected else samples,
                task.valid if valid is None else valid,
                train_config,
                progress=progress,
            )
            if affected:
                seconds += time.perf_counter() - started
            history.append(
                {
                    "shard": shard,
                    "samples": len(samples),
                    "kept": len(keep),
                    "affected": affected,
                    "stopped": result.stopped,
                }
            )
            members.append(model)
        ensemble = Ensemble(members, [1.0 / n_shards] * n_shards)
        if by == "user":
            started = time.perf_counter()
            valid = task.valid[:2000]
            ensemble.weights = _fit_weights(
                ensemble, [task.catalog.prompt(s) for s in valid], [s.label for s in valid]
            )
            seconds += time.perf_counter() - started
            history.append({"weights": ensemble.weights})
    total = ensemble.parameter_count()
    affected = sum(h.get("affected", False) for h in history)
    return UnlearnResult(
        name,
        ensemble,
        seconds,
        total,
        total,
        memory.peak,
        f"retrained {affected} of {n_shards} shards",
        history,
    )
