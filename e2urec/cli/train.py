"""``e2urec train`` and ``e2urec score``: instruction-tune an LLMRec, score a split with it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from e2urec.cli.app import app, console, friendly_errors, metrics_table, note_other_data


def train_model(
    data: Path,
    backbone_spec: str,
    out: Path,
    cfg,
    device: str | None,
    force: bool,
    progress: bool = True,
):
    """Train on a prepared dataset's train split and save the model with its manifest."""
    from e2urec.data import load_prepared
    from e2urec.pipeline import train_and_save

    prepared = load_prepared(data)
    catalog, splits = prepared.catalog, prepared.splits
    trained = train_and_save(
        backbone_spec,
        catalog,
        splits.train,
        splits.valid,
        {"valid": splits.valid, "test": splits.test},
        cfg,
        out,
        {
            "kind": "llmrec-original",
            "data": {
                "path": str(data),
                "data_hash": prepared.data_hash,
                "split_seed": prepared.meta["sample_config"]["seed"],
                "sample_config": prepared.meta["sample_config"],
                "source": prepared.meta["source"],
            },
        },
        device=device,
        overwrite=force,
        progress=progress,
        log=console.print,
    )
    console.print(metrics_table(f"{backbone_spec} trained on {data}", trained.metrics))
    console.print(f"saved the model and its manifest to {out}")
    return trained.backbone, prepared, trained.metrics


@app.command()
@friendly_errors
def train(
    data: Annotated[Path, typer.Option(help="prepared dataset folder (from `e2urec prepare`)")],
    out: Annotated[Path, typer.Option(help="folder to save the trained model to")],
    backbone: Annotated[
        str, typer.Option(help="tiny, tiny-t5, smollm2-135m, an HF folder or a .gguf")
    ] = "tiny",
    epochs: int = 5,
    batch_size: int = 32,
    lr: Annotated[
        float, typer.Option(help="peak learning rate (5e-4 for pretrained T5 in the paper)")
    ] = 2e-3,
    patience: Annotated[
        int, typer.Option(help="evaluations without improvement before stopping")
    ] = 2,
    evals_per_epoch: int = 1,
    early_stop_on: Annotated[str, typer.Option(help="loss (valid LogLoss) or auc")] = "loss",
    lora: Annotated[
        bool, typer.Option(help="train a LoRA on q/v and merge it (large models)")
    ] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (with --lora)")] = 16,
    lora_targets: Annotated[
        str, typer.Option(help="qv (attention q/v) or all-linear (with --lora)")
    ] = "qv",
    bf16: Annotated[
        bool, typer.Option(help="bfloat16 autocast for training steps (1.6x on this CPU)")
    ] = False,
    valid_samples: Annotated[
        int, typer.Option(help="validation samples scored at each evaluation (0 = all)")
    ] = 4000,
    objective: Annotated[
        str,
        typer.Option(
            help="target (cross-entropy of 'Yes.'/'No.' + EOS, the paper's) or answer "
            "(P(yes) vs P(no) at the answer position only)"
        ),
    ] = "target",
    seed: int = 0,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    ] = None,
    force: Annotated[bool, typer.Option(help="replace an existing output folder")] = False,
):
    """Instruction-tune a base model on the train split ("Yes."/"No." targets) and save it."""
    from e2urec.training import TrainConfig

    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        evals_per_epoch=evals_per_epoch,
        early_stop_on=early_stop_on,
        lora=lora,
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        lora_targets=lora_targets,
        bf16=bf16,
        max_valid_samples=valid_samples or None,
        objective=objective,
        seed=seed,
    )
    train_model(data, backbone, out, cfg, device, force)


@app.command()
@friendly_errors
def score(
    model: Annotated[Path, typer.Option(help="model folder written by `e2urec train`")],
    data: Annotated[Path, typer.Option(help="prepared dataset folder")],
    split: Annotated[str, typer.Option(help="train, valid, test, forget or retain")] = "test",
    output: Annotated[
        Path | None, typer.Option(help="write per-sample predictions to this CSV")
    ] = None,
    batch_size: int = 128,
    device: str | None = None,
):
    """Score a split with a trained model: P(like) per sample, AUC, ACC and LogLoss."""
    import csv

    from e2urec.data import load_prepared
    from e2urec.metrics import utility
    from e2urec.model_store import load_model
    from e2urec.scoring import predict_like

    prepared = load_prepared(data)
    part = prepared.splits.named(split)
    if not part:
        raise ValueError(f"the {split} split of {data} is empty")
    backbone, manifest = load_model(model, device=device)
    note_other_data(model, manifest, prepared)
    started = time.perf_counter()
    scores = predict_like(
        backbone,
        [prepared.catalog.prompt(s) for s in part],
        batch_size=batch_size,
        progress=True,
        desc=f"scoring {split}",
    )
    seconds = time.perf_counter() - started
    metrics = utility([s.label for s in part], scores, [s.user_id for s in part])
    console.print(metrics_table(f"{model} on {data}", {split: metrics}))
    console.print(f"{len(part):,} samples in {seconds:.1f}s ({len(part) / seconds:,.0f} samples/s)")
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["user_id", "item_id", "rating", "label", "p_like"])
            for s, p in zip(part, scores, strict=True):
                writer.writerow([s.user_id, s.item_id, s.rating, s.label, f"{p:.6f}"])
        console.print(f"wrote predictions to {output}")
    return metrics
