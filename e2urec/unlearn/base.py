"""What every unlearning method takes and returns."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from e2urec.backbones import Backbone
from e2urec.data.prepared import Catalog
from e2urec.data.samples import Sample
from e2urec.unlearn.teachers import centred, push_down

if TYPE_CHECKING:
    from e2urec.unlearn.ensemble import Ensemble


@dataclass
class UnlearnTask:
    """The original model's world: what to forget, what to keep, and held-out data to judge by."""

    catalog: Catalog
    retain: list[Sample]
    forget: list[Sample]
    valid: list[Sample]  # held-out data for the stopping rule (never the test split)
    # Held-out data whose loss level the forget set should reach, when it is not ``valid``: a
    # deployment compares with never-trained users of the same period, and keeps ``valid`` (a
    # later period) for the utility bound its quality gate also checks.
    heldout: list[Sample] | None = None

    def __post_init__(self) -> None:
        if not self.forget:
            raise ValueError("nothing to forget: the forget set is empty")
        if not self.retain:
            raise ValueError("the retain set is empty")


@dataclass(frozen=True)
class TeacherAnswers:
    """What E2URec's forgetting teacher was made of, on the forget set (in the task's order): the
    original's and the augmented model's log-probabilities of the two answer tokens [n, 2],
    columns (yes, no), as the teacher saw them (over the vocabulary, or over the two answers when
    it distils those alone), and the strength it used.

    For judging the teacher itself (how far its answers sit from a retrained model's), in memory
    only: these are the forget users' answers, so they are never written beside an adapter."""

    original: torch.Tensor
    augmented: torch.Tensor
    alpha: float
    form: str = "log-prob"  # E2URecConfig.teacher_form
    # A teacher not made by a push of strength alpha (the "held-out" form): its two-way answer
    # log-probabilities, whatever the strength asked (``augmented`` is then the original's).
    given: torch.Tensor | None = None

    def forced(self, alpha: float | None = None) -> torch.Tensor:
        """The forgetting teacher's two-way answer log-probabilities at ``alpha`` (default: the
        strength it used)."""
        if self.given is not None:
            return torch.log_softmax(self.given, -1)
        strength = self.alpha if alpha is None else alpha
        orig, aug = self.original, self.augmented
        if self.form == "margin":  # centred on the two answers: as forced_logits centres them
            orig, aug = centred(orig, [0, 1]), centred(aug, [0, 1])
        return torch.log_softmax(push_down(orig, aug, strength), -1)


@dataclass
class UnlearnResult:
    method: str
    backbone: Backbone | Ensemble  # the unlearned model, ready for scoring
    seconds: float  # wall time of the unlearning step alone
    trainable_parameters: int
    total_parameters: int
    peak_memory_bytes: int
    stopped: str
    history: list[dict] = field(default_factory=list)
    adapter_path: Path | None = None
    details: dict = field(default_factory=dict)
    teacher_answers: TeacherAnswers | None = None  # E2URec's, when its teachers were tables


class PeakMemory:
    """Peak memory of a block: CUDA's allocator peak on a GPU, the process high-water mark on CPU
    (process-wide and monotonic, so on CPU it is an upper bound for the block)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
