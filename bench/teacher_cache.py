"""Cached teacher outputs against running the teachers at every step, side by side.

E2URec's two teachers are frozen, so their answer-position distributions can be computed once
per sample. This trains a tiny Original, then runs E2URec twice on the same task with the same
fixed schedule (no early stop): teachers cached, and teachers run every step as the paper's code
does. It reports the time of the teacher and training stages, and how far the two results
differ. Writes ``teacher_cache.json`` and ``teacher_cache.md``.

    python -m bench.teacher_cache --out bench/results/teacher-cache-cpu
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from bench.common import command_line
from e2urec.backbones import load_backbone
from e2urec.data import Catalog, SampleConfig, load_dataset, make_splits
from e2urec.scoring import predict_like
from e2urec.training import TrainConfig, train_llmrec
from e2urec.unlearn import E2URecConfig, StopRule, UnlearnTask, e2urec_unlearn

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="results folder")],
    path: Annotated[Path | None, typer.Option(help="dataset folder (omit for synthetic)")] = None,
    ratings_file: str | None = None,
    samples: int = 6000,
    epochs: Annotated[int, typer.Option(help="epochs of the Original")] = 3,
    unlearn_epochs: Annotated[int, typer.Option(help="fixed E2URec epochs (1 forget-only)")] = 3,
    repeats: Annotated[int, typer.Option(help="runs of each variant (timings: the median)")] = 2,
    seed: int = 0,
) -> None:
    dataset = load_dataset("auto" if path else "synthetic", path, ratings_file=ratings_file)
    splits = make_splits(dataset, SampleConfig(max_samples=samples, seed=seed))
    catalog = Catalog.of(dataset)
    original = load_backbone("tiny", corpus=catalog.tokenizer_corpus(splits.train), seed=seed)
    started = time.perf_counter()
    train_llmrec(original, catalog, splits.train, splits.valid, TrainConfig(epochs=epochs, lr=2e-3))
    print(f"original trained in {time.perf_counter() - started:.0f}s", flush=True)
    task = UnlearnTask(catalog, splits.retain, splits.forget, splits.valid)
    # A fixed schedule: the stop rule may not end either run early, so both do the same steps.
    stop = StopRule(
        max_epochs=unlearn_epochs, max_valid_auc_drop=1.0, forget_margin=-1e9, eval_samples=200
    )
    prompts = [catalog.prompt(s) for s in task.forget]
    runs: dict[str, list[dict]] = {"cached": [], "every step": []}
    scores: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for name, cache in (("cached", True), ("every step", False)):
            cfg = E2URecConfig(
                cache_teachers=cache,
                stop=stop,
                lora_dropout=0.0,
                seed=seed,
                forget_only_epochs=1,  # a fixed schedule, as before the forget-only phase grew
                keep_best=False,
            )
            result = e2urec_unlearn(original, task, cfg, progress=False)
            stages = result.details["stage_seconds"]
            runs[name].append(
                {
                    "total_seconds": result.seconds,
                    "teachers_and_training_seconds": stages["teachers"] + stages["unlearn"],
                    "stages": stages,
                    "retain_teacher_passes": result.details["retain_teacher_passes"],
                    "stopped": result.stopped,
                }
            )
            scores[name] = predict_like(result.backbone, prompts)
            print(name, json.dumps(runs[name][-1]), flush=True)

    def median(name: str, key: str) -> float:
        return float(np.median([r[key] for r in runs[name]]))

    speedup = median("every step", "teachers_and_training_seconds") / median(
        "cached", "teachers_and_training_seconds"
    )
    total_speedup = median("every step", "total_seconds") / median("cached", "total_seconds")
    gap = float(np.abs(scores["cached"] - scores["every step"]).max())
    command = command_line()
    out.mkdir(parents=True, exist_ok=True)
    (out / "teacher_cache.json").write_text(
        json.dumps(
            {"command": command, "runs": runs, "speedup": speedup, "max_score_gap": gap},
            indent=2,
        )
    )
    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    lines = [
        f"E2URec with teacher outputs cached vs run every step: {len(task.forget):,} forget and "
        f"{len(task.retain):,} retain samples, {unlearn_epochs} fixed epochs (the first "
        f"forget-only), tiny backbone; median of {repeats} runs each.",
        "",
        "| teachers | teachers + training (s) | whole call (s) | retain-teacher passes |",
        "|---|---|---|---|",
    ]
    for name in runs:
        lines.append(
            f"| {name} | {median(name, 'teachers_and_training_seconds'):.1f} | "
            f"{median(name, 'total_seconds'):.1f} | {runs[name][0]['retain_teacher_passes']} |"
        )
    lines += [
        "",
        f"Speed-up of caching: **{speedup:.2f}x** on the teacher and training stages, "
        f"{total_speedup:.2f}x on the whole call (which also trains the augmented model and "
        "runs the stop rule's checks, the same in both).",
        f"Largest difference in P(like) on the forget set between the two results: {gap:.1e} "
        "(the cache keeps the retain teacher in float16; such rounding differences compound "
        "over every optimiser step, while tests/test_unlearn.py checks that one short run "
        "agrees within 2e-3).",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
        f"threads, {device}",
    ]
    (out / "teacher_cache.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app()
