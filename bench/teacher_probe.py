"""Does E2URec's forgetting teacher ask for forgetting on this backbone? A short probe.

The paper table costs an Original, a Retrain and full E2URec runs (about 90 minutes for
SmolLM2 on 2 CPU cores). When E2URec did not forget there, the cause was its forgetting
teacher: the augmented model's forget loss rose instead of falling. This trains the memorising
Original once, then runs E2URec (through the method registry, as the table and the CLI do) with
a short student budget, and reports what each stage asked for: the augmented model's forget
loss against its target, the teachers' forget losses against the held-out level, and the
Original's and the student's attack AUC and losses.

    python -m bench.teacher_probe --path ../shared/data/ml-1m \\
        --ratings-file ratings.users_1-2999.partial.dat --backbone smollm2-135m \\
        --samples 1200 --out bench/results/teacher-probe-smollm2-cpu
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from bench.common import command_line
from bench.paper_table import parse_e2urec_settings, prepare, train_original
from e2urec.evaluate import evaluate
from e2urec.unlearn import METHODS, RunOptions, StopRule

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="results folder")],
    path: Annotated[Path, typer.Option(help="dataset folder")],
    ratings_file: str | None = None,
    backbone: str = "smollm2-135m",
    samples: int = 1200,
    seed: int = 0,
    unlearn_epochs: Annotated[
        int, typer.Option(help="the student's budget: 2 = one forget-only and one mixed epoch")
    ] = 2,
    e2urec_setting: Annotated[
        list[str] | None, typer.Option(help="NAME=VALUE: an E2URecConfig field")
    ] = None,
) -> None:
    settings = parse_e2urec_settings(e2urec_setting or [])  # checked before any training
    args = {
        "regime": "memorising",
        "repeat": 4,
        "forget_fraction": 0.1,
        "heldout_fraction": 0.1,
        "format": "auto",
        "path": path,
        "ratings_file": ratings_file,
        "samples": samples,
        "backbone": backbone,
        "epochs": None,
        "lr": None,
        "valid_samples": 1000,
        "eval_samples": 120,
    }
    world = prepare(args, seed)
    task = world.task
    print(
        f"retain {len(task.retain)}, forget {len(task.forget)}, attack held-out "
        f"{len(world.heldout)}, stop-rule held-out {len(task.heldout or [])}",
        flush=True,
    )
    original, trained_seconds = train_original(world, backbone, seed, progress=True)

    def metrics(model) -> dict[str, float]:
        found, _ = evaluate(model, world.catalog, world.test, task.forget, world.heldout)
        return found

    before = metrics(original)
    print(f"original: {before}, {trained_seconds:.0f}s", flush=True)
    options = RunOptions(
        stop=StopRule(max_epochs=unlearn_epochs, eval_samples=40, max_valid_auc_drop=0.1),
        seed=seed,
        base_spec=backbone,
        train_config=world.train_cfg,
        bf16=world.train_cfg.bf16,
        e2urec_overrides=settings,
    )
    result = METHODS["e2urec"](original, task, options)
    after = metrics(result.backbone)
    print(f"e2urec: {after}, {result.seconds:.0f}s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": command_line(),
        "splits": {
            "retain": len(task.retain),
            "forget": len(task.forget),
            "attack_heldout": len(world.heldout),
            "stop_rule_heldout": len(task.heldout or []),
        },
        "original": before | {"seconds": trained_seconds},
        "e2urec": after | {"seconds": result.seconds, "stopped": result.stopped},
        "details": result.details,
        "history": result.history,
    }
    (out / "results.json").write_text(json.dumps(record, indent=2, default=str))
    aug = result.details["augment"]
    print(
        "augmented forget losses "
        f"{aug['forget_losses']} (target {aug['target_forget_loss']}); teachers' forget "
        f"losses {result.details['teacher_forget_loss']}; alpha {result.details['alpha']:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    app()
