"""``e2urec unlearn``: remove users from a trained LLMRec with any registered method, save the
result, and show what an attacker and a user would see before and after."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from e2urec.cli.app import app, console, friendly_errors, note_other_data

# The stop rule's level, as every command that unlearns takes it (StopRule.level says why).
StopLevel = Annotated[
    str,
    typer.Option(
        help="stop rule: whose held-out loss the forget loss should reach, 'own' (the "
        "checked model's) or 'original' (the untouched model's, fixed)"
    ),
]
# The same for the flattening guard (StopRule.min_confidence says why).
MinConfidence = Annotated[
    float,
    typer.Option(
        help="stop rule: never keep a check whose held-out answers are less sure than this "
        "fraction of the untouched model's (0: off; e.g. 0.5)"
    ),
]


def _parse_users(users: str | None) -> set[int] | None:
    if users is None:
        return None
    try:
        return {int(u) for u in users.split(",") if u.strip()}
    except ValueError:
        raise ValueError(
            f"--users takes comma-separated user ids, e.g. 1,5,9; got {users!r}"
        ) from None


def save_unlearned(result, out: Path, manifest: dict, *, overwrite: bool) -> str:
    """Write what the method produced: an adapter folder (E2URec), a model folder (all-weight
    methods, Retrain) or one model folder per shard (SISA, RecEraser). Atomic in each case."""
    from peft import PeftModel

    from e2urec.adapter_files import write_adapter
    from e2urec.atomic import atomic_folder
    from e2urec.model_store import save_model
    from e2urec.unlearn.ensemble import Ensemble

    model = result.backbone
    if isinstance(model, Ensemble):
        with atomic_folder(out, overwrite=overwrite) as tmp:
            for k, member in enumerate(model.members):
                member.save(tmp / f"member-{k}")
            (tmp / "ensemble.json").write_text(
                json.dumps({**manifest, "weights": model.weights}, indent=2, default=str)
            )
        return f"{len(model.members)} shard models and their weights"
    if isinstance(model.model, PeftModel):
        write_adapter(model.model, out, manifest, overwrite=overwrite)
        return "a LoRA adapter for the original (serve it on the original's weights)"
    save_model(model, out, manifest, overwrite=overwrite)
    return "a model folder (all weights)"


@app.command()
@friendly_errors
def unlearn(
    model: Annotated[Path, typer.Option(help="model folder written by `e2urec train`")],
    data: Annotated[Path, typer.Option(help="the prepared dataset it was trained on")],
    out: Annotated[Path, typer.Option(help="folder to write the unlearned model or adapter to")],
    method: Annotated[str, typer.Option(help="a registered method; see --list-methods")] = "e2urec",
    users: Annotated[
        str | None,
        typer.Option(help="comma-separated user ids to forget (default: the data's forget users)"),
    ] = None,
    max_epochs: Annotated[int, typer.Option(help="stop rule: at most this many epochs")] = 4,
    max_auc_drop: Annotated[
        float, typer.Option(help="stop rule: revert when validation AUC falls more than this")
    ] = 0.02,
    check_samples: Annotated[
        int, typer.Option(help="forget/valid samples per stop-rule check")
    ] = 1000,
    stop_level: StopLevel = "own",
    min_confidence: MinConfidence = 0.0,
    eval_samples: Annotated[int, typer.Option(help="test samples scored before/after")] = 2000,
    seed: int = 0,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda ... (default: cuda if present)")
    ] = None,
    force: Annotated[bool, typer.Option(help="replace an existing output folder")] = False,
    list_methods: Annotated[
        bool, typer.Option("--list-methods", help="list the methods and exit")
    ] = False,
):
    """Unlearn users from a trained model with one of the registered methods."""
    from e2urec.unlearn.methods import METHODS, get_method

    if list_methods:
        table = Table(title="unlearning methods (e2urec unlearn --method NAME)")
        table.add_column("name")
        table.add_column("what it does")
        for m in METHODS.values():
            table.add_row(m.name, m.summary)
        console.print(table)
        return
    chosen = get_method(method)  # before anything is loaded: a typo costs nothing
    from e2urec.unlearn import StopRule

    try:
        StopRule(level=stop_level, min_confidence=min_confidence)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--stop-level/--min-confidence") from None
    forget_users = _parse_users(users)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; choose another folder or pass --force")

    from e2urec.data import load_prepared
    from e2urec.evaluate import evaluate
    from e2urec.model_store import load_model
    from e2urec.training import TrainConfig
    from e2urec.unlearn import RunOptions, UnlearnTask

    prepared = load_prepared(data)
    splits, catalog = prepared.splits, prepared.catalog
    backbone, manifest = load_model(model, device=device)
    note_other_data(model, manifest, prepared, ": the forget users may not be in it")
    trained = splits.trained
    if forget_users is None:
        forget_users = set(splits.forget_users)
    unknown = sorted(forget_users - {s.user_id for s in trained})
    if unknown:
        raise ValueError(
            f"users {unknown[:10]} have no training samples in {data}: nothing to unlearn; "
            "pick users from its train split"
        )
    forget = [s for s in trained if s.user_id in forget_users]
    retain = [s for s in trained if s.user_id not in forget_users]
    # Non-members for the attack: never-trained users of the same period if the data has them,
    # else the kept users' later (validation) samples, as many as the forget set.
    rng = random.Random(seed)
    heldout = splits.heldout or [s for s in splits.valid if s.user_id not in forget_users]
    heldout = rng.sample(heldout, min(len(forget), len(heldout)))
    task = UnlearnTask(catalog, retain, forget, splits.valid, heldout=splits.heldout or None)
    train_config = TrainConfig(**manifest["train_config"]) if "train_config" in manifest else None
    options = RunOptions(
        stop=StopRule(
            max_epochs=max_epochs,
            max_valid_auc_drop=max_auc_drop,
            eval_samples=check_samples,
            level=stop_level,
            min_confidence=min_confidence,
        ),
        seed=seed,
        base_spec=manifest.get("backbone"),
        train_config=train_config,
        train=trained,
        valid=splits.valid,
        bf16=train_config.bf16 if train_config is not None else False,  # as it was trained
    )
    chosen.check(options)
    console.print(
        f"{chosen.name}: forgetting {len(forget_users):,} users ({len(forget):,} samples), "
        f"keeping {len(retain):,} samples"
        + (
            f"; the base also trained on {train_config.negatives:g} unrated negative(s) a "
            "sample, which E2URec forgets and keeps as well"
            if train_config is not None and train_config.negatives
            else ""
        )
        + (
            "; the base also trained on candidate lists (--lists): Retrain rebuilds them without "
            "the forgotten users, the other methods unlearn those users' rated samples only"
            if train_config is not None and train_config.lists
            else ""
        )
    )
    test = rng.sample(splits.test, min(eval_samples, len(splits.test)))
    before, _ = evaluate(backbone, catalog, test, forget, heldout)
    started = time.perf_counter()
    result = chosen(backbone, task, options)
    seconds = time.perf_counter() - started
    after, _ = evaluate(result.backbone, catalog, test, forget, heldout)
    what = save_unlearned(
        result,
        out,
        {
            "kind": "llmrec-unlearned",
            "method": chosen.name,
            "original": str(model),
            "forget_users": len(forget_users),  # a count: the folder outlives the deletion
            "forget_samples": len(forget),
            "stopped": result.stopped,
            "seconds": seconds,
            "history": result.history,
            "metrics": {"original": before, "unlearned": after},
        },
        overwrite=force,
    )
    table = Table(title=f"{chosen.name} on {model}: {result.stopped}")
    table.add_column("model")
    for col in ("test AUC", "forget LogLoss", "held-out LogLoss", "MIA AUC"):
        table.add_column(col, justify="right")
    for name, m in (("original", before), (chosen.name, after)):
        table.add_row(
            name,
            f"{m['auc']:.4f}",
            f"{m['forget_logloss']:.4f}",
            f"{m['heldout_logloss']:.4f}",
            f"{m['mia_auc']:.4f}",
        )
    console.print(table)
    console.print(
        f"{seconds:.0f}s, {result.trainable_parameters:,} trainable of "
        f"{result.total_parameters:,} parameters; wrote {what} to {out}"
    )
    console.print(
        "forgotten means: forget LogLoss up to the held-out level and MIA AUC near 0.5, "
        "with test AUC kept"
    )
