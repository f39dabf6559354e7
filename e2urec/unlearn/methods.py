"""Every unlearning method by name: one call shape, checked before any work starts.

``METHODS[name](original, task, RunOptions(...))`` runs a method; the CLI (``e2urec unlearn
--method``) and the paper-table benchmark both read this registry, so a name is valid in one
exactly when it is valid in the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from e2urec.backbones import Backbone
from e2urec.data.samples import Sample
from e2urec.training import TrainConfig
from e2urec.unlearn.base import UnlearnResult, UnlearnTask
from e2urec.unlearn.baselines import FinetuneConfig, bad_teacher, neggrad, negkl, retrain
from e2urec.unlearn.e2urec import e2urec_unlearn
from e2urec.unlearn.e2urec_config import E2URecConfig, as_trained, fitted_like, student_on
from e2urec.unlearn.shards import sharded_unlearn
from e2urec.unlearn.stopping import Observer, StopRule


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What a method may need besides the original and the task."""

    stop: StopRule = field(default_factory=StopRule)
    seed: int = 0
    progress: bool = True
    out: Path | None = None  # where a method that produces an adapter writes it
    # Methods that train from the base (Retrain, SISA, RecEraser) need how the original was made:
    base_spec: str | None = None  # the backbone it was trained from (its manifest's "backbone")
    train_config: TrainConfig | None = None  # how it was trained
    train: Sequence[Sample] | None = None  # what it was trained on (the shards split it)
    valid: Sequence[Sample] | None = None  # early stopping when retraining ([]: fixed schedule)
    # bfloat16 autocast for every method's training steps where the hardware has it: what the
    # backbone's recipe says (e2urec.training.recipe_for), as for the original's own training.
    bf16: bool = False
    # E2URecConfig fields that override an E2URec entry's own (a smaller budget on a slow
    # backbone, say); checked by E2URecConfig before any work. The other methods ignore them.
    e2urec_overrides: Mapping[str, Any] = field(default_factory=dict)
    # E2URec: log-probabilities to distil on the forget set instead of its forgetting teacher
    # (``e2urec_unlearn``'s diagnostic; a benchmark passes the retrained model's answers).
    forget_targets: torch.Tensor | None = None
    # E2URec: a look at each checked state that the stop rule never reads (a benchmark's
    # distance to Retrain at every check); recorded in the history.
    observer: Observer | None = None


Run = Callable[[Backbone, UnlearnTask, RunOptions], UnlearnResult]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    run: Run
    needs: tuple[str, ...] = ()  # RunOptions fields that must be set

    def __call__(self, original: Backbone, task: UnlearnTask, options: RunOptions) -> UnlearnResult:
        self.check(options)
        return self.run(original, task, options)

    def check(self, options: RunOptions) -> None:
        missing = [n for n in self.needs if getattr(options, n) is None]
        if missing:
            raise ValueError(
                f"{self.name} trains from the base and needs {', '.join(missing)} "
                "(how the original was trained); pass them in RunOptions"
            )


_RETRAINS = ("base_spec", "train_config")


def _finetune(fn) -> Run:
    def run(original: Backbone, task: UnlearnTask, o: RunOptions) -> UnlearnResult:
        cfg = FinetuneConfig(stop=o.stop, seed=o.seed, bf16=o.bf16)
        return fn(original, task, cfg, progress=o.progress)

    return run


def _e2urec(*, paper: bool = False, **settings) -> Run:
    def run(original: Backbone, task: UnlearnTask, o: RunOptions) -> UnlearnResult:
        # The augmented model and the retain CE follow how the original was trained.
        given = {"bf16": o.bf16, **fitted_like(o.train_config), **settings, **o.e2urec_overrides}
        cfg = E2URecConfig.within(o.stop, paper=paper, seed=o.seed, **given)
        # So do its data: a base trained with unrated negatives forgets and keeps those too.
        task = as_trained(task, o.train_config, o.train)
        return e2urec_unlearn(
            original,
            task,
            cfg,
            out=o.out,
            progress=o.progress,
            forget_targets=o.forget_targets,
            observer=o.observer,
        )

    return run


def _retrain(original: Backbone, task: UnlearnTask, o: RunOptions) -> UnlearnResult:
    return retrain(original, task, o.train_config, o.base_spec, progress=o.progress, valid=o.valid)


def _sharded(by: str) -> Run:
    def run(original: Backbone, task: UnlearnTask, o: RunOptions) -> UnlearnResult:
        return sharded_unlearn(
            original,
            task,
            o.train,
            o.train_config,
            o.base_spec,
            by=by,
            progress=o.progress,
            valid=o.valid,
        )

    return run


_ALL = [
    Method(
        "retrain",
        "train the base from scratch on the retain set (exact; the reference)",
        _retrain,
        _RETRAINS,
    ),
    Method(
        "sisa",
        "retrain the shards (by sample) that held forget data; average the shards",
        _sharded("sample"),
        (*_RETRAINS, "train"),
    ),
    Method(
        "receraser",
        "retrain the user shards that held forget users; learned aggregation",
        _sharded("user"),
        (*_RETRAINS, "train"),
    ),
    Method(
        "negkl",
        "ascend the KL to the original on forget, CE on retain (all weights)",
        _finetune(negkl),
    ),
    Method(
        "neggrad", "gradient ascent on forget, descent on retain (all weights)", _finetune(neggrad)
    ),
    Method(
        "bad-t",
        "distil a random teacher on forget and the original on retain",
        _finetune(bad_teacher),
    ),
    Method(
        "e2urec",
        "LoRA student of a remembering and a forgetting teacher (this product's)",
        _e2urec(),
    ),
    Method(
        "e2urec (paper)",
        "E2URec as the paper set it: fixed alpha 2, mixed epochs",
        _e2urec(paper=True),
    ),
    Method(
        "e2urec (lora aug)",
        "ablation: the augmented model as a merged LoRA",
        _e2urec(aug_mode="lora"),
    ),
    Method(
        "e2urec (answer)",
        "E2URec distilling the two answer tokens only (what an answer-trained base already gets)",
        _e2urec(distill="answer"),
    ),
    Method(
        "e2urec (vocab)",
        "ablation: distilling the whole vocabulary (the paper) for an answer-trained base",
        _e2urec(distill="vocab"),
    ),
    Method(
        "e2urec (all-linear)",
        "ablation: the student's LoRA on every linear layer (a pretrained base's plain e2urec)",
        _e2urec(**student_on("all-linear")),
    ),
    Method(
        "e2urec (qv)",
        "ablation: the paper's q/v student for a base fine-tuned on every linear layer",
        _e2urec(**student_on("qv")),
    ),
    Method(
        "e2urec (w 0.3)",
        "ablation: more weight on forgetting (remember_weight 0.3)",
        _e2urec(remember_weight=0.3),
    ),
    Method(
        "e2urec (uncached)",
        "E2URec running both teachers at every step (the paper's code)",
        _e2urec(cache_teachers=False),
    ),
]
METHODS: dict[str, Method] = {m.name: m for m in _ALL}
assert all(n in {f.name for f in fields(RunOptions)} for m in _ALL for n in m.needs)


def get_method(name: str) -> Method:
    """The registered method, or a ValueError that lists the names to choose from."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown unlearning method {name!r}; choose from {', '.join(METHODS)}"
        ) from None
