"""The outer loop every fine-tuning unlearning method shares.

Forget batches drive the epoch; each is paired with a random retain batch (instead of zip(),
which would truncate the retain set to the forget set's length). The model is checked at fixed
points, and the stop rule decides whether to go on, stop, or revert to the last good state.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from e2urec.backbones import Backbone
from e2urec.training import bucketed_batches
from e2urec.unlearn.stopping import Monitor, StopRule

# (forget sample indices, retain sample indices or None during forget-only epochs) -> loss
StepFn = Callable[[list[int], list[int] | None], torch.Tensor]
# (epoch, batch in epoch, batches in epoch, loss) -> None: lets a caller show progress
ProgressFn = Callable[[int, int, int, float], None]


@dataclass
class LoopConfig:
    lr: float = 1e-3
    batch_size: int = 16
    forget_only_epochs: int = 0
    checks_per_epoch: int = 1
    # A small forget set makes a short epoch; cycle it to at least this many steps, or a batch
    # of three users would get two optimiser steps and nothing would move.
    min_steps_per_epoch: int = 0
    max_grad_norm: float = 1.0
    stop: StopRule = field(default_factory=StopRule)
    seed: int = 0


def unlearning_loop(
    view: Backbone,
    trainable: Sequence[torch.nn.Parameter],
    keep: Callable[[str], bool],
    forget_lengths: Sequence[int],
    n_retain: int,
    step: StepFn,
    monitor: Monitor,
    reference_auc: float,
    cfg: LoopConfig,
    history: list[dict],
    *,
    name: str,
    progress: bool = True,
    on_step: ProgressFn | None = None,
) -> str:
    """Train ``trainable`` with ``step`` until the stop rule fires; returns why it stopped.

    ``keep`` selects the state-dict entries snapshotted for a revert (the adapter's, or all).
    """
    model = view.model
    rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items() if keep(k)}

    good = snapshot()
    for epoch in range(1, cfg.stop.max_epochs + 1):
        mixed = epoch > cfg.forget_only_epochs
        batches = bucketed_batches(forget_lengths, cfg.batch_size, rng)
        while len(batches) < cfg.min_steps_per_epoch:
            batches += bucketed_batches(forget_lengths, cfg.batch_size, rng)
        checks = {
            min(len(batches), math.ceil(len(batches) * k / cfg.checks_per_epoch))
            for k in range(1, cfg.checks_per_epoch + 1)
        }
        desc = f"{name} epoch {epoch}" + ("" if mixed else " (forget only)")
        bar = tqdm(batches, desc=desc, disable=not progress, leave=False, unit="batch")
        model.train()
        for i, idx in enumerate(bar, start=1):
            ridx = rng.sample(range(n_retain), min(cfg.batch_size, n_retain)) if mixed else None
            loss = step(idx, ridx)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if on_step is not None:
                on_step(epoch, i, len(batches), loss.item())
            # No checks in forget-only epochs: the remembering term has not had its say yet,
            # and a check costs as much as a tenth of an epoch.
            if i not in checks or not mixed:
                continue
            check = monitor.check(view)
            model.train()
            history.append({"epoch": epoch, "batch": i, "mixed": mixed, **check.as_dict()})
            if progress:
                tqdm.write(
                    f"{name} epoch {epoch} batch {i}: forget loss {check.forget_loss:.4f}, "
                    f"held-out {check.heldout_loss:.4f}, valid AUC {check.valid_auc:.4f}"
                )
            reason = monitor.decide(check, reference_auc)
            if reason and reason.startswith("revert:"):
                model.load_state_dict(good, strict=False)
                bar.close()
                return reason + " (reverted to the last check that passed)"
            good = snapshot()
            if reason:
                bar.close()
                return reason
        bar.close()
    return f"reached max_epochs={cfg.stop.max_epochs}"
