"""When to stop unlearning, using only what a deployment has (no retrained model, no test set)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from e2urec.backbones import Backbone
from e2urec.data.prepared import Catalog
from e2urec.data.samples import Sample
from e2urec.metrics import auc, confidence, log_loss, mia_auc, sample_log_loss
from e2urec.scoring import predict_like

if TYPE_CHECKING:
    from e2urec.unlearn.base import UnlearnTask

# A benchmark's look at each checked state beyond what the checks measure (its distance to a
# retrained model, which no deployment has): recorded beside the check, never read by the rule.
Observer = Callable[[Backbone], dict[str, float]]


@dataclass(frozen=True)
class StopRule:
    """Stop once the model treats the forget set like data it never saw (its loss there reaches
    the held-out loss), or revert and stop if validation AUC falls more than a bound below the
    original's; never beyond ``max_epochs``."""

    max_epochs: int = 5
    max_valid_auc_drop: float = 0.01
    forget_margin: float = 0.0  # stop when forget loss >= held-out loss - margin
    eval_samples: int = 2000  # subsample of forget and valid used for the checks
    level: Literal["own", "original"] = "own"
    """Whose held-out loss the forget loss should reach. "own": the checked model's, which
    moves as it trains: a step that made every user less familiar raised the level with the
    forget loss, and on SmolLM2 the kept check had pushed the forget set *past* never-trained
    data (attack AUC 0.24). "original": the untouched model's, fixed, and a check is then
    judged by how far both its forget and its held-out loss sit from that level, so one that
    moved never-trained users too is not kept for it."""
    min_confidence: float = 0.0
    """A check whose answers on held-out users are less sure than this fraction of the
    untouched model's (mean |2p - 1|) is never kept: it flattened everyone, which moves a
    confident model's forget and held-out loss towards ln 2 together and reads as forgetting
    to a loss-threshold attack, and which retraining does not do. 0 (the default) turns it off.
    On SmolLM2 seed 3 the level "original" kept a check whose confidence on never-trained
    users had fallen from 0.146 to 0.054 (Retrain: 0.132); at 0.5 the guard declined it."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence < 1.0:
            raise ValueError(
                "min_confidence is a fraction of the untouched model's held-out confidence: "
                f"0 (off) up to below 1, e.g. 0.5; got {self.min_confidence}"
            )
        if self.level not in ("own", "original"):
            raise ValueError(
                f"level must be 'own' (the checked model's held-out loss) or 'original' (the "
                f"untouched model's), got {self.level!r}"
            )

    def target(self, check: Check, reference: Check) -> float:
        """The forget loss a check should reach (``reference``: the untouched model's check)."""
        own = self.level == "own"
        return (check.heldout_loss if own else reference.heldout_loss) - self.forget_margin

    def distance(self, check: Check, reference: Check) -> float:
        """How far a check sits from a model that never trained on the forget set, as far as
        the checks can tell: its forget loss from the target, and (level "original") its
        held-out loss from where the untouched model had it. ``keep_best`` keeps the nearest."""
        if self.flattened(check, reference):
            return float("inf")  # never kept, however near its losses sit
        off = abs(check.forget_loss - self.target(check, reference))
        if self.level == "original":
            off += abs(check.heldout_loss - reference.heldout_loss)
        return off

    def flattened(self, check: Check, reference: Check) -> bool:
        """Whether the check's held-out answers fell below ``min_confidence`` of the untouched
        model's (False when either was not measured)."""
        return check.heldout_confidence < self.min_confidence * reference.heldout_confidence


@dataclass
class Check:
    forget_loss: float
    heldout_loss: float
    valid_auc: float
    # A loss-threshold attack separating the forget subsample from the held-out one (what an
    # attacker sees; NaN when there is no held-out set of the same period to compare with).
    mia_auc: float = float("nan")
    observed: dict[str, float] = field(default_factory=dict)  # what an Observer saw
    # How sure the answers on the held-out subsample are, mean |2p - 1| (StopRule.min_confidence)
    heldout_confidence: float = float("nan")

    @property
    def gap(self) -> float:
        """How much better the model still fits the forget set than never-trained data: the
        selective part of forgetting (a model that got worse everywhere keeps its gap)."""
        return self.heldout_loss - self.forget_loss

    def as_dict(self) -> dict[str, float]:
        return {
            "forget_loss": self.forget_loss,
            "heldout_loss": self.heldout_loss,
            "valid_auc": self.valid_auc,
            "mia_auc": self.mia_auc,
            "heldout_confidence": self.heldout_confidence,
            **self.observed,
        }


class Monitor:
    """Fixed evaluation subsamples, so successive checks compare like with like."""

    def __init__(
        self,
        catalog: Catalog,
        forget: list[Sample],
        valid: list[Sample],
        rule: StopRule,
        seed: int,
        batch_size: int = 128,
        heldout: list[Sample] | None = None,
        observer: Observer | None = None,
    ):
        """``valid`` judges utility (AUC); ``heldout`` (default: ``valid``) sets the loss level
        the forget set should reach. ``observer`` runs at every check; its time is kept apart
        (``observed_seconds``), out of both the checks' and the method's."""
        rng = random.Random(seed)
        self.forget = rng.sample(forget, min(rule.eval_samples, len(forget)))
        self.valid = rng.sample(valid, min(rule.eval_samples, len(valid)))
        self.heldout = (
            rng.sample(heldout, min(rule.eval_samples, len(heldout))) if heldout else None
        )
        self.forget_prompts = [catalog.prompt(s) for s in self.forget]
        self.valid_prompts = [catalog.prompt(s) for s in self.valid]
        self.heldout_prompts = [catalog.prompt(s) for s in self.heldout or []]
        self.forget_labels = [s.label for s in self.forget]
        self.heldout_labels = [s.label for s in self.heldout or []]
        self.rule = rule
        self.batch_size = batch_size
        self.seconds = 0.0  # time spent checking, reported apart from training
        self.observer = observer
        self.observed_seconds = 0.0

    @classmethod
    def for_task(
        cls,
        task: UnlearnTask,
        rule: StopRule,
        seed: int,
        batch_size: int,
        observer: Observer | None = None,
    ) -> Monitor:
        """The checks every unlearning method runs on its task (one place to say which parts)."""
        return cls(
            task.catalog,
            task.forget,
            task.valid,
            rule,
            seed,
            batch_size,
            heldout=task.heldout,
            observer=observer,
        )

    def check(self, backbone: Backbone) -> Check:
        started = time.perf_counter()
        member = self._losses(backbone, self.forget_prompts, self.forget_labels)
        pv = predict_like(backbone, self.valid_prompts, batch_size=self.batch_size)
        labels_v = [s.label for s in self.valid]
        # the held-out answers: the level and the confidence are read off them (valid's without)
        level, mia, held = log_loss(labels_v, pv), float("nan"), pv
        if self.heldout:
            held = predict_like(backbone, self.heldout_prompts, batch_size=self.batch_size)
            nonmember = sample_log_loss(self.heldout_labels, held)
            level = float(nonmember.mean())
            mia = mia_auc(member, nonmember, self.forget_labels, self.heldout_labels)
        self.seconds += time.perf_counter() - started
        observed = {}
        if self.observer is not None:
            started = time.perf_counter()
            observed = self.observer(backbone)
            self.observed_seconds += time.perf_counter() - started
        sure = confidence(held)
        return Check(float(member.mean()), level, auc(labels_v, pv), mia, observed, sure)

    def forget_loss(self, backbone: Backbone) -> float:
        """The loss on the forget subsample alone (how well a model remembers the forget set)."""
        started = time.perf_counter()
        loss = float(self._losses(backbone, self.forget_prompts, self.forget_labels).mean())
        self.seconds += time.perf_counter() - started
        return loss

    def _losses(self, backbone: Backbone, prompts: list, labels: list[int]):
        scores = predict_like(backbone, prompts, batch_size=self.batch_size)
        return sample_log_loss(labels, scores)

    def decide(self, check: Check, reference: Check) -> str | None:
        """None to go on; otherwise why to stop (prefixed "revert:" when the last step hurt)."""
        if check.valid_auc < reference.valid_auc - self.rule.max_valid_auc_drop:
            return (
                f"revert: valid AUC {check.valid_auc:.4f} fell more than "
                f"{self.rule.max_valid_auc_drop} below the original's {reference.valid_auc:.4f}"
            )
        level = self.rule.target(check, reference)
        if check.forget_loss >= level:
            whose = "held-out" if self.rule.level == "own" else "original's held-out"
            return f"forget loss {check.forget_loss:.4f} reached the {whose} level {level:.4f}"
        return None
