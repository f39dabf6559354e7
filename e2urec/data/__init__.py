"""Datasets: loaders into one schema, samples and splits, prompts, prepared folders."""

from __future__ import annotations

from pathlib import Path

from e2urec.data.errors import DataFormatError
from e2urec.data.goodbooks import load_goodbooks
from e2urec.data.movielens import load_ml1m, load_ml100k
from e2urec.data.prepared import Catalog, PreparedData, load_prepared, save_prepared
from e2urec.data.prompts import Prompt, build_prompt
from e2urec.data.samples import Sample, SampleConfig, Splits, build_samples, make_splits
from e2urec.data.schema import Dataset, Interaction, Item, User
from e2urec.data.synthetic import SyntheticConfig, generate_synthetic

FORMATS = ("auto", "synthetic", "ml-1m", "ml-100k", "goodbooks")

__all__ = [
    "FORMATS",
    "Catalog",
    "DataFormatError",
    "Dataset",
    "Interaction",
    "Item",
    "PreparedData",
    "Prompt",
    "Sample",
    "SampleConfig",
    "Splits",
    "SyntheticConfig",
    "User",
    "build_prompt",
    "build_samples",
    "detect_format",
    "generate_synthetic",
    "load_dataset",
    "load_goodbooks",
    "load_ml1m",
    "load_ml100k",
    "load_prepared",
    "load_source",
    "make_splits",
    "save_prepared",
]


def detect_format(path: Path) -> str:
    if (path / "movies.dat").is_file():
        return "ml-1m"
    if (path / "u.data").is_file() or (path / "u.item").is_file():
        return "ml-100k"
    if (path / "books.csv").is_file():
        return "goodbooks"
    raise ValueError(
        f"cannot tell the format of {path}: expected movies.dat (ml-1m), u.data (ml-100k) or "
        "books.csv (goodbooks); pass --format"
    )


def load_dataset(
    fmt: str = "auto",
    path: Path | str | None = None,
    *,
    ratings_file: str | None = None,
    synthetic: SyntheticConfig | None = None,
) -> Dataset:
    """Load any supported source; ``fmt="synthetic"`` (or no path) is the embedded default."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "synthetic" or (fmt == "auto" and path is None):
        return generate_synthetic(synthetic)
    if path is None:
        raise ValueError(f"format {fmt} needs a dataset folder")
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder {path} does not exist")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "ml-1m":
        return load_ml1m(path, ratings_file or "ratings.dat")
    if fmt == "ml-100k":
        if ratings_file:
            raise ValueError("--ratings-file applies to ml-1m and goodbooks, not ml-100k")
        return load_ml100k(path)
    return load_goodbooks(path, ratings_file or "ratings.csv")


def load_source(source: dict) -> Dataset:
    """The dataset a prepared folder was made from, by the ``source`` its meta.json records
    (``e2urec prepare`` writes it): the synthetic catalogue is generated again from its
    recorded size and seed, a dataset folder is read again from its path."""
    if "synthetic" in source:
        s = source["synthetic"]
        return generate_synthetic(
            SyntheticConfig(users=s["users"], items=s["items"], seed=s["seed"])
        )
    if not source.get("path"):
        raise ValueError(f"the prepared data's source names no dataset folder: {source}")
    return load_dataset(source["format"], source["path"], ratings_file=source.get("ratings_file"))
