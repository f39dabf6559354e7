"""``e2urec prepare``: load a dataset, build the paper's samples and splits, write them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from e2urec.cli.app import app, console, friendly_errors

Format = Annotated[
    str, typer.Option("--format", help="auto, synthetic, ml-1m, ml-100k or goodbooks")
]


@dataclass(frozen=True, kw_only=True)
class PrepareOptions:
    out: Path
    fmt: str = "auto"
    path: Path | None = None  # None: the synthetic catalogue
    ratings_file: str | None = None
    samples: int = 100_000  # the last N samples (0: all)
    history: int = 10  # K, the previous items shown in a prompt
    like_threshold: float = 3.0
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train/valid/test, chronological
    forget_fraction: float = 0.2
    seed: int = 42
    synthetic_users: int = 300
    synthetic_items: int = 400
    force: bool = False


def prepare_data(o: PrepareOptions):
    from e2urec.data import (
        Catalog,
        SampleConfig,
        SyntheticConfig,
        load_dataset,
        make_splits,
        save_prepared,
    )

    config = SampleConfig(
        history_len=o.history,
        max_samples=o.samples if o.samples and o.samples > 0 else None,
        like_threshold=o.like_threshold,
        split=o.split,
        forget_fraction=o.forget_fraction,
        seed=o.seed,
    )
    synthetic = SyntheticConfig(users=o.synthetic_users, items=o.synthetic_items, seed=o.seed)
    started = time.perf_counter()
    dataset = load_dataset(o.fmt, o.path, ratings_file=o.ratings_file, synthetic=synthetic)
    console.print(f"loaded {dataset.summary()} in {time.perf_counter() - started:.1f}s")
    splits = make_splits(dataset, config)
    source = {
        "format": o.fmt,
        "path": str(o.path) if o.path else None,
        "ratings_file": o.ratings_file,
        "dataset": dataset.name,
    }
    if dataset.name.startswith("synthetic"):
        source["synthetic"] = {
            "users": o.synthetic_users,
            "items": o.synthetic_items,
            "seed": o.seed,
        }
    prepared = save_prepared(o.out, Catalog.of(dataset), splits, config, source, overwrite=o.force)
    counts = prepared.meta["counts"]
    console.print(
        f"wrote {o.out}: train {counts['train']:,} (forget {counts['forget']:,} from "
        f"{len(splits.forget_users):,} users, retain {counts['retain']:,}), "
        f"valid {counts['valid']:,}, "
        f"test {counts['test']:,}; data hash {prepared.data_hash[:12]}"
    )
    return prepared


def parse_split(text: str) -> tuple[float, float, float]:
    """'0.6,0.2,0.2' -> (0.6, 0.2, 0.2); the sum and signs are SampleConfig's to check."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise ValueError(
            f"--split takes three fractions for train, valid and test, e.g. 0.6,0.2,0.2; "
            f"got {text!r}"
        )
    return parts  # type: ignore[return-value]


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
    split: Annotated[
        str,
        typer.Option(
            help="train,valid,test fractions of the N samples, oldest first; e.g. "
            "0.08,0.05,0.87 keeps training small and gives the ranking bench a long test "
            "period with hundreds of users"
        ),
    ] = "0.6,0.2,0.2",
    forget_fraction: Annotated[float, typer.Option(help="fraction of train users to forget")] = 0.2,
    seed: Annotated[int, typer.Option(help="seed for the forget users (and synthetic data)")] = 42,
    synthetic_users: int = 300,
    synthetic_items: int = 400,
    force: Annotated[bool, typer.Option(help="replace an existing output folder")] = False,
):
    """Load a dataset, build the paper's samples and splits, and write them to a folder."""
    prepare_data(
        PrepareOptions(
            out=out,
            fmt=fmt,
            path=path,
            ratings_file=ratings_file,
            samples=samples,
            history=history,
            like_threshold=like_threshold,
            split=parse_split(split),
            forget_fraction=forget_fraction,
            seed=seed,
            synthetic_users=synthetic_users,
            synthetic_items=synthetic_items,
            force=force,
        )
    )
