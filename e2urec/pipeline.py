"""Train an LLMRec, score it, save it with its manifest: one pipeline for ``e2urec train``, the
demo and the service's base training."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from e2urec.backbones import Backbone, load_backbone
from e2urec.data import Catalog, Sample
from e2urec.metrics import utility
from e2urec.model_store import save_model
from e2urec.scoring import predict_like
from e2urec.training import TrainConfig, TrainResult, train_llmrec

Log = Callable[[str], None]


@dataclass
class Trained:
    backbone: Backbone
    result: TrainResult
    metrics: dict[str, dict[str, float]]  # split name -> AUC, GAUC, ACC, LogLoss


def load_base(
    spec: str, catalog: Catalog, train: Sequence[Sample], *, device: str | None, seed: int
) -> Backbone:
    """The model to train from: a tiny preset gets a tokenizer trained on the catalogue text of
    ``train``; a pretrained backbone brings its own."""
    corpus = catalog.tokenizer_corpus(list(train)) if spec in ("tiny", "tiny-t5") else None
    return load_backbone(spec, corpus=corpus, device=device, seed=seed)


def train_and_save(
    spec: str,
    catalog: Catalog,
    train: Sequence[Sample],
    valid: Sequence[Sample],
    evaluate_on: dict[str, Sequence[Sample]],
    cfg: TrainConfig,
    out: Path,
    manifest: dict,
    *,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[int, int, float], None] | None = None,
    log: Log = print,
) -> Trained:
    """Train ``spec`` on ``train`` (early stopping on ``valid``; ``[]`` for a fixed schedule),
    score every split of ``evaluate_on``, and save the model with ``manifest`` plus the training
    record (config, steps, time, metrics) at ``out`` (atomically)."""
    if out.exists() and not overwrite:  # fail before an hour of training, not after
        raise FileExistsError(f"{out} already exists; choose another folder or pass --force")
    backbone = load_base(spec, catalog, train, device=device, seed=cfg.seed)
    log(
        f"backbone {spec}: {type(backbone.model).__name__}, "
        f"{backbone.parameter_count():,} parameters on {backbone.device}; "
        f"train {len(train):,} samples, valid {len(valid):,}"
    )
    result = train_llmrec(
        backbone, catalog, list(train), list(valid), cfg, progress=progress, on_step=on_step
    )
    lists = f" (and {result.lists:,} candidate lists)" if result.lists else ""
    log(f"{result.stopped} after {result.steps:,} steps{lists} in {result.seconds:.0f}s")
    if result.best_step and result.best_step != result.steps:
        # a run that trains on after its best evaluation says which weights it saves
        log(f"kept the weights of step {result.best_step:,}, the best on valid {cfg.early_stop_on}")
    metrics = {}
    for name, part in evaluate_on.items():
        scores = predict_like(
            backbone,
            [catalog.prompt(s) for s in part],
            batch_size=cfg.eval_batch_size,
            progress=progress,
            desc=f"scoring {name}",
        )
        metrics[name] = utility([s.label for s in part], scores, [s.user_id for s in part])
    trained = Trained(backbone, result, metrics)
    record = {
        "train_config": asdict(cfg),
        "training": {
            "seconds": result.seconds,
            "steps": result.steps,
            "stopped": result.stopped,
            "history": result.history,
            "trainable_parameters": result.trainable_parameters,
            "lists": result.lists,
            "stage_list_loss": result.stage_list_loss,
            "best_step": result.best_step,
        },
        "metrics": metrics,
        "scored_samples": {name: len(part) for name, part in evaluate_on.items()},
    }
    save_model(backbone, out, {**record, **manifest}, overwrite=overwrite)
    return trained
