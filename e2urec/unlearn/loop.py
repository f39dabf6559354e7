"""The outer loop every fine-tuning unlearning method shares.

Forget batches drive the epoch; each is paired with a random retain batch (instead of zip(),
which would truncate the retain set to the forget set's length). The model is checked at fixed
points, and the stop rule decides whether to go on, stop, or revert to the last good state.

Methods with a forget-only phase (E2URec) are checked during it too, and may end with a short
mixed *repair* once the forget set reached the held-out level: the paper's schedule, where
about three quarters of the steps were forget-only and a checkpoint a few hundred mixed steps
later was kept.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from e2urec.backbones import Backbone
from e2urec.training import autocast, bucketed_batches
from e2urec.unlearn.stopping import Check, Monitor, StopRule

# (forget sample indices, retain sample indices or None during forget-only epochs) -> the loss's
# terms, one per batch, yielded lazily (see backward_in_parts)
StepFn = Callable[[list[int], list[int] | None], Iterator[torch.Tensor]]
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
    # Raise the lr linearly over the first steps (0: none). AdamW's first updates move every
    # coordinate by about lr whatever its gradient; on SmolLM2's 210 layers one such step at lr
    # 1e-3 lifted the forget *and* held-out losses by 0.23-0.30 before the next undid it.
    warmup_steps: int = 0
    stop: StopRule = field(default_factory=StopRule)
    seed: int = 0
    # Mixed steps after the forget-only phase reached the held-out level (0: stop right there).
    repair_steps: int = 0
    # At the end, restore the checked state whose forget loss sat closest to the held-out level
    # (among those within the AUC bound) instead of the last one.
    keep_best: bool = False
    # Autocast each step's forward to bfloat16 where the hardware has it (the backbone's recipe
    # decides, as for its training); checks stay float32, so the stop rule compares like with like.
    bf16: bool = False

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.batch_size < 1:
            raise ValueError(
                f"lr must be > 0 and batch_size >= 1, got lr {self.lr}, batch_size "
                f"{self.batch_size}"
            )
        if self.checks_per_epoch < 1:
            raise ValueError(
                f"checks_per_epoch must be at least 1, got {self.checks_per_epoch}: without "
                "checks the stop rule can never fire"
            )
        if self.forget_only_epochs >= self.stop.max_epochs:
            raise ValueError(
                f"forget_only_epochs ({self.forget_only_epochs}) must leave at least one mixed "
                f"epoch within stop.max_epochs ({self.stop.max_epochs})"
            )
        if self.repair_steps < 0:
            raise ValueError(f"repair_steps must be >= 0, got {self.repair_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


def backward_in_parts(terms: Iterator[torch.Tensor], device: torch.device, bf16: bool) -> float:
    """Backpropagate each term of a loss before the next is computed; returns the loss.

    A mixed step's loss is a sum over a forget and a retain batch. Computed whole, both batches'
    activations are held until one backward: on SmolLM2 (16 + 16 ML-1M prompts, float32) the
    step peaked at 20.4 GB against 12.8 GB in parts, for the same gradient and no more time
    (bench/results/step-memory-cpu). Each forward is autocast; each backward is not.
    """
    total = 0.0
    while True:
        with autocast(device, bf16):
            term = next(terms, None)
        if term is None:
            return total
        term.backward()
        total += term.item()


def unlearning_loop(
    *,
    view: Backbone,
    trainable: Sequence[torch.nn.Parameter],
    keep: Callable[[str], bool],
    forget_lengths: Sequence[int],
    n_retain: int,
    step: StepFn,
    monitor: Monitor,
    reference: Check,
    cfg: LoopConfig,
    history: list[dict],
    name: str,
    progress: bool = True,
    on_step: ProgressFn | None = None,
) -> str:
    """Train ``trainable`` with ``step`` until the stop rule fires; returns why it stopped.

    ``keep`` selects the state-dict entries snapshotted for a revert (the adapter's, or all).
    ``reference`` is the check of the untouched model: the AUC bound and (stop level
    "original") the held-out level are its; with ``keep_best`` it is a candidate too, so a model
    that already sat at the held-out level (a user it never memorised) is not pushed past it
    and kept there.
    """
    model = view.model
    rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    )

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items() if keep(k)}

    good = snapshot()
    best: tuple[float, dict[str, torch.Tensor], dict] | None = None  # (distance, state, check)
    if cfg.keep_best:
        untouched = {"epoch": 0, "batch": 0, "mixed": False, **reference.as_dict()}
        best = (monitor.rule.distance(reference, reference), good, untouched)
    repair_left: int | None = None  # counting down once the repair phase began
    begun = ""  # why the repair phase began

    def finish(reason: str) -> str:
        if best is not None:  # set from the start whenever keep_best
            model.load_state_dict(best[1], strict=False)
            history.append({"kept": best[2]})
            return reason + f" (kept the check closest to the held-out level: {best[2]})"
        return reason

    for epoch in range(1, cfg.stop.max_epochs + 1):
        batches = bucketed_batches(forget_lengths, cfg.batch_size, rng)
        while len(batches) < cfg.min_steps_per_epoch:
            batches += bucketed_batches(forget_lengths, cfg.batch_size, rng)
        checks = {
            min(len(batches), math.ceil(len(batches) * k / cfg.checks_per_epoch))
            for k in range(1, cfg.checks_per_epoch + 1)
        }
        forget_only = epoch <= cfg.forget_only_epochs
        desc = f"{name} epoch {epoch}" + (" (forget only)" if forget_only else "")
        bar = tqdm(batches, desc=desc, disable=not progress, leave=False, unit="batch")
        model.train()
        for i, idx in enumerate(bar, start=1):
            mixed = not forget_only or repair_left is not None
            ridx = rng.sample(range(n_retain), min(cfg.batch_size, n_retain)) if mixed else None
            loss = backward_in_parts(step(idx, ridx), view.device, cfg.bf16)
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            warmup.step()
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{loss:.4f}")
            if on_step is not None:
                on_step(epoch, i, len(batches), loss)
            if repair_left is not None:
                repair_left -= 1
            repaired = repair_left == 0
            if i not in checks and not repaired:
                continue
            check = monitor.check(view)
            model.train()
            point = {"epoch": epoch, "batch": i, "mixed": mixed, **check.as_dict()}
            history.append(point)
            if progress:
                tqdm.write(
                    f"{name} epoch {epoch} batch {i}: forget loss {check.forget_loss:.4f}, "
                    f"held-out {check.heldout_loss:.4f}, valid AUC {check.valid_auc:.4f}"
                )
            reason = monitor.decide(check, reference)
            if reason and reason.startswith("revert:"):
                bar.close()
                if best is not None:  # set from the start whenever keep_best
                    return finish(reason)
                model.load_state_dict(good, strict=False)
                return reason + " (reverted to the last check that passed)"
            good = snapshot()
            distance = monitor.rule.distance(check, reference)
            if best is not None and distance < best[0]:
                best = (distance, good, point)
            if repaired:
                bar.close()
                return finish(f"repaired for {cfg.repair_steps} mixed steps after: {begun}")
            if reason and forget_only and cfg.repair_steps and repair_left is None:
                repair_left, begun = cfg.repair_steps, reason  # forgotten: now repair utility
                continue
            if reason and repair_left is None:
                bar.close()
                return finish(reason)
        bar.close()
    return finish(f"reached max_epochs={cfg.stop.max_epochs}")
