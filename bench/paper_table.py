"""Reproduce the E2URec paper's main table: every method, one protocol, several seeds.

For each seed: prepare the splits (the seed picks the forget users), train the Original, retrain
from scratch on the retain set (the reference), run every unlearning method on the Original and
evaluate all of them the same way. Writes results.json, table.md and time_vs_jsd.png.

    python bench/paper_table.py --path ../shared/data/ml-1m \
        --ratings-file ratings.users_1-2999.partial.dat --samples 20000 --seeds 0 1 2 \
        --out bench/results/ml1m-tiny-cpu
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from e2urec.backbones import load_backbone
from e2urec.data import Catalog, SampleConfig, load_dataset, make_splits
from e2urec.evaluate import evaluate
from e2urec.metrics import distribution_distance
from e2urec.training import TrainConfig, train_llmrec
from e2urec.unlearn import E2URecConfig, StopRule, UnlearnTask, e2urec_unlearn
from e2urec.unlearn.baselines import FinetuneConfig, bad_teacher, neggrad, negkl, retrain
from e2urec.unlearn.shards import sharded_unlearn

# The paper's row order; methods not run in a given benchmark are left out of its table.
ORDER = [
    "original",
    "retrain",
    "sisa",
    "receraser",
    "negkl",
    "neggrad",
    "bad-t",
    "e2urec",
    "e2urec (full aug)",
    "e2urec (w 0.3)",
    "e2urec (uncached)",
]

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def run_seed(args: dict, seed: int, progress: bool) -> dict[str, dict]:
    dataset = load_dataset(args["format"], args["path"], ratings_file=args["ratings_file"])
    splits = make_splits(dataset, SampleConfig(max_samples=args["samples"], seed=seed))
    catalog = Catalog.of(dataset)
    rng = random.Random(seed)
    test = rng.sample(splits.test, min(args["eval_samples"], len(splits.test)))
    # Non-members for the attack: held-out samples of the users we keep, nearest in time.
    heldout_pool = [s for s in splits.valid if s.user_id not in splits.forget_users]
    heldout = rng.sample(heldout_pool, min(len(splits.forget), len(heldout_pool)))
    # Original, Retrain and every shard model train the same way: up to `epochs` epochs, early
    # stopping on validation LogLoss (patience 2), best checkpoint restored.
    train_cfg = TrainConfig(
        epochs=args["epochs"], lr=args["lr"], seed=seed, max_valid_samples=args["valid_samples"]
    )
    corpus = catalog.tokenizer_corpus(splits.train)
    original = load_backbone(args["backbone"], corpus=corpus, seed=seed)

    rows: dict[str, dict] = {}
    started = time.perf_counter()
    train_llmrec(original, catalog, splits.train, splits.valid, train_cfg, progress=progress)
    original_seconds = time.perf_counter() - started
    task = UnlearnTask(catalog, splits.retain, splits.forget, splits.valid)

    def record(
        name: str,
        backbone,
        seconds: float,
        trainable: int,
        total: int,
        stopped: str,
        reference=None,
    ):
        metrics, forget_lp = evaluate(backbone, catalog, test, splits.forget, heldout, reference)
        rows[name] = {
            **metrics,
            "seconds": seconds,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "stopped": stopped,
        }
        print(
            f"[seed {seed}] {name}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + f", {seconds:.0f}s",
            flush=True,
        )
        return forget_lp

    n = original.parameter_count()
    base = record("original", original, original_seconds, n, n, "trained")
    gold = retrain(original, task, train_cfg, args["backbone"], progress=progress)
    reference = record(
        "retrain",
        gold.backbone,
        gold.seconds,
        gold.trainable_parameters,
        gold.total_parameters,
        gold.stopped,
    )
    rows["original"].update(distribution_distance(base, reference))
    del gold

    stop = StopRule(max_epochs=args["unlearn_epochs"], eval_samples=args["check_samples"])
    methods = {
        "sisa": lambda: sharded_unlearn(
            original,
            task,
            splits.train,
            train_cfg,
            args["backbone"],
            by="sample",
            progress=progress,
        ),
        "receraser": lambda: sharded_unlearn(
            original, task, splits.train, train_cfg, args["backbone"], by="user", progress=progress
        ),
        "negkl": lambda: negkl(
            original, task, FinetuneConfig(stop=stop, seed=seed), progress=progress
        ),
        "neggrad": lambda: neggrad(
            original, task, FinetuneConfig(stop=stop, seed=seed), progress=progress
        ),
        "bad-t": lambda: bad_teacher(
            original, task, FinetuneConfig(stop=stop, seed=seed), progress=progress
        ),
        "e2urec": lambda: e2urec_unlearn(
            original, task, E2URecConfig(stop=stop, seed=seed), progress=progress
        ),
        "e2urec (full aug)": lambda: e2urec_unlearn(
            original, task, E2URecConfig(stop=stop, seed=seed, aug_mode="full"), progress=progress
        ),
        # An ablation, not the paper's setting: more weight on forgetting (w is the weight of
        # the remembering terms), for when the paper's w leaves the forget set remembered.
        "e2urec (w 0.3)": lambda: e2urec_unlearn(
            original, task, E2URecConfig(stop=stop, seed=seed, w=0.3), progress=progress
        ),
        "e2urec (uncached)": lambda: e2urec_unlearn(
            original,
            task,
            E2URecConfig(stop=stop, seed=seed, cache_teachers=False),
            progress=progress,
        ),
    }
    for name in args["methods"]:
        result = methods[name]()
        record(
            name,
            result.backbone,
            result.seconds,
            result.trainable_parameters,
            result.total_parameters,
            result.stopped,
            reference,
        )
        rows[name]["peak_memory_bytes"] = result.peak_memory_bytes
        rows[name]["history"] = result.history
        rows[name]["details"] = result.details
    return rows


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def write_table(results: dict[int, dict[str, dict]], out: Path, command: str) -> str:
    methods = [m for m in ORDER if all(m in r for r in results.values())]
    header = "| method | AUC | ACC | LL | JSD | L2 | MIA AUC | time (s) | trainable params |"
    lines = [header, "|" + "---|" * 9]

    def cell(rows: list[dict], key: str, scale: float = 100.0) -> str:
        return _mean_sd([row[key] * scale for row in rows]) if key in rows[0] else "-"

    for m in methods:
        rows = [r[m] for r in results.values()]
        lines.append(
            f"| {m} | {cell(rows, 'auc')} | {cell(rows, 'acc')} | {cell(rows, 'logloss')} | "
            f"{cell(rows, 'jsd')} | {cell(rows, 'l2')} | {cell(rows, 'mia_auc')} | "
            f"{cell(rows, 'seconds', 1.0)} | {rows[0]['trainable_parameters']:.2e} |"
        )
    lines += ["", *claims(results), "", *forgetting(results)]
    seeds = ", ".join(map(str, results))
    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    text = (
        "AUC, ACC, LL (LogLoss), JSD and L2 are x100 as in the paper; "
        f"mean ± sd over seeds {seeds}. "
        "JSD and L2 compare answer distributions with the retrained model's on the forget set; "
        "MIA AUC is a loss-threshold attack separating the forget set from held-out samples "
        "(50 = cannot tell).\n\n" + "\n".join(lines) + "\n\n"
        f"Command: `{command}`\n\nMachine: {platform.platform()}, {torch.get_num_threads()} "
        f"torch threads, {device}\n"
    )
    (out / "table.md").write_text(text)
    return text


def claims(results: dict[int, dict[str, dict]]) -> list[str]:
    """The issue's three claims, checked per seed and on the means (same run, same machine)."""
    if not all("e2urec" in r and "retrain" in r for r in results.values()):
        return []
    out = ["| check | " + " | ".join(f"seed {s}" for s in results) + " | mean | met |"]
    out.append("|" + "---|" * (len(results) + 3))

    def row(name: str, values: list[float], ok, fmt: str) -> None:
        mean = statistics.mean(values)
        cells = " | ".join(format(v, fmt) for v in values)
        out.append(f"| {name} | {cells} | {mean:{fmt}} | {'yes' if ok(mean) else 'NO'} |")

    rs = list(results.values())
    row(
        "E2URec time / Retrain time (<= 0.20)",
        [r["e2urec"]["seconds"] / r["retrain"]["seconds"] for r in rs],
        lambda v: v <= 0.2,
        ".3f",
    )
    row(
        "E2URec AUC - Retrain AUC, x100 (>= -1)",
        [100 * (r["e2urec"]["auc"] - r["retrain"]["auc"]) for r in rs],
        lambda v: v >= -1.0,
        "+.2f",
    )
    for other in ("neggrad", "negkl", "bad-t"):
        if all(other in r for r in rs):
            row(
                f"E2URec JSD / {other} JSD (< 1)",
                [r["e2urec"]["jsd"] / r[other]["jsd"] for r in rs],
                lambda v: v < 1.0,
                ".3f",
            )
    stages = [r["e2urec"].get("details", {}).get("stage_seconds") for r in rs]
    if all(stages):
        parts = ", ".join(f"{k} {statistics.mean(s[k] for s in stages):.0f}s" for k in stages[0])
        out += ["", f"E2URec time by stage (mean): {parts}."]
    return out


def forgetting(results: dict[int, dict[str, dict]]) -> list[str]:
    """Did the forget set get forgotten? Its LogLoss per seed (Retrain's is the target), and
    what E2URec's forgetting teacher asked for (the forced logits' LogLoss on the same set)."""
    rs = list(results.values())
    names = [m for m in ORDER if all(m in r and "forget_logloss" in r[m] for r in rs)]
    if not names:
        return []
    out = [
        "Forget-set LogLoss (x100; Retrain never saw these samples, so its value is the target):",
        "",
        "| model | " + " | ".join(f"seed {s}" for s in results) + " |",
        "|" + "---|" * (len(results) + 1),
    ]
    for m in names:
        cells = " | ".join(f"{100 * r[m]['forget_logloss']:.1f}" for r in rs)
        out.append(f"| {m} | {cells} |")
    for m in (n for n in names if n.startswith("e2urec")):
        teachers = [r[m].get("details", {}).get("teacher_forget_loss") for r in rs]
        if all(teachers):
            cells = " | ".join(f"{100 * t['forced']:.1f}" for t in teachers)
            out.append(f"| {m}: its forgetting teacher | {cells} |")
    return out


def write_plot(results: dict[int, dict[str, dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in ORDER:
        rows = [r[m] for r in results.values() if m in r and "jsd" in r[m]]
        if not rows:
            continue
        x = statistics.mean(row["seconds"] for row in rows)
        y = statistics.mean(row["jsd"] * 100 for row in rows)
        # A legend, not labels by the points: the E2URec variants sit on top of each other.
        ax.scatter(x, y, s=40, label=m, marker="*" if m.startswith("e2urec") else "o")
    ax.set_yscale("log")  # from about 1 (E2URec) to about 20 (Bad-T)
    ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("unlearning time (s)")
    ax.set_ylabel("JSD to Retrain (x100, log; lower is better)")
    ax.set_title("Unlearning: time vs closeness to retraining")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "time_vs_jsd.png", dpi=120)


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="results folder")],
    path: Annotated[Path | None, typer.Option(help="dataset folder (omit for synthetic)")] = None,
    fmt: Annotated[str, typer.Option("--format")] = "auto",
    ratings_file: str | None = None,
    samples: Annotated[int, typer.Option(help="last N samples of the protocol")] = 20_000,
    backbone: str = "tiny",
    epochs: Annotated[
        int, typer.Option(help="most epochs for Original, Retrain and shards (early stop)")
    ] = 5,
    valid_samples: Annotated[
        int, typer.Option(help="validation subsample for early stopping")
    ] = 1000,
    lr: float = 2e-3,
    unlearn_epochs: int = 3,
    eval_samples: Annotated[int, typer.Option(help="test samples scored per model")] = 4000,
    check_samples: Annotated[
        int, typer.Option(help="forget/valid samples per stop-rule check")
    ] = 1000,
    seeds: Annotated[list[int] | None, typer.Option(help="one run per seed")] = None,
    methods: Annotated[list[str] | None, typer.Option(help="subset of methods to run")] = None,
    progress: bool = True,
    resume: Annotated[
        bool, typer.Option(help="keep the seeds already in OUT/results.json and run the rest")
    ] = False,
):
    seeds = seeds or [0, 1, 2]
    # The uncached variant differs only in speed: bench/teacher_cache.py measures that alone.
    all_methods = [m for m in ORDER if m not in ("original", "retrain", "e2urec (uncached)")]
    args = {
        "format": fmt if path else "synthetic",
        "path": path,
        "ratings_file": ratings_file,
        "samples": samples,
        "backbone": backbone,
        "epochs": epochs,
        "valid_samples": valid_samples,
        "lr": lr,
        "check_samples": check_samples,
        "unlearn_epochs": unlearn_epochs,
        "eval_samples": eval_samples,
        "methods": methods or all_methods,
    }
    out.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, dict]] = {}
    command = "python " + " ".join(a for a in sys.argv if a != "--resume")
    saved = out / "results.json"
    if resume and saved.is_file():
        previous = json.loads(saved.read_text())
        if previous["args"] != {k: str(v) for k, v in args.items()}:
            raise typer.BadParameter(
                f"{saved} was made with other settings ({previous['args']}); "
                "use the same options or another --out",
                param_hint="--resume",
            )
        results = {int(s): r for s, r in previous["results"].items() if int(s) in seeds}
        print(f"resuming: seeds {sorted(results)} already done", flush=True)
    for seed in seeds:
        if seed in results:
            continue
        started = time.perf_counter()
        results[seed] = run_seed(args, seed, progress)
        print(f"seed {seed} done in {time.perf_counter() - started:.0f}s", flush=True)
        (out / "results.json").write_text(
            json.dumps(
                {
                    "command": command,
                    "args": {k: str(v) for k, v in args.items()},
                    "results": results,
                },
                indent=2,
                default=str,
            )
        )
        write_table(results, out, command)  # a partial table while later seeds run
    # Also after a --resume with every seed done: the table and plot follow the current code.
    print(write_table(results, out, command))
    write_plot(results, out)


if __name__ == "__main__":
    app()
