"""A prepared dataset on disk: the catalogue, the three splits, the forget users and a data hash.

Written to a temporary folder and renamed into place, so an interrupted ``prepare`` never leaves a
half-written folder that a later ``train`` would read.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from e2urec.atomic import atomic_folder
from e2urec.data.prompts import Prompt, build_prompt
from e2urec.data.samples import Sample, SampleConfig, Splits
from e2urec.data.schema import Dataset, Domain, Item, User

FORMAT_VERSION = 1
_SPLIT_FILES = ("train", "valid", "test")


@dataclass
class Catalog:
    """What prompts are made of: users' profiles and items' titles."""

    name: str
    domain: Domain
    users: dict[int, User]
    items: dict[int, Item]

    @classmethod
    def of(cls, dataset: Dataset) -> Catalog:
        return cls(dataset.name, dataset.domain, dataset.users, dataset.items)

    def prompt(self, sample: Sample) -> Prompt:
        return self.prompt_for(sample.user_id, sample.history, sample.item_id)

    def prompt_for(
        self,
        user_id: int,
        history: tuple[tuple[int, float], ...] | list[tuple[int, float]],
        item_id: int,
    ) -> Prompt:
        return build_prompt(
            self.users[user_id],
            [(self.items[i], r) for i, r in history],
            self.items[item_id],
            self.domain,
        )

    def texts(self) -> list[str]:
        """Every title and genre: the text a catalogue-trained tokenizer learns from."""
        out = [item.title for item in self.items.values()]
        out += sorted({g for item in self.items.values() for g in item.genres})
        out += sorted({f"{u.occupation} {u.age} {u.gender}" for u in self.users.values()})
        return out

    def tokenizer_corpus(
        self, samples: list[Sample], limit: int = 3000, seed: int = 0
    ) -> list[str]:
        """What a catalogue-trained tokenizer learns from: every title and genre, plus the full
        prompts of a seeded sample of (at most ``limit``) train samples for the template's text."""
        some = samples if len(samples) <= limit else random.Random(seed).sample(samples, limit)
        return self.texts() + [self.prompt(s).text for s in some]


@dataclass
class PreparedData:
    path: Path
    catalog: Catalog
    splits: Splits
    meta: dict

    @property
    def data_hash(self) -> str:
        return self.meta["data_hash"]


def _sample_row(s: Sample) -> list:
    return [s.user_id, s.item_id, s.rating, s.label, s.timestamp, [list(h) for h in s.history]]


def _sample_from_row(row: list) -> Sample:
    return Sample(row[0], row[1], row[2], row[3], row[4], tuple((h[0], h[1]) for h in row[5]))


def _catalog_json(catalog: Catalog) -> dict:
    return {
        "name": catalog.name,
        "domain": catalog.domain,
        "users": [[u.user_id, u.gender, u.age, u.occupation] for u in catalog.users.values()],
        "items": [[i.item_id, i.title, list(i.genres), i.metadata] for i in catalog.items.values()],
    }


def _catalog_from_json(data: dict) -> Catalog:
    users = {row[0]: User(*row) for row in data["users"]}
    items = {row[0]: Item(row[0], row[1], tuple(row[2]), row[3]) for row in data["items"]}
    return Catalog(data["name"], data["domain"], users, items)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_prepared(
    out: Path | str,
    catalog: Catalog,
    splits: Splits,
    config: SampleConfig,
    source: dict,
    *,
    overwrite: bool = False,
) -> PreparedData:
    out = Path(out)
    with atomic_folder(out, overwrite=overwrite) as tmp:
        (tmp / "catalog.json").write_text(json.dumps(_catalog_json(catalog), ensure_ascii=False))
        for name in _SPLIT_FILES:
            with (tmp / f"{name}.jsonl").open("w") as f:
                for s in splits.named(name):
                    f.write(json.dumps(_sample_row(s)) + "\n")
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        meta = {
            "format_version": FORMAT_VERSION,
            "source": source,
            "sample_config": asdict(config),
            "counts": {
                n: len(splits.named(n)) for n in ("train", "valid", "test", "forget", "retain")
            },
            "forget_users": sorted(splits.forget_users),
            "files": files,
            # One hash for the whole prepared dataset, recorded in every model's manifest.
            "data_hash": hashlib.sha256(
                json.dumps(files, sort_keys=True).encode()
                + json.dumps(sorted(splits.forget_users)).encode()
            ).hexdigest(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return PreparedData(out, catalog, splits, meta)


def load_prepared(path: Path | str) -> PreparedData:
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a prepared dataset (no meta.json); create one with `e2urec prepare`"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} was prepared with format {meta.get('format_version')}, this version reads "
            f"{FORMAT_VERSION}; run `e2urec prepare` again"
        )
    for name, digest in meta["files"].items():
        if _sha256(path / name) != digest:
            raise ValueError(
                f"{path / name} changed since it was prepared; run `e2urec prepare` again"
            )
    catalog = _catalog_from_json(json.loads((path / "catalog.json").read_text()))
    parts = {}
    for name in _SPLIT_FILES:
        with (path / f"{name}.jsonl").open() as f:
            parts[name] = [_sample_from_row(json.loads(line)) for line in f]
    splits = Splits(parts["train"], parts["valid"], parts["test"], frozenset(meta["forget_users"]))
    return PreparedData(path, catalog, splits, meta)
