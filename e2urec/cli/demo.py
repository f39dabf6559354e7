"""``e2urec demo``: the embedded default end to end (synthetic data, tiny backbone, train,
recommend), in a few minutes on a laptop."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from e2urec.cli.app import app, console, friendly_errors
from e2urec.cli.data import PrepareOptions, prepare_data
from e2urec.cli.train import train_model


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
    prepare_data(PrepareOptions(out=data, fmt="synthetic", samples=0, seed=seed, force=True))
    cfg = TrainConfig(epochs=epochs, lr=2e-3)
    backbone, prepared, metrics = train_model(data, "tiny", model, cfg, device, True)
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
