"""``e2urec train`` and ``e2urec score``: instruction-tune an LLMRec, score a split with it."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from e2urec.cli.app import app, console, friendly_errors, metrics_table, note_other_data

if TYPE_CHECKING:
    from e2urec.training import TrainConfig


def train_model(
    data: Path,
    backbone_spec: str,
    out: Path,
    cfg,
    device: str | None,
    force: bool,
    progress: bool = True,
    score_samples: int | None = None,
):
    """Train on a prepared dataset's train split and save the model with its manifest.
    ``score_samples`` caps the valid and test samples scored for the final metrics (a seeded
    draw): a split with a long test period for the ranking bench holds tens of thousands."""
    from e2urec.data import load_prepared
    from e2urec.pipeline import train_and_save
    from e2urec.training import seeded_subset

    prepared = load_prepared(data)
    catalog, splits = prepared.catalog, prepared.splits
    scored = {
        name: seeded_subset(part, score_samples, cfg.seed)
        for name, part in (("valid", splits.valid), ("test", splits.test))
    }
    if score_samples:
        console.print(
            f"final metrics on a seeded draw of at most {score_samples:,} samples: "
            + ", ".join(f"{n} {len(p):,} of {len(splits.named(n)):,}" for n, p in scored.items())
        )
    trained = train_and_save(
        backbone_spec,
        catalog,
        splits.train,
        splits.valid,
        scored,
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


RECIPE_HELP = "default: by backbone (see above)"

# From-scratch presets keep the paper's schedule (5 epochs at 2e-3, every weight). A pretrained
# LLM takes its TALLRec-style recipe (e2urec.training.recipe_for): LoRA on every linear layer,
# merged, answer objective, 1 epoch at 1e-3, bf16 where the hardware has it. Without it, a bare
# `e2urec train --backbone smollm2-135m` would fully fine-tune at 2e-3 for 5 epochs, which wrecks
# a pretrained model and takes hours.
_CLI_SCRATCH = {"epochs": 5, "lr": 2e-3}


def cli_train_config(backbone: str, valid_samples: int | None = None, **given) -> TrainConfig:
    """The TrainConfig for `e2urec train`: options given on the command line over the recipe
    (None = not given; ``valid_samples`` 0 = every validation sample)."""
    from e2urec.training import SCRATCH_PRESETS, Recipe, recipe_for

    recipe = Recipe(_CLI_SCRATCH) if backbone in SCRATCH_PRESETS else recipe_for(backbone)
    cfg = recipe.config(**given, max_valid_samples=valid_samples)
    return dataclasses.replace(cfg, max_valid_samples=None) if valid_samples == 0 else cfg


def describe_config(backbone: str, cfg: TrainConfig) -> str:
    how = f"LoRA r{cfg.lora_r} on {cfg.lora_targets}, merged" if cfg.lora else "every weight"
    return (
        f"training {backbone}: {how}; {cfg.epochs} epoch(s) at lr {cfg.lr:g}, batch "
        f"{cfg.batch_size}, {cfg.objective} objective, bf16 {'on' if cfg.bf16 else 'off'}"
        + (
            f", {cfg.negatives:g} unrated item(s) per sample as negatives "
            f"(drawn by {cfg.negatives_from})"
            if cfg.negatives
            else ""
        )
        + (
            f", {cfg.lists:g} candidate list(s) of {cfg.list_size} per sample, listwise weight "
            f"{cfg.list_weight:g}"
            if cfg.lists
            else ""
        )
    )


TRAIN_HELP = (
    'Instruction-tune a base model on the train split ("Yes."/"No." targets) and save it.\n\n'
    "Unset options follow the backbone: the from-scratch presets (tiny, tiny-t5) train every "
    "weight for 5 epochs at lr 2e-3; a pretrained LLM (smollm2-135m, a folder, a .gguf) is tuned "
    "the TALLRec way: a LoRA (r16) on every linear layer, merged, answer objective, 1 epoch at "
    "lr 1e-3, batch 8, bfloat16 where the CPU or GPU has it, 200 validation samples."
)


@app.command(help=TRAIN_HELP)
@friendly_errors
def train(
    data: Annotated[Path, typer.Option(help="prepared dataset folder (from `e2urec prepare`)")],
    out: Annotated[Path, typer.Option(help="folder to save the trained model to")],
    backbone: Annotated[
        str, typer.Option(help="tiny, tiny-t5, smollm2-135m, an HF folder or a .gguf")
    ] = "tiny",
    epochs: Annotated[int | None, typer.Option(help=RECIPE_HELP)] = None,
    batch_size: Annotated[int | None, typer.Option(help=RECIPE_HELP)] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="peak learning rate (5e-4 for pretrained T5 in the paper); " + RECIPE_HELP
        ),
    ] = None,
    patience: Annotated[
        int | None, typer.Option(help="evaluations without improvement before stopping")
    ] = None,
    evals_per_epoch: Annotated[int | None, typer.Option(help=RECIPE_HELP)] = None,
    early_stop_on: Annotated[
        str | None,
        typer.Option(
            help="loss (valid LogLoss), auc, or lists (the listwise loss on validation-period "
            "candidate lists; with --lists)"
        ),
    ] = None,
    lora: Annotated[
        bool | None,
        typer.Option(
            "--lora/--full",
            help="train a LoRA and merge it (a pretrained LLM's default), or every weight",
        ),
    ] = None,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (with --lora)")] = 16,
    lora_targets: Annotated[
        str | None, typer.Option(help="qv (attention q/v) or all-linear (with --lora)")
    ] = None,
    bf16: Annotated[
        bool | None,
        typer.Option(
            "--bf16/--fp32", help="bfloat16 autocast for training steps (1.6x on this CPU)"
        ),
    ] = None,
    activation_checkpointing: Annotated[
        bool,
        typer.Option(
            help="recompute activations in the backward pass: a fraction of the memory for one "
            "more forward a step"
        ),
    ] = False,
    valid_samples: Annotated[
        int | None, typer.Option(help="validation samples scored at each evaluation (0 = all)")
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option(
            help="target (cross-entropy of 'Yes.'/'No.' + EOS, the paper's) or answer "
            "(P(yes) vs P(no) at the answer position only)"
        ),
    ] = None,
    negatives: Annotated[
        float | None,
        typer.Option(
            help="unrated items per train sample, labelled No: 0 learns P(like | rated) as in "
            "the paper; e.g. 0.5 learns P(rated and liked), for reranking candidates"
        ),
    ] = None,
    negatives_from: Annotated[
        str | None,
        typer.Option(
            help="popularity, or co-occurrence: the unrated items a co-occurrence candidate "
            "stage proposes for the sample's history (the lists a rerank orders)"
        ),
    ] = None,
    lists: Annotated[
        float | None,
        typer.Option(
            help="candidate lists per train sample for a listwise ranking loss (0 = none): the "
            "co-occurrence stage's candidates for the sample's history, positives the ones the "
            "user rated and liked later; e.g. 0.5, for reranking"
        ),
    ] = None,
    list_size: Annotated[
        int | None, typer.Option(help="candidates per list (with --lists)")
    ] = None,
    list_weight: Annotated[
        float | None, typer.Option(help="weight of the listwise loss (with --lists)")
    ] = None,
    seed: int = 0,
    score_samples: Annotated[
        int,
        typer.Option(
            help="score at most this many valid and test samples (a seeded draw) for the final "
            "metrics; 0 = all"
        ),
    ] = 0,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    ] = None,
    force: Annotated[bool, typer.Option(help="replace an existing output folder")] = False,
):
    cfg = cli_train_config(
        backbone,
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
        activation_checkpointing=activation_checkpointing,
        valid_samples=valid_samples,
        objective=objective,
        negatives=negatives,
        negatives_from=negatives_from,
        lists=lists,
        list_size=list_size,
        list_weight=list_weight,
        seed=seed,
    )
    console.print(f"[dim]{describe_config(backbone, cfg)}[/dim]")
    if score_samples < 0:
        raise typer.BadParameter(f"--score-samples must be 0 (all) or more, got {score_samples}")
    train_model(data, backbone, out, cfg, device, force, score_samples=score_samples or None)


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
