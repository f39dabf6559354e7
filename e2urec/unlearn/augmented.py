"""E2URec's forgetting teacher: the original further fitted to the forget set (the augmented
model), and the strength with which the teacher pushes back what it learned."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from e2urec.backbones import Backbone
from e2urec.metrics import log_loss
from e2urec.scoring import yes_probability
from e2urec.training import TrainConfig, train_llmrec
from e2urec.unlearn.base import UnlearnTask
from e2urec.unlearn.e2urec_config import E2URecConfig
from e2urec.unlearn.stopping import Check, Monitor
from e2urec.unlearn.teachers import forced_logits


@dataclass
class Augmented:
    backbone: Backbone
    target: float | None  # the forget loss it was fitted down to (None: fixed epochs)
    forget_losses: list[float]  # measured after each round of epochs
    stopped: str


def train_augmented(
    original: Backbone,
    task: UnlearnTask,
    cfg: E2URecConfig,
    progress: bool,
    on_step: Callable[[int, int, float], None] | None = None,
    monitor: Monitor | None = None,
    reference: Check | None = None,
) -> Augmented:
    """The original further fitted to the forget set (a merged LoRA, or all weights).

    With a ``monitor`` and the original's ``reference`` check, it trains until its forget loss
    falls to the target (see ``E2URecConfig.aug_epochs``); otherwise for ``aug_epochs``. A small
    forget set makes short epochs, so they are counted in rounds of at least
    ``min_steps_per_epoch`` steps.
    """
    aug = Backbone(copy.deepcopy(original.model), original.tokenizer, original.spec)
    if cfg.aug_mode == "full":  # a warm start's original is a frozen merged teacher: unfreeze
        aug.model.requires_grad_(True)
    steps_per_epoch = math.ceil(len(task.forget) / cfg.batch_size)
    per_round = max(1, math.ceil(cfg.min_steps_per_epoch / steps_per_epoch))
    target = None
    if monitor is not None and reference is not None:
        target = reference.forget_loss - max(cfg.aug_min_drop, reference.gap / cfg.forget_strength)
    losses: list[float] = []
    epochs = 0

    def fitted(model: Backbone) -> str | None:
        nonlocal epochs
        epochs += 1
        if monitor is None or target is None or epochs % per_round:
            return None
        losses.append(monitor.forget_loss(model))
        if len(losses) >= cfg.aug_epochs and losses[-1] <= target:
            return f"forget loss {losses[-1]:.4f} reached the target {target:.4f}"
        return None

    rounds = cfg.aug_max_epochs if target is not None else cfg.aug_epochs
    result = train_llmrec(
        aug,
        task.catalog,
        task.forget,
        [],
        TrainConfig(
            epochs=rounds * per_round,
            lr=cfg.aug_lr,
            batch_size=cfg.batch_size,
            warmup_ratio=0.0,
            lora=cfg.aug_mode == "lora",
            lora_r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_targets=cfg.aug_lora_targets,
            lora_dropout=0.0,
            bf16=cfg.bf16,
            activation_checkpointing=cfg.activation_checkpointing,
            objective=cfg.objective,  # what the base was fitted on (see E2URecConfig.objective)
            seed=cfg.seed,
        ),
        progress=progress,
        on_step=on_step,
        until=fitted,
    )
    return Augmented(aug, target, losses, result.stopped)


def answer_log_loss(logits: torch.Tensor, samples: list, fmt) -> float:
    """LogLoss of the Yes/No answer read from full-vocabulary logits (or log-probabilities)."""
    return log_loss([s.label for s in samples], yes_probability(logits, fmt).tolist())


def calibrated_alpha(
    orig: torch.Tensor,
    aug: torch.Tensor,
    forget: list,
    fmt,
    level: float,
    least: float,
    most: float,
    iterations: int = 20,
    centre_on: list[int] | None = None,
) -> float:
    """The smallest strength (the paper's alpha) in [least, most] whose forced teacher has a
    forget-set LogLoss of at least ``level`` (``most`` if none reaches it). The teacher's loss
    grows with alpha, and the tables are cached, so a bisection costs a few softmaxes.
    ``centre_on``: the teacher's form, as :func:`forced_logits` takes it."""

    def loss(alpha: float) -> float:
        return answer_log_loss(forced_logits(orig, aug, alpha, centre_on), forget, fmt)

    if loss(least) >= level:
        return least
    if loss(most) < level:
        return most
    lo, hi = least, most
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if loss(mid) >= level else (mid, hi)
    return hi
