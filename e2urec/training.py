"""LLMRec: instruction-tune a base model to answer "Yes." / "No." to the recommendation prompt."""

from __future__ import annotations

import contextlib
import functools
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from peft import get_peft_model
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from e2urec.backbones import Backbone
from e2urec.data.lists import candidate_lists
from e2urec.data.prepared import Catalog
from e2urec.data.samples import NEGATIVE_POOLS, Sample, with_unrated
from e2urec.encoding import answer_loss, collate, encode_prompts, target_loss
from e2urec.listwise import (
    encode_lists,
    list_answer_logits,
    list_loss,
    mean_list_loss,
    stage_only_loss,
)
from e2urec.lora import lora_config
from e2urec.metrics import utility
from e2urec.scoring import predict_like


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    evals_per_epoch: int = 1
    # "loss": valid LogLoss (AUC is noisier and ignores calibration); "lists": the listwise
    # loss on candidate lists of the validation period (with ``lists``), what a rerank serves
    early_stop_on: Literal["auc", "loss", "lists"] = "loss"
    patience: int = 2  # evaluations without improvement before stopping
    max_valid_samples: int | None = 4000  # validation subsample used for early stopping
    eval_batch_size: int = 128
    lora: bool = False  # train a LoRA on q/v and merge it (for models too large to fine-tune)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # "qv": the attention query/value projections (the paper's student); "all-linear": every
    # linear layer but the LM head (peft's shorthand), more capacity per step for a pretrained LLM
    lora_targets: Literal["qv", "all-linear"] = "qv"
    # Autocast forward and backward to bfloat16 (weights and optimiser stay float32): 1.6x per
    # step on a CPU with bfloat16 matmuls (bench/results/llm-speed-cpu), more on a GPU; ignored
    # where the hardware lacks them (see fast_bf16). Scoring for validation stays float32 so
    # that early stopping compares like with like.
    bf16: bool = False
    # Recompute each layer's activations in the backward pass instead of holding them (activation
    # checkpointing): one more forward a step for a fraction of the memory; what lets a
    # pretrained LLM train where memory is short (bench/results/step-memory-cpu).
    activation_checkpointing: bool = False
    # "target": cross-entropy over the whole target ("Yes." + EOS), the paper's objective;
    # "answer": only P(yes) against P(no) at the answer position, what scoring reads. A
    # pretrained LLM learns the trivial full stop and EOS at once and then sees little else.
    objective: Literal["target", "answer"] = "target"
    # Unrated items per train sample, labelled "No" (e2urec.data.samples.with_unrated): 0 is the
    # paper's P(like | rated); above 0 the model learns P(rated and liked), what reranking a
    # candidate list needs.
    negatives: float = 0.0
    # Where those negatives come from: "popularity", or "co-occurrence": the candidates a
    # co-occurrence stage proposes for the sample's history, i.e. the lists a rerank orders.
    negatives_from: Literal["popularity", "co-occurrence"] = "popularity"
    # Candidate lists per train sample (e2urec.data.lists): 0 trains pointwise only; above 0
    # each step also takes a listwise loss (e2urec.listwise) over the lists a co-occurrence
    # stage proposes, whose positives are what the user went on to rate and like: the ranking
    # task itself, which pointwise P(like | rated) does not learn.
    lists: float = 0.0
    list_size: int = 20  # candidates per list: its positives and negatives drawn from the 50
    list_weight: float = 1.0  # the listwise loss's weight beside the pointwise one
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.evals_per_epoch < 1:
            raise ValueError("epochs, batch_size and evals_per_epoch must be at least 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lora_targets not in ("qv", "all-linear"):
            raise ValueError(
                f"lora_targets must be 'qv' or 'all-linear', got {self.lora_targets!r}"
            )
        if self.objective not in ("target", "answer"):
            raise ValueError(f"objective must be 'target' or 'answer', got {self.objective!r}")
        if self.negatives < 0:
            raise ValueError(
                f"negatives must be >= 0 (unrated items per sample), got {self.negatives}"
            )
        if self.negatives_from not in NEGATIVE_POOLS:
            raise ValueError(
                f"negatives_from must be one of {', '.join(NEGATIVE_POOLS)}, "
                f"got {self.negatives_from!r}"
            )
        if self.lists < 0 or self.list_weight < 0:
            raise ValueError(
                f"lists and list_weight must be >= 0, got {self.lists} and {self.list_weight}"
            )
        if self.list_size < 2:
            raise ValueError(f"list_size must be at least 2, got {self.list_size}")
        if self.early_stop_on not in ("auc", "loss", "lists"):
            raise ValueError(
                f"early_stop_on must be 'auc', 'loss' or 'lists', got {self.early_stop_on!r}"
            )
        if self.early_stop_on == "lists" and not self.lists:
            raise ValueError(
                "early_stop_on='lists' judges the listwise loss: it needs lists > 0 "
                "(e2urec train --lists 1 --early-stop-on lists)"
            )


@dataclass(frozen=True)
class Recipe:
    """How a backbone is trained when nobody says otherwise (`e2urec-service bootstrap`,
    consolidation): TrainConfig settings and how many of the latest samples to use (0 = all)."""

    train: dict
    samples: int = 0

    def config(self, **overrides) -> TrainConfig:
        given = {k: v for k, v in overrides.items() if v is not None}
        return TrainConfig(**(self.train | given))


# From-scratch presets train every weight. A pretrained LLM is instruction-tuned the TALLRec way:
# a LoRA on every linear layer merged into the weights afterwards (a q/v LoRA at lr 1e-3 stayed at
# chance), trained on the answer alone (the paper's target loss spent the steps on the full stop
# and EOS), one epoch of the latest 2,000 samples (1,200 trained: 46 minutes on 2 AVX2 cores in
# float32; bf16 where the hardware has it). bench/results/llm-train-cpu: it learns, slowly.
# A full fine-tune at the presets' lr 2e-3 would wreck a pretrained model.
_SCRATCH = Recipe({"epochs": 4, "lr": 2e-3})
_PRETRAINED = Recipe(
    {
        "lora": True,
        "lora_targets": "all-linear",
        # peft's dropout copies the input of each of the 210 adapted layers: a step took 10 s
        # with 0.05 against 5 s without (8 ML-1M prompts, bf16, 2 cores); one epoch hardly
        # needs the regularisation.
        "lora_dropout": 0.0,
        "bf16": True,
        "objective": "answer",
        "epochs": 1,
        "lr": 1e-3,
        "batch_size": 8,
        "evals_per_epoch": 2,
        "patience": 5,
        "max_valid_samples": 200,
    },
    samples=2000,
)


SCRATCH_PRESETS = ("tiny", "tiny-t5")  # backbones built from a config and trained from scratch


def recipe_for(backbone_spec: str) -> Recipe:
    return _SCRATCH if backbone_spec in SCRATCH_PRESETS else _PRETRAINED


@dataclass
class TrainResult:
    best_valid: dict[str, float]
    history: list[dict] = field(default_factory=list)
    stopped: str = ""
    seconds: float = 0.0
    steps: int = 0
    trainable_parameters: int = 0
    lists: int = 0  # candidate lists trained on (TrainConfig.lists)
    # the validation lists' loss with the candidate stage's scores alone (no model): what
    # the list loss in ``history`` must go below for the model to add to the stage's order
    stage_list_loss: float | None = None
    # the step whose weights were kept (the best evaluation); 0 when nothing was evaluated
    best_step: int = 0


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Shuffled batches of similar-length samples: random order, little padding."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        block = sorted(order[start : start + chunk], key=lengths.__getitem__)
        batches += [block[i : i + batch_size] for i in range(0, len(block), batch_size)]
    rng.shuffle(batches)
    return batches


@functools.cache  # asked at every training step; the hardware does not change
def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware. A CPU without AVX512-BF16 or
    AMX emulates them: on an AVX2-only host a SmolLM2 bf16 step took 330 s against 14 s in
    float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when asked for and the hardware has it, else nothing."""
    if not bf16 or not fast_bf16(device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def recomputed_activations(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Activation (gradient) checkpointing on ``model`` for the duration when ``enabled``: each
    layer's activations are recomputed in the backward pass instead of being held from the
    forward. Evaluation in between is unaffected (it only applies to training-mode forwards)."""
    if not enabled:
        yield
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"{type(model).__name__} does not support activation checkpointing: turn it off"
        )
    # non-reentrant: a frozen base's inputs need no requires_grad hook for the LoRA to train
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        model.activation_checkpointing_disable()


def seeded_subset(valid: Sequence[Sample], limit: int | None, seed: int) -> list[Sample]:
    """At most ``limit`` of ``valid``, drawn with ``seed`` (all of them when ``limit`` is None)."""
    if limit is None or len(valid) <= limit:
        return list(valid)
    return random.Random(seed).sample(list(valid), limit)


def with_lora(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """``model`` wrapped in the trainable LoRA that ``cfg`` describes (rank, alpha, dropout,
    target modules), the rest frozen."""
    return get_peft_model(
        model,
        lora_config(
            model,
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            targets=cfg.lora_targets,
        ),
    )


def train_llmrec(
    backbone: Backbone,
    catalog: Catalog,
    train: Sequence[Sample],
    valid: Sequence[Sample],
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    on_step: Callable[[int, int, float], None] | None = None,
    until: Callable[[Backbone], str | None] | None = None,
) -> TrainResult:
    """Train in place; on return ``backbone.model`` holds the best weights seen on validation.

    ``on_step(step, total_steps, loss)`` is called after every optimiser step. ``until(backbone)``
    is called after every epoch, the model in eval mode; a reason it returns ends training
    (e.g. a model fitted to a forget set until it has learned enough of it). With
    ``config.lists``, candidate lists built from ``train`` (and, for validation, from ``valid``
    with ``train`` behind it) add a listwise loss at every step."""
    cfg = config or TrainConfig()
    if not train:
        raise ValueError("the train split is empty")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    fmt = backbone.format
    rated = list(train)  # before any unrated negatives join: lists are built from ratings
    # Built before the model is touched: a request for lists that yields none fails here.
    lists = encode_lists(
        backbone.tokenizer,
        fmt,
        catalog,
        candidate_lists(rated, cfg.lists, cfg.seed, list_size=cfg.list_size),
    )
    if cfg.lists and not lists:
        raise ValueError(
            "no candidate list holds a positive (an item the user rated and liked later in the "
            "train split, among the 50 a co-occurrence stage proposes): train without lists, or "
            "on more samples per user"
        )
    if cfg.lora:
        backbone.model = with_lora(backbone.model, cfg)
    model = backbone.model
    if cfg.bf16 and not fast_bf16(backbone.device) and progress:
        tqdm.write(
            f"note: bf16 asked for, but {backbone.device} has no bfloat16 matmul in hardware "
            "(no AVX512-BF16/AMX); training in float32, which is faster here"
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    train = with_unrated(train, cfg.negatives, cfg.seed, pool=cfg.negatives_from)
    encoded = encode_prompts(backbone.tokenizer, fmt, [catalog.prompt(s) for s in train])
    labels = [s.label for s in train]
    lengths = [len(e) for e in encoded]
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(total * cfg.warmup_ratio), total)
    valid_eval = seeded_subset(valid, cfg.max_valid_samples, cfg.seed)
    valid_prompts = [catalog.prompt(s) for s in valid_eval]
    valid_lists = (
        encode_lists(
            backbone.tokenizer,
            fmt,
            catalog,
            candidate_lists(
                [*rated, *valid], 1.0, cfg.seed, list_size=cfg.list_size, draw_from=valid_eval
            )[: max(len(lists) // 4, 50)],  # a quarter of the training lists' count is plenty
        )
        if cfg.lists and valid_eval
        else []
    )
    if cfg.early_stop_on == "lists" and valid_eval and not valid_lists:
        raise ValueError(
            "early_stop_on='lists' found no validation list with a positive; stop on 'loss'"
        )
    # Without validation data (e.g. fitting a model to a forget set) train for all epochs.
    eval_points = (
        {
            min(steps_per_epoch, round(steps_per_epoch * k / cfg.evals_per_epoch))
            for k in range(1, cfg.evals_per_epoch + 1)
        }
        if valid_eval
        else set()
    )

    result = TrainResult(
        best_valid={},
        trainable_parameters=sum(p.numel() for p in trainable),
        lists=len(lists),
        stage_list_loss=stage_only_loss(valid_lists) if valid_lists else None,
    )
    best_state, best_key, bad_evals = None, None, 0
    started, step = time.perf_counter(), 0
    with recomputed_activations(model, cfg.activation_checkpointing):
        model.train()
        for epoch in range(1, cfg.epochs + 1):
            bar = tqdm(
                bucketed_batches(lengths, cfg.batch_size, rng),
                desc=f"epoch {epoch}/{cfg.epochs}",
                disable=not progress,
                unit="batch",
                leave=False,
            )
            running = 0.0
            # every list once an epoch, spread evenly over its steps
            list_order = rng.sample(range(len(lists)), len(lists))
            for i, idx in enumerate(bar, start=1):
                with autocast(backbone.device, cfg.bf16):
                    if cfg.objective == "answer":
                        batch = collate(fmt, [encoded[j] for j in idx]).to(backbone.device)
                        y = torch.tensor([labels[j] for j in idx], device=backbone.device)
                        loss, _ = answer_loss(model, fmt, batch, y)
                    else:
                        batch = collate(fmt, [encoded[j] for j in idx], [labels[j] for j in idx])
                        loss, _ = target_loss(model, batch.to(backbone.device))
                    share = list_order[
                        len(lists) * (i - 1) // steps_per_epoch : len(lists) * i // steps_per_epoch
                    ]
                    if share:
                        chosen = [lists[j] for j in share]
                        logits = list_answer_logits(model, fmt, chosen, backbone.device)
                        loss = loss + cfg.list_weight * list_loss(logits, fmt, chosen)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                running = 0.9 * running + 0.1 * loss.item() if i > 1 else loss.item()
                bar.set_postfix(loss=f"{running:.4f}")
                if on_step is not None:
                    on_step(step, total, running)
                if i not in eval_points:
                    continue
                scores = predict_like(backbone, valid_prompts, batch_size=cfg.eval_batch_size)
                metrics = utility([s.label for s in valid_eval], scores)
                if valid_lists:
                    metrics["list_loss"] = mean_list_loss(backbone, valid_lists)
                point = {"epoch": epoch, "step": step, "train_loss": running, **metrics}
                result.history.append(point)
                if progress:
                    tqdm.write(
                        f"epoch {epoch} step {step}: train loss {running:.4f} | valid AUC "
                        f"{metrics['auc']:.4f} ACC {metrics['acc']:.4f} "
                        f"LogLoss {metrics['logloss']:.4f}"
                        + (
                            f" | list loss {metrics['list_loss']:.4f} (the stage alone: "
                            f"{result.stage_list_loss:.4f})"
                            if valid_lists
                            else ""
                        )
                    )
                key = {
                    "auc": metrics["auc"],
                    "loss": -metrics["logloss"],
                    "lists": -metrics.get("list_loss", 0.0),
                }[cfg.early_stop_on]
                if best_key is None or key > best_key:
                    best_key, bad_evals, result.best_valid = key, 0, metrics
                    result.best_step = step
                    best_state = {
                        k: v.detach().clone()
                        for k, v in model.state_dict().items()
                        if not cfg.lora or "lora_" in k
                    }
                else:
                    bad_evals += 1
                    if bad_evals >= cfg.patience:
                        result.stopped = (
                            f"early stop: valid {cfg.early_stop_on} did not improve for "
                            f"{bad_evals} evaluation(s)"
                        )
                        break
            bar.close()
            if result.stopped:
                break
            if until is not None:
                model.eval()
                reason = until(backbone)
                model.train()
                if reason:
                    result.stopped = reason
                    break
    result.stopped = result.stopped or f"completed {cfg.epochs} epoch(s)"
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    if cfg.lora:
        backbone.model = model.merge_and_unload()
    result.seconds = time.perf_counter() - started
    result.steps = step
    backbone.model.eval()
    return result
