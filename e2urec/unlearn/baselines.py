"""The paper's baselines. NegGrad, NegKL and Bad-T fine-tune all weights of a copy of the
original; Retrain trains the base from scratch on the retain set (the gold standard)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from e2urec.backbones import Backbone
from e2urec.data.samples import Sample
from e2urec.encoding import answer_logits, collate, encode_prompts, target_loss
from e2urec.training import TrainConfig, train_llmrec
from e2urec.unlearn.base import PeakMemory, UnlearnResult, UnlearnTask
from e2urec.unlearn.fresh import fresh_base, fresh_model
from e2urec.unlearn.loop import LoopConfig, StepFn, unlearning_loop
from e2urec.unlearn.stopping import Monitor, StopRule
from e2urec.unlearn.teachers import (
    LazyTeacher,
    answer_logits_all,
    kl_divergence,
    soft_cross_entropy,
    vocab_size,
)


@dataclass
class FinetuneConfig:
    lr: float = 1e-4
    batch_size: int = 16
    checks_per_epoch: int = 4  # ascent can overshoot within an epoch: check more often
    stop: StopRule = field(default_factory=lambda: StopRule(max_epochs=3))
    seed: int = 0
    eval_batch_size: int = 128
    bf16: bool = False  # bfloat16 autocast for the steps (see LoopConfig.bf16)

    def __post_init__(self) -> None:
        self.loop()  # the loop's own checks, before any training starts

    def loop(self) -> LoopConfig:
        return LoopConfig(
            lr=self.lr,
            batch_size=self.batch_size,
            checks_per_epoch=self.checks_per_epoch,
            stop=self.stop,
            seed=self.seed,
            bf16=self.bf16,
        )


@dataclass
class _Ctx:
    """What a baseline's step function works with."""

    original: Backbone
    student: torch.nn.Module
    task: UnlearnTask
    forget_enc: list[list[int]]
    retain_enc: list[list[int]]
    device: torch.device

    def forget_batch(self, idx: list[int], labeled: bool = True):
        labels = [self.task.forget[i].label for i in idx] if labeled else None
        fmt = self.original.format
        return collate(fmt, [self.forget_enc[i] for i in idx], labels).to(self.device)

    def retain_batch(self, idx: list[int], labeled: bool = True):
        labels = [self.task.retain[i].label for i in idx] if labeled else None
        fmt = self.original.format
        return collate(fmt, [self.retain_enc[i] for i in idx], labels).to(self.device)


def _finetune(
    name: str,
    original: Backbone,
    task: UnlearnTask,
    cfg: FinetuneConfig,
    make_step: Callable[[_Ctx], StepFn],
    progress: bool,
) -> UnlearnResult:
    torch.manual_seed(cfg.seed)
    history: list[dict] = []
    with PeakMemory(original.device) as memory:
        started = time.perf_counter()
        catalog, tok, fmt = task.catalog, original.tokenizer, original.format
        monitor = Monitor.for_task(task, cfg.stop, cfg.seed, cfg.eval_batch_size)
        reference = monitor.check(original)
        history.append({"epoch": 0, **reference.as_dict()})
        student = copy.deepcopy(original.model).requires_grad_(True)
        view = Backbone(student, tok, original.spec, {"method": name})
        ctx = _Ctx(
            original,
            student,
            task,
            encode_prompts(tok, fmt, [catalog.prompt(s) for s in task.forget]),
            encode_prompts(tok, fmt, [catalog.prompt(s) for s in task.retain]),
            original.device,
        )
        stopped = unlearning_loop(
            view=view,
            trainable=list(student.parameters()),
            keep=lambda k: True,
            forget_lengths=[len(e) for e in ctx.forget_enc],
            n_retain=len(task.retain),
            step=make_step(ctx),
            monitor=monitor,
            reference=reference,
            cfg=cfg.loop(),
            history=history,
            name=name,
            progress=progress,
        )
        student.eval()
        seconds = time.perf_counter() - started
    n = original.parameter_count()
    return UnlearnResult(name, view, seconds, n, n, memory.peak, stopped, history)


def neggrad(
    original: Backbone,
    task: UnlearnTask,
    cfg: FinetuneConfig | None = None,
    *,
    progress: bool = True,
) -> UnlearnResult:
    """Gradient ascent on the forget set with descent on the retain set."""

    def make_step(ctx: _Ctx):
        def step(idx, ridx):
            yield -target_loss(ctx.student, ctx.forget_batch(idx))[0]
            yield target_loss(ctx.student, ctx.retain_batch(ridx))[0]

        return step

    return _finetune("neggrad", original, task, cfg or FinetuneConfig(), make_step, progress)


def negkl(
    original: Backbone,
    task: UnlearnTask,
    cfg: FinetuneConfig | None = None,
    *,
    progress: bool = True,
) -> UnlearnResult:
    """Push the forget predictions away from the original's (ascent on KL), CE on retain."""

    def make_step(ctx: _Ctx):
        prompts = [task.catalog.prompt(s) for s in task.forget]
        orig_f = torch.log_softmax(answer_logits_all(ctx.original, prompts), -1)

        def step(idx, ridx):
            student_f = answer_logits(ctx.student, ctx.forget_batch(idx, labeled=False))
            yield -kl_divergence(orig_f[idx].to(ctx.device), student_f)
            yield target_loss(ctx.student, ctx.retain_batch(ridx))[0]

        return step

    return _finetune("negkl", original, task, cfg or FinetuneConfig(), make_step, progress)


def bad_teacher(
    original: Backbone,
    task: UnlearnTask,
    cfg: FinetuneConfig | None = None,
    *,
    progress: bool = True,
) -> UnlearnResult:
    """Bad-T: distil the competent original on retain and a randomly initialised (incompetent)
    teacher on the forget set."""

    def make_step(ctx: _Ctx):
        torch.manual_seed(cfg_used.seed + 1)
        incompetent = fresh_model(ctx.original).to(ctx.device).eval()
        prompts = [task.catalog.prompt(s) for s in task.forget]
        bad_f = torch.log_softmax(answer_logits_all(ctx.original, prompts, model=incompetent), -1)
        del incompetent
        competent = LazyTeacher(
            len(task.retain),
            vocab_size(ctx.original),
            lambda idx: answer_logits(ctx.original.model, ctx.retain_batch(idx, labeled=False)),
            ctx.original.model,
        )

        def step(idx, ridx):
            student_f = answer_logits(ctx.student, ctx.forget_batch(idx, labeled=False))
            yield soft_cross_entropy(bad_f[idx].to(ctx.device), student_f)
            student_r = answer_logits(ctx.student, ctx.retain_batch(ridx, labeled=False))
            yield soft_cross_entropy(competent.get(ridx).to(ctx.device), student_r)

        return step

    cfg_used = cfg or FinetuneConfig()
    return _finetune("bad-t", original, task, cfg_used, make_step, progress)


def retrain(
    original: Backbone,
    task: UnlearnTask,
    train_config: TrainConfig,
    base_spec: str,
    *,
    progress: bool = True,
    valid: Sequence[Sample] | None = None,
) -> UnlearnResult:
    """Train the base from scratch on the retain set, the way the original was trained.

    ``valid`` is what early stopping judges by (default ``task.valid``); pass ``[]`` for a
    fixed schedule of ``train_config.epochs``, as an original trained without early stopping."""
    with PeakMemory(original.device) as memory:
        started = time.perf_counter()
        model = fresh_base(original, base_spec, train_config.seed)
        result = train_llmrec(
            model,
            task.catalog,
            task.retain,
            task.valid if valid is None else valid,
            train_config,
            progress=progress,
        )
        seconds = time.perf_counter() - started
    n = model.parameter_count()
    return UnlearnResult(
        "retrain", model, seconds, n, n, memory.peak, result.stopped, result.history
    )
