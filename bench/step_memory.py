"""Peak memory and time of one mixed E2URec student step, by how its backward is run.

A mixed step's loss sums a forget and a retain batch. Computed whole (what the loop did until
2026-12-03), both batches' activations are alive at one backward; backpropagated in parts
(``e2urec.unlearn.loop.backward_in_parts``) only one batch's are. Activation checkpointing
(``E2URecConfig.activation_checkpointing``) recomputes each layer's activations in the backward
instead of holding them. Each variant runs in its own process, so its peak resident memory
(``ru_maxrss``) is its own: the base and the student copy are loaded, then ``--steps`` steps
on real prompts (the first untimed), with the library's own loss terms and optimiser.

    python -m bench.step_memory --backbone smollm2-135m --path ../shared/data/ml-1m \\
        --ratings-file ratings.users_1-2999.partial.dat --out bench/results/step-memory-cpu
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from bench.common import command_line, machine

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

# (name, backward in parts, activation checkpointing, student LoRA targets)
VARIANTS = [
    ("one backward (before)", False, False, "qv"),
    ("backward in parts", True, False, "qv"),
    ("one backward + checkpointing", False, True, "qv"),
    ("backward in parts + checkpointing", True, True, "qv"),
    ("all-linear student: in parts", True, False, "all-linear"),
    ("all-linear student: in parts + checkpointing", True, True, "all-linear"),
]


def resident_gb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1e9


def one_variant(args: dict) -> dict:
    """Runs in a child process: load, step, report."""
    import torch

    from bench.llm_speed import prompts_for
    from e2urec.backbones import load_backbone
    from e2urec.encoding import answer_logits, answer_loss, collate
    from e2urec.training import autocast, fast_bf16, recomputed_activations
    from e2urec.unlearn import E2URecConfig
    from e2urec.unlearn.e2urec import answer_only, forget_term, remember_term, student_model
    from e2urec.unlearn.loop import backward_in_parts

    base = load_backbone(args["backbone"], device="cpu")
    bs, steps = args["batch_size"], args["steps"]
    path = Path(args["path"]) if args["path"] else None
    encoded, labels, _ = prompts_for(base, path, args["ratings_file"], 2 * bs * steps, 0)
    fmt, device = base.format, base.device
    cfg = E2URecConfig(lora_dropout=0.0, target_modules=args["targets"])
    student = student_model(base, cfg, None)
    student.set_attn_implementation("sdpa")
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    before = resident_gb()
    w = cfg.remember_weight

    def terms(k: int):
        f_idx = range(2 * k * bs, (2 * k + 1) * bs)
        r_idx = range((2 * k + 1) * bs, (2 * k + 2) * bs)
        fb = collate(fmt, [encoded[i] for i in f_idx]).to(device)
        # teachers are cached tables in E2URec: random answer distributions stand in here
        forced = torch.log_softmax(answer_only(torch.randn(bs, student.config.vocab_size), fmt), -1)
        student_f = answer_only(answer_logits(student, fb), fmt)
        yield forget_term(w, forced, student_f, mixed=True)
        rb = collate(fmt, [encoded[i] for i in r_idx]).to(device)
        y = torch.tensor([labels[i] for i in r_idx])
        ce, student_r = answer_loss(student, fmt, rb, y)
        orig = torch.log_softmax(answer_only(torch.randn(bs, student.config.vocab_size), fmt), -1)
        yield remember_term(w, ce, orig, answer_only(student_r, fmt))

    seconds = []
    student.train()
    with recomputed_activations(student, args["checkpointing"]):
        for k in range(steps):
            started = time.perf_counter()
            if args["parts"]:
                backward_in_parts(terms(k), device, args["bf16"])
            else:
                with autocast(device, args["bf16"]):
                    loss = sum(terms(k))
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds.append(time.perf_counter() - started)
    tokens = sum(len(e) for e in encoded[: 2 * bs * steps]) / steps
    return {
        "resident_before_steps_gb": before,
        "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
        "step_seconds": seconds,
        "tokens_per_step": tokens,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "bf16_in_hardware": bool(fast_bf16(device)),
    }


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="folder for step_memory.json and .md")],
    backbone: Annotated[str, typer.Option(help="backbone spec")] = "smollm2-135m",
    path: Annotated[Path | None, typer.Option(help="ML-1M folder (else synthetic)")] = None,
    ratings_file: Annotated[str | None, typer.Option(help="ratings file in --path")] = None,
    batch_size: Annotated[int, typer.Option(help="forget and retain batch size")] = 16,
    steps: Annotated[int, typer.Option(help="steps per variant, the first untimed")] = 3,
    bf16: Annotated[bool, typer.Option(help="autocast where the hardware has bf16")] = True,
    child: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    if child is not None:  # one variant, in its own process
        print(json.dumps(one_variant(json.loads(child))))
        return
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, parts, checkpointing, targets in VARIANTS:
        args = {
            "backbone": backbone,
            "path": str(path) if path else None,
            "ratings_file": ratings_file,
            "batch_size": batch_size,
            "steps": steps,
            "bf16": bf16,
            "parts": parts,
            "checkpointing": checkpointing,
            "targets": targets,
        }
        print(f"{name} ...", flush=True)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.step_memory",
                "--out",
                str(out),
                "--child",
                json.dumps(args),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:  # e.g. killed for memory: record it, go on
            rows.append({"variant": name, **args, "error": done.stderr[-2000:] or done.returncode})
            print(f"  failed (rc {done.returncode})", flush=True)
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"variant": name, **args, **result})
        print(f"  peak {result['peak_gb']:.2f} GB, steps {result['step_seconds']}", flush=True)
    command = command_line()
    (out / "step_memory.json").write_text(
        json.dumps({"command": command, "machine": machine(), "rows": rows}, indent=2)
    )
    lines = [
        f"# Peak memory of one mixed E2URec student step ({backbone}, forget and retain "
        f"batches of {batch_size})",
        "",
        "Each variant in its own process: the base and the student copy loaded, then "
        f"{steps} steps (the first untimed). Peak is the process's peak resident memory.",
        "",
        "| variant | trainable parameters | resident before the steps | peak | step time (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | | | failed | |")
            continue
        timed = r["step_seconds"][1:] or r["step_seconds"]
        lines.append(
            f"| {r['variant']} | {r['trainable_parameters']:,} | "
            f"{r['resident_before_steps_gb']:.2f} GB | {r['peak_gb']:.2f} GB | "
            f"{sum(timed) / len(timed):.1f} |"
        )
    first = next((r for r in rows if "error" not in r), None)
    if first:
        lines += [
            "",
            f"Tokens per step (both batches): {first['tokens_per_step']:.0f}. bfloat16 in "
            f"hardware: {'yes (autocast on)' if first['bf16_in_hardware'] else 'no (float32)'}.",
        ]
    lines += ["", f"Command: `{command}`", "", f"Machine: {machine()}", ""]
    (out / "step_memory.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    app()
