"""The ``e2urec`` command line: prepare data, train the LLMRec, score it, or run the demo."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="Efficient and effective unlearning for LLM-based recommenders (E2URec).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


def friendly_errors(fn):
    """Expected failures (bad files, bad options, missing paths) end in one clear line, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from e2urec.backbones import BackboneError
        from e2urec.data import DataFormatError

        try:
            return fn(*args, **kwargs)
        except (
            DataFormatError,
            BackboneError,
            FileExistsError,
            FileNotFoundError,
            LookupError,
            ValueError,
            RuntimeError,
        ) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            # soft_wrap: never break a path or a file:line in two
            err.print(
                f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from None

    return wrapper


def _metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title)
    for col in ("split", "AUC", "GAUC", "ACC", "LogLoss"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for name, m in rows.items():
        gauc = f"{m['gauc']:.4f}" if "gauc" in m else "-"
        table.add_row(name, f"{m['auc']:.4f}", gauc, f"{m['acc']:.4f}", f"{m['logloss']:.4f}")
    return table


# -- prepare ---------------------------------------------------------------------------------

Format = Annotated[
    str, typer.Option("--format", help="auto, synthetic, ml-1m, ml-100k or goodbooks")
]


def _prepare(
    out: Path,
    fmt: str,
    path: Path | None,
    ratings_file: str | None,
    samples: int | None,
    history: int,
    like_threshold: float,
    forget_fraction: float,
    seed: int,
    synthetic_users: int,
    synthetic_items: int,
    force: bool,
):
    from e2urec.data import (
        Catalog,
        SampleConfig,
        SyntheticConfig,
        load_dataset,
        make_splits,
        save_prepared,
    )

    config = SampleConfig(
        history_len=history,
        max_samples=samples if samples and samples > 0 else None,
        like_threshold=like_threshold,
        forget_fraction=forget_fraction,
        seed=seed,
    )
    synthetic = SyntheticConfig(users=synthetic_users, items=synthetic_items, seed=seed)
    started = time.perf_counter()
    dataset = load_dataset(fmt, path, ratings_file=ratings_file, synthetic=synthetic)
    console.print(f"loaded {dataset.summary()} in {time.perf_counter() - started:.1f}s")
    splits = make_splits(dataset, config)
    source = {
        "format": fmt,
        "path": str(path) if path else None,
        "ratings_file": ratings_file,
        "dataset": dataset.name,
    }
    if dataset.name.startswith("synthetic"):
        source["synthetic"] = {"users": synthetic_users, "items": synthetic_items, "seed": seed}
    prepared = save_prepared(out, Catalog.of(dataset), splits, config, source, overwrite=force)
    counts = prepared.meta["counts"]
    console.print(
        f"wrote {out}: train {counts['train']:,} (forget {counts['forget']:,} from "
        f"{len(splits.forget_users):,} users, retain {counts['retain']:,}), "
        f"valid {counts['valid']:,}, "
        f"test {counts['test']:,}; data hash {prepared.data_hash[:12]}"
    )
    return prepared


@app.command()
@friendly_errors
def prepare(
    out: Annotated[Path, typer.Option(help="folder to write the prepared dataset to")],
    fmt: Format = "auto",
    path: Annotated[
        Path | None, typer.Option(help="dataset folder; omit for the synthetic default")
    ] = None,
    ratings_file: Annotated[
        str | None, typer.Option(help="ratings file name inside the folder")
    ] = None,
    samples: Annotated[int, typer.Option(help="keep the last N samples (0 = all)")] = 100_000,
    history: Annotated[int, typer.Option(help="previous items shown in the prompt (K)")] = 10,
    like_threshold: Annotated[float, typer.Option(help="label = rating > this")] = 3.0,
    forget_fraction: Annotated[float, typer.Option(help="fraction of train users to forget")] = 0.2,
    seed: Annotated[int, typer.Option(help="seed for the forget users (and synthetic data)")] = 42,
    synthetic_users: int = 300,
    synthetic_items: int = 400,
    force: Annotated[bool, typer.Option(help="replace an existing output folder")] = False,
):
    """Load a dataset, build the paper's samples and splits, and write them to a folder."""
    _prepare(
        out,
        fmt,
        path,
        ratings_file,
        samples,
        history,
        like_threshold,
        forget_fraction,
        seed,
        synthetic_users,
        synthetic_items,
        force,
    )


# -- train -------------------------------------------------------------------------------------


def _train(
    data: Path,
    backbone_spec: str,
    out: Path,
    cfg,
    device: str | None,
    force: bool,
    progress: bool = True,
):
    from e2urec.backbones import load_backbone
    from e2urec.data import load_prepared
    from e2urec.metrics import utility
    from e2urec.model_store import save_model
    from e2urec.scoring import predict_like
    from e2urec.training import config_dict, train_llmrec

    if out.exists() and not force:  # fail before an hour of training, not after
        raise FileExistsError(f"{out} already exists; choose another folder or pass --force")
    prepared = load_prepared(data)
    catalog, splits = prepared.catalog, prepared.splits
    corpus = (
        catalog.tokenizer_corpus(splits.train) if backbone_spec in ("tiny", "tiny-t5") else None
    )
    backbone = load_backbone(backbone_spec, corpus=corpus, device=device, seed=cfg.seed)
    console.print(
        f"backbone {backbone_spec}: {type(backbone.model).__name__}, "
        f"{backbone.parameter_count():,} parameters on {backbone.device}; "
        f"train {len(splits.train):,} samples, valid {len(splits.valid):,}"
    )
    result = train_llmrec(backbone, catalog, splits.train, splits.valid, cfg, progress=progress)
    console.print(f"{result.stopped} after {result.steps:,} steps in {result.seconds:.0f}s")
    metrics = {}
    for name in ("valid", "test"):
        part = splits.named(name)
        scores = predict_like(
            backbone,
            [catalog.prompt(s) for s in part],
            batch_size=cfg.eval_batch_size,
            progress=progress,
            desc=f"scoring {name}",
        )
        metrics[name] = utility([s.label for s in part], scores, [s.user_id for s in part])
    console.print(_metrics_table(f"{backbone_spec} trained on {data}", metrics))
    manifest = {
        "kind": "llmrec-original",
        "data": {
            "path": str(data),
            "data_hash": prepared.data_hash,
            "split_seed": prepared.meta["sample_config"]["seed"],
            "sample_config": prepared.meta["sample_config"],
            "source": prepared.meta["source"],
        },
        "train_config": config_dict(cfg),
        "training": {
            "seconds": result.seconds,
            "steps": result.steps,
            "stopped": result.stopped,
            "history": result.history,
            "trainable_parameters": result.trainable_parameters,
        },
        "metrics": metrics,
    }
    save_model(backbone, out, manifest, overwrite=force)
    console.print(f"saved the model and its manifest to {out}")
    return backbone, prepared, metrics


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
    _train(data, backbone, out, cfg, device, force)


# -- score -------------------------------------------------------------------------------------


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
    trained_on = manifest.get("data", {}).get("data_hash")
    if trained_on and trained_on != prepared.data_hash:
        err.print(
            f"[yellow]note:[/] {model} was trained on other data ({trained_on[:12]}), "
            f"this is {prepared.data_hash[:12]}"
        )
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
    console.print(_metrics_table(f"{model} on {data}", {split: metrics}))
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


# -- demo --------------------------------------------------------------------------------------


@app.command()
@friendly_errors
def demo(
    out: Annotated[Path, typer.Option(help="working folder for the demo's data and model")] = Path(
        "runs/demo"
    ),
    epochs: int = 4,
    users: Annotated[int, typer.Option(help="how many users' recommendations to show")] = 3,
    k: Annotated[int, typer.Option(help="recommendations per user")] = 5,
    seed: int = 42,
    device: str | None = None,
):
    """End to end on the embedded default: synthetic data, tiny backbone, train, recommend."""
    from e2urec.recommend import latest_history, recommend
    from e2urec.training import TrainConfig

    started = time.perf_counter()
    data, model = out / "data", out / "model"
    _prepare(data, "synthetic", None, None, 0, 10, 3.0, 0.2, seed, 300, 400, True)
    cfg = TrainConfig(epochs=epochs, lr=2e-3)
    backbone, prepared, metrics = _train(data, "tiny", model, cfg, device, True)
    catalog, splits = prepared.catalog, prepared.splits
    rated: dict[int, set[int]] = {}
    for part in (splits.train, splits.valid, splits.test):
        for s in part:
            rated.setdefault(s.user_id, set()).update([s.item_id, *(i for i, _ in s.history)])
    shown = sorted({s.user_id for s in splits.test})[:users]
    for user_id in shown:
        history = latest_history(splits, user_id, 10)
        candidates = [i for i in catalog.items if i not in rated[user_id]]
        recs = recommend(backbone, catalog, user_id, history, candidates, k)
        liked = [catalog.items[i].title for i, r in history if r > 3][-3:]
        table = Table(title=f"user {user_id}: recently liked {', '.join(liked) or 'nothing'}")
        table.add_column("#", justify="right")
        table.add_column("recommended")
        table.add_column("genres")
        table.add_column("P(like)", justify="right")
        for rank, rec in enumerate(recs, 1):
            table.add_row(
                str(rank),
                rec.title,
                ", ".join(catalog.items[rec.item_id].genres),
                f"{rec.score:.4f}",
            )
        console.print(table)
    console.print(
        f"demo done in {time.perf_counter() - started:.0f}s: "
        f"valid AUC {metrics['valid']['auc']:.4f}, "
        f"test AUC {metrics['test']['auc']:.4f}; model in {model}"
    )
    (out / "demo.json").write_text(
        json.dumps({"metrics": metrics, "seconds": time.perf_counter() - started})
    )


if __name__ == "__main__":
    app()
