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
