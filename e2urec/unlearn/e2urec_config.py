"""E2URec's settings, each with what it does and, where the paper names it, the paper's symbol."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from e2urec.data.samples import Sample, with_unrated
from e2urec.training import TrainConfig
from e2urec.unlearn.base import UnlearnTask
from e2urec.unlearn.loop import LoopConfig
from e2urec.unlearn.stopping import StopRule


@dataclass
class E2URecConfig:
    # -- the student: a LoRA on the frozen original --
    lora_r: int = 16
    """Rank of the student's LoRA."""
    lora_alpha: int = 32
    """peft's LoRA scaling numerator (scale = lora_alpha / lora_r); not the paper's alpha."""
    lora_dropout: float = 0.05
    target_modules: Literal["qv", "all-linear"] | list[str] | None = None
    """Modules the LoRA adapts: "qv" (the default, None: the attention query/value projections,
    the paper's student), "all-linear" (every linear layer but the LM head), or module names."""

    # -- the forgetting teacher: orig - strength * relu(aug - orig) --
    forget_strength: float = 2.0
    """The paper's alpha: how hard the forgetting teacher pushes back what the augmented model
    learned beyond the original (the least value, when calibrated)."""
    calibrate_strength: bool = True
    """Raise ``forget_strength`` (up to ``forget_strength_max``) until the forgetting teacher's
    forget-set loss reaches the held-out level: with the paper's fixed alpha = 2 the teacher
    asked for less than a retrained model shows whenever the original had memorised."""
    forget_strength_max: float = 32.0
    teacher_form: Literal["log-prob", "margin", "held-out"] = "log-prob"
    """How ``aug - orig`` is measured. "log-prob" (this project's reading of the paper): the
    change in log-probability, which saturates where the original is already sure of the label,
    i.e. on the samples it memorised hardest. "margin": the change in the answer's log-odds
    (logits centred on the two answer tokens). On a memorising SmolLM2 the log-prob teacher came
    no closer to Retrain's answers than answer JSD 4.76 (the original: 5.07), the margin one
    3.61 (bench/results/ml1m-memorising-smollm2-bf16-teacher). "held-out" (this project's, not
    the paper's): no augmented model; the original's confidence in each forget sample's label is
    mapped onto its confidence on never-trained held-out samples (``heldout_matched_logits``),
    so the teacher asks for what an attacker would see of data the model never trained on."""

    # -- the loss: w * remember + (1 - w) * forget --
    remember_weight: float = 0.6
    """The paper's w: weight of the remembering terms (CE and KL to the original on retained
    data) against the forgetting term."""
    retain_ce: bool = True
    """Keep the label CE in the remembering term (the paper). False leaves the KL to the original
    alone: retained answers are held where the original had them rather than trained further
    toward their labels, which moved never-trained users' answers too (SmolLM2, mixed from the
    first step: held-out LogLoss 0.709 -> 0.571; bench/results/ml1m-memorising-smollm2-bf16-
    answer-jsd)."""
    anchor_weight: float = 0.0
    """Weight of a third term, ``KL(orig || student)`` on prompts the original never trained on
    (``anchor_from`` says which), in every step, the forget-only ones included; 0 leaves it out
    (the paper has none). Its answers there are how it generalises, which retraining keeps, not
    what it memorised. On a memorising SmolLM2 whose answers already sat near Retrain's (seed
    2), every schedule moved the forget set's answers away from Retrain's (answer JSD 0.63 ->
    1.24-4.00) and never-trained users' with them; at weight 1 either anchor left the first
    epoch where it was (1.27-1.77): its gradient is zero at the start and AdamW's first steps
    are lr-sized whatever it adds (bench/results/ml1m-memorising-smollm2-bf16-heldout-seeds). An
    option, not yet a remedy."""
    anchor_from: Literal["unrated", "later"] = "unrated"
    """Where the anchor term's prompts come from. "unrated": ``unrated_anchors``, which any
    deployment can draw. "later": ``later_anchors``, retained users' validation-period samples
    (rated items, the histories that led to them), less those the stop rule checks AUC on:
    never trained on, and shaped like the held-out users' prompts whose answers drifted."""
    lr: float = 3e-3
    """The paper's 1e-3 moved the student too little in the steps a check allows."""
    warmup_steps: int = 0
    """Steps over which the lr rises linearly to ``lr`` (0: from the first step)."""
    batch_size: int = 16
    forget_only_epochs: int = 3
    """Epochs on the forgetting term alone before mixed epochs."""
    repair_fraction: float = 0.33
    """Mixed steps after the forget-only phase reached the held-out level, as a fraction of one
    epoch (the paper's run: ~250 mixed after ~750 forget-only steps). 0 stops right there."""
    distill: Literal["vocab", "answer"] = "vocab"
    """What the teachers' answer-position distributions cover: "vocab", the whole vocabulary (the
    paper), or "answer", the two answer tokens renormalised, what scoring reads (and the retain
    CE on the answer alone). A base trained on the answer objective (the pretrained recipe) left
    the rest of its vocabulary untrained; over all of it the forgetting teacher's push lands on
    tokens it never answers with, and the student chases that mass instead of the answer."""
    objective: Literal["target", "answer"] = "target"
    """The base's training objective (its TrainConfig.objective): the augmented model is fitted
    on it and the student's retain CE uses it. Fitted on the whole target ("Yes." + EOS), an
    answer-trained base spent its steps on the untrained rest of the target: the augmented
    model's forget loss rose (0.51 -> 0.90 on SmolLM2) and its teacher asked for nothing."""
    keep_best: bool = True
    """End on the checked state closest to the held-out level, not the last one."""

    # -- the augmented model: the original further fitted to the forget set --
    aug_mode: Literal["lora", "full"] = "full"
    """The paper fine-tuned all weights. A LoRA learns what the forget users share with everyone
    (their taste, the base rate), so its forgetting teacher flattened every prediction; all
    weights also learn the samples themselves, and the teacher asks for exactly that back."""
    aug_epochs: int = 1
    """Least epochs of fitting. The forced logits raise the forget loss by about
    ``forget_strength`` times what the augmented model lowered it, so it is fitted until its
    forget loss is below the original's by the gap to the held-out level over that strength
    (at least ``aug_min_drop``), between ``aug_epochs`` and ``aug_max_epochs``: one fixed epoch
    left the teacher near the original whenever the original had memorised the forget set."""
    aug_max_epochs: int = 4
    aug_min_drop: float = 0.02
    aug_lr: float = 1e-3
    aug_lora_targets: Literal["qv", "all-linear"] = "qv"
    """The augmented LoRA's modules (aug_mode "lora"). See ``fitted_like``: a base trained
    with a merged all-linear LoRA is fitted further the same way."""
    cache_teachers: bool = True
    """Compute both teachers' answer logits once (tables) instead of at every step."""

    # -- when to stop --
    stop: StopRule = field(default_factory=StopRule)
    checks_per_epoch: int = 3
    """Stop soon after the forget loss reaches the held-out level."""
    min_steps_per_epoch: int = 60
    """Cycle the forget set to at least this many steps per epoch (and per augmentation
    epoch): 150 forget samples make 10 steps, and forgetting needs a few hundred. 0 keeps plain
    epochs."""
    seed: int = 0
    eval_batch_size: int = 128
    bf16: bool = False
    """Autocast the augmented model's and the student's steps to bfloat16 where the hardware has
    it (teachers and checks stay float32): what the backbone's training recipe says."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass of the augmented model's and the student's
    steps instead of holding them: a SmolLM2 student step (16 + 16 prompts, float32) peaked at
    6.1 GB instead of 12.8 GB, for one more forward, about +15-35% a step
    (bench/results/step-memory-cpu)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.remember_weight <= 1.0:
            raise ValueError(f"remember_weight must be in [0, 1], got {self.remember_weight}")
        if self.forget_strength <= 0:
            raise ValueError(
                f"forget_strength must be > 0 (the forgetting teacher's push), "
                f"got {self.forget_strength}"
            )
        if self.forget_strength_max < self.forget_strength:
            raise ValueError(
                f"forget_strength_max ({self.forget_strength_max}) must be >= forget_strength "
                f"({self.forget_strength})"
            )
        if self.teacher_form not in ("log-prob", "margin", "held-out"):
            raise ValueError(
                "teacher_form must be 'log-prob', 'margin' or 'held-out', "
                f"got {self.teacher_form!r}"
            )
        if self.teacher_form == "held-out" and not self.cache_teachers:
            raise ValueError(
                "teacher_form 'held-out' is a table of the teacher: set cache_teachers=True"
            )
        if self.distill not in ("vocab", "answer"):
            raise ValueError(f"distill must be 'vocab' or 'answer', got {self.distill!r}")
        if self.objective not in ("target", "answer"):
            raise ValueError(f"objective must be 'target' or 'answer', got {self.objective!r}")
        if self.aug_mode not in ("lora", "full"):
            raise ValueError(f"aug_mode must be 'lora' or 'full', got {self.aug_mode!r}")
        if not 1 <= self.aug_epochs <= self.aug_max_epochs:
            raise ValueError(
                f"need 1 <= aug_epochs <= aug_max_epochs, got {self.aug_epochs} and "
                f"{self.aug_max_epochs}"
            )
        if self.aug_lora_targets not in ("qv", "all-linear"):
            raise ValueError(
                f"aug_lora_targets must be 'qv' or 'all-linear', got {self.aug_lora_targets!r}"
            )
        if self.aug_min_drop < 0:
            raise ValueError(f"aug_min_drop must be >= 0, got {self.aug_min_drop}")
        if self.anchor_weight < 0:
            raise ValueError(f"anchor_weight must be >= 0, got {self.anchor_weight}")
        if self.anchor_from not in ("unrated", "later"):
            raise ValueError(f"anchor_from must be 'unrated' or 'later', got {self.anchor_from!r}")
        if self.repair_fraction < 0:
            raise ValueError(f"repair_fraction must be >= 0, got {self.repair_fraction}")
        self.loop(forget_samples=1)  # the loop's own checks, before any training starts

    def loop(self, forget_samples: int) -> LoopConfig:
        """The shared unlearning loop's settings for a forget set of this size."""
        steps_per_epoch = max(math.ceil(forget_samples / self.batch_size), self.min_steps_per_epoch)
        return LoopConfig(
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            batch_size=self.batch_size,
            forget_only_epochs=self.forget_only_epochs,
            checks_per_epoch=self.checks_per_epoch,
            min_steps_per_epoch=self.min_steps_per_epoch,
            stop=self.stop,
            seed=self.seed,
            repair_steps=math.ceil(self.repair_fraction * steps_per_epoch),
            keep_best=self.keep_best,
            bf16=self.bf16,
        )

    @classmethod
    def paper(cls, **overrides) -> E2URecConfig:
        """The paper's setting: fixed alpha = 2, one forget-only epoch, then mixed epochs until
        the stop rule fires (the ablation row of the benchmark)."""
        return cls(**(_PAPER | overrides))

    @classmethod
    def within(cls, stop: StopRule, *, paper: bool = False, **overrides) -> E2URecConfig:
        """The (paper's, or this project's) settings for a budget of ``stop.max_epochs``: the
        forget-only phase is cut to leave at least one mixed epoch for the repair, so a short
        budget (a CLI run, a worker's ``E2UREC_UNLEARN_MAX_EPOCHS``) is not refused."""
        default = _PAPER["forget_only_epochs"] if paper else cls.forget_only_epochs
        wanted = overrides.pop("forget_only_epochs", default)
        make = cls.paper if paper else cls
        return make(stop=stop, forget_only_epochs=min(wanted, stop.max_epochs - 1), **overrides)


def fitted_like(train: TrainConfig | None) -> dict[str, Any]:
    """E2URecConfig settings that make the augmented model (and the retain CE) follow how the
    base was trained, for ``E2URecConfig(**fitted_like(cfg), ...)``; {} when that is unknown.

    The defaults suit a from-scratch base. A pretrained LLM's recipe trains a merged all-linear
    LoRA on the answer alone; fitting it further with all weights at the default lr 1e-3 wrecked
    it (SmolLM2's forget loss 0.59 -> 2.19 in six steps), and with the whole target it spent the
    steps on the full stop and EOS (0.51 -> 0.90). So: the base's objective (and for the answer
    objective, distillation of the answer tokens alone), and for a LoRA-trained base a LoRA on
    the same modules at the base's lr.
    """
    if train is None:
        return {}
    like: dict[str, Any] = {"objective": train.objective}
    if train.objective == "answer":
        # Only the answer tokens were trained, so only they are distilled: on SmolLM2 (one run,
        # one Original) the vocabulary-wide student closed 4% of the attack's gap to Retrain and
        # the answer-only one 50% (bench/results/ml1m-memorising-smollm2-cpu-all).
        like["distill"] = "answer"
    if train.lora:
        like |= {
            "aug_mode": "lora",
            "aug_lr": train.lr,
            "aug_lora_targets": train.lora_targets,
        }
        # The student adapts the layers the base's fine-tuning adapted. On SmolLM2 (a merged
        # all-linear LoRA) the paper's q/v student raised the held-out loss with the forget
        # loss and closed 0-50% of the attack's gap on four Originals; an all-linear one took the
        # attack to Retrain's level with the held-out loss falling on seed 0, and on seed 1 its
        # first check tripped the utility guard
        # (bench/results/ml1m-memorising-smollm2-cpu-all-linear).
        like |= student_on(train.lora_targets)
    return like


def student_on(layers: Literal["qv", "all-linear"]) -> dict[str, Any]:
    """E2URecConfig settings for a student LoRA on ``layers``. On every linear layer it drops
    LoRA dropout, as the pretrained training recipe does: peft's dropout copies the input of
    each adapted layer, about 2x a step over SmolLM2's 210 layers; the table's all-linear row
    (bench/results/ml1m-memorising-smollm2-cpu-all-linear) was measured without it."""
    if layers not in ("qv", "all-linear"):
        raise ValueError(f"student layers must be 'qv' or 'all-linear', got {layers!r}")
    if layers == "all-linear":
        return {"target_modules": "all-linear", "lora_dropout": 0.0}
    return {"target_modules": "qv", "lora_dropout": E2URecConfig.lora_dropout}


def as_trained(
    task: UnlearnTask, train: TrainConfig | None, trained: Sequence[Sample] | None = None
) -> UnlearnTask:
    """``task`` on its data as the base saw it; ``task`` itself when the base trained on rated
    items alone (or how it trained is unknown).

    A base trained with unrated negatives (``TrainConfig.negatives``) also learned from prompts
    holding each user's profile and history with an item the user never rated, labelled "No".
    Those are the user's data too, so the forget set gains its users' negatives; the retain set
    gains everyone else's, so the student keeps the base's answers on them; and the held-out set
    (``task.valid`` when there is none) gains negatives drawn the same way, so the stop rule
    compares the forget set's loss with a level on the same mix. Validation AUC stays on rated
    items. Without this, E2URec on such a base (``tiny``, ML-1M, one negative per sample)
    reverted at its first check, validation AUC 0.66 -> 0.51: nothing was forgotten.

    ``trained``: what the base trained on, in its order (default: the task's retain and forget
    sets). The draw is seeded with the base's seed, so a prepared dataset's train split gives
    the very negatives the base saw; other data (a worker's, read from the database) gives
    negatives of the same kind."""
    if train is None or not train.negatives:
        return task

    def drawn(samples: Sequence[Sample]) -> list[Sample]:
        pool = with_unrated(samples, train.negatives, train.seed, pool=train.negatives_from)
        return pool[len(samples) :]  # with_unrated appends its negatives after the samples

    forget_users = {s.user_id for s in task.forget}
    retain_users = {s.user_id for s in task.retain}
    negatives = drawn(list(trained) if trained is not None else task.retain + task.forget)
    level = task.heldout or task.valid
    return replace(
        task,
        forget=task.forget + [s for s in negatives if s.user_id in forget_users],
        retain=task.retain + [s for s in negatives if s.user_id in retain_users],
        heldout=level + drawn(level),
    )


_PAPER = {
    "calibrate_strength": False,
    "lr": 1e-3,
    "forget_only_epochs": 1,
    "repair_fraction": 0.0,
    "keep_best": False,
    "min_steps_per_epoch": 0,
    "checks_per_epoch": 1,
}
