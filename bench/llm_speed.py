"""How fast a LoRA fine-tuning step runs on this machine, and how far from its matmul peak.

Starts from a plain peft LoRA step (q/v, r16, eager attention, float32, the LM head over every
position, random batches padded to their longest prompt) and switches on one saving at a time,
each cumulative, on the same samples: SDPA attention, the LM head only where the answer is
predicted, length bucketing, bfloat16 autocast; then the best setting with one thread, and
(``--compile``) under ``torch.compile``. Forward-only scoring is timed in float32 and bfloat16.
Every row reports real (unpadded) tokens per second, the FLOPs those tokens cost by
:mod:`bench.flops`, and that rate as a share of the measured matmul peak of the dtype used.

    python -m bench.llm_speed --backbone smollm2-135m --path ../shared/data/ml-1m \
        --ratings-file ratings.users_1-2999.partial.dat --out bench/results/llm-speed-cpu
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import typer

from bench.common import command_line, machine
from bench.flops import ModelShape, forward_flops, train_flops

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large square matmul: the most this CPU does with ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started)


@dataclass
class Setting:
    name: str
    attention: str = "eager"
    lm_head_everywhere: bool = True
    bucketing: bool = False
    bf16: bool = False
    threads: int | None = None
    compile: bool = False


def ladder(threads: int, compile_too: bool) -> list[Setting]:
    steps = [
        Setting("plain peft LoRA (eager, fp32, full LM head, random batches)"),
        Setting("+ SDPA attention", attention="sdpa"),
        Setting("+ LM head only at the answer", attention="sdpa", lm_head_everywhere=False),
        Setting("+ length bucketing", "sdpa", False, bucketing=True),
        Setting("+ bfloat16 autocast", "sdpa", False, True, bf16=True),
    ]
    if threads > 1:
        steps.append(Setting("best, 1 thread", "sdpa", False, True, True, threads=1))
    if compile_too:
        steps.append(Setting("best + torch.compile", "sdpa", False, True, True, compile=True))
    return steps


def prompts_for(backbone, path: Path | None, ratings_file: str | None, count: int, seed: int):
    """``count`` real training prompts (ML-1M when a path is given, else synthetic)."""
    from e2urec.data import Catalog, SampleConfig, SyntheticConfig, load_dataset, make_splits
    from e2urec.encoding import encode_prompts

    fmt_name = "auto" if path else "synthetic"
    dataset = load_dataset(fmt_name, path, ratings_file=ratings_file, synthetic=SyntheticConfig())
    splits = make_splits(dataset, SampleConfig(max_samples=20_000, seed=seed))
    catalog = Catalog.of(dataset)
    chosen = random.Random(seed).sample(list(splits.train), count)
    encoded = encode_prompts(
        backbone.tokenizer, backbone.format, [catalog.prompt(s) for s in chosen]
    )
    return encoded, [s.label for s in chosen], dataset.name


def batches_of(lengths: list[int], size: int, bucketing: bool, seed: int) -> list[list[int]]:
    from e2urec.training import bucketed_batches

    if bucketing:
        return bucketed_batches(lengths, size, random.Random(seed))
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def loss_of(model, batch, lm_head_everywhere: bool) -> torch.Tensor:
    from e2urec.encoding import target_loss

    if not lm_head_everywhere:
        return target_loss(model, batch)[0]
    # what a generic causal-LM trainer does: logits for every position, then pick the targets
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
    ).logits[:, -(batch.target_len + 1) : -1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), batch.labels.reshape(-1), ignore_index=-100
    )


def time_setting(model, fmt, encoded, labels, setting: Setting, batch_size: int, seed: int):
    from e2urec.encoding import collate

    model.set_attn_implementation(setting.attention)
    previous_threads = torch.get_num_threads()
    if setting.threads:
        torch.set_num_threads(setting.threads)
    step_model = torch.compile(model) if setting.compile else model
    lengths = [len(e) for e in encoded]
    plan = batches_of(lengths, batch_size, setting.bucketing, seed)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if setting.bf16 else contextlib.nullcontext()
    )
    model.train()
    padded = 0
    seconds = []
    for i, idx in enumerate([plan[0], *plan]):  # the first batch again as a warm-up
        batch = collate(fmt, [encoded[j] for j in idx], [labels[j] for j in idx])
        started = time.perf_counter()
        with autocast:
            loss = loss_of(step_model, batch, setting.lm_head_everywhere)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i:
            seconds.append(time.perf_counter() - started)
            padded += batch.input_ids.numel()
    torch.set_num_threads(previous_threads)
    return sum(seconds), padded


def time_scoring(model, fmt, encoded, bf16: bool, batch_size: int) -> float:
    from e2urec.encoding import answer_logits, collate

    model.eval()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    order = sorted(range(len(encoded)), key=lambda j: len(encoded[j]))
    plan = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    seconds = 0.0
    with torch.inference_mode(), autocast:
        answer_logits(model, collate(fmt, [encoded[j] for j in plan[0]]))  # warm-up
        for idx in plan:
            started = time.perf_counter()
            answer_logits(model, collate(fmt, [encoded[j] for j in idx]))
            seconds += time.perf_counter() - started
    return seconds


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="folder for llm_speed.json and llm_speed.md")],
    backbone: str = "smollm2-135m",
    path: Annotated[Path | None, typer.Option(help="ML-1M folder (else synthetic)")] = None,
    ratings_file: str | None = None,
    samples: Annotated[int, typer.Option(help="samples timed per setting")] = 48,
    batch_size: int = 8,
    lora_r: int = 16,
    compile: Annotated[
        bool, typer.Option(help="also time torch.compile (slow to compile)")
    ] = False,
    seed: int = 0,
) -> None:
    from peft import LoraConfig, get_peft_model

    from e2urec.backbones import load_backbone
    from e2urec.lora import attention_qv_targets, lora_config

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    peak = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    print(
        f"matmul peak: fp32 {peak['float32'] / 1e9:.0f}, bf16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s"
    )
    bb = load_backbone(backbone, device="cpu")
    shape = ModelShape.of(bb.model, backbone)
    encoded, labels, dataset = prompts_for(bb, path, ratings_file, samples, seed)
    real_tokens = sum(map(len, encoded))
    target_positions = len(bb.format.yes_ids)
    flops = sum(train_flops(shape, len(e), target_positions) for e in encoded)
    base = copy.deepcopy(bb.model)  # untouched, for the recipe's LoRA below
    model = get_peft_model(
        bb.model,
        LoraConfig(
            r=lora_r,
            lora_alpha=2 * lora_r,
            target_modules=attention_qv_targets(bb.model),
            task_type="CAUSAL_LM",
        ),
    )
    rows = []
    for setting in ladder(threads, compile):
        seconds, padded = time_setting(model, bb.format, encoded, labels, setting, batch_size, seed)
        dtype = "bfloat16" if setting.bf16 else "float32"
        row = {
            "setting": setting.name,
            "seconds_per_sample": seconds / samples,
            "tokens_per_s": real_tokens / seconds,
            "padding_share": 1 - real_tokens / padded,
            "gflops_per_s": flops / seconds / 1e9,
            "share_of_matmul_peak": flops / seconds / peak[dtype],
            "dtype": dtype,
        }
        rows.append(row)
        print(
            f"{setting.name}: {row['seconds_per_sample']:.3f} s/sample, "
            f"{row['tokens_per_s']:.0f} tok/s, {row['share_of_matmul_peak']:.0%} of peak"
        )
    # The training recipe's LoRA (e2urec.training: every linear layer) at the best setting, with
    # and without peft's dropout, which copies the input of every adapted layer.
    best = Setting("recipe", "sdpa", False, True, bf16=True)
    recipe = []
    for dropout in (0.05, 0.0):
        tuned = get_peft_model(
            copy.deepcopy(base),
            lora_config(base, r=lora_r, alpha=2 * lora_r, dropout=dropout, targets="all-linear"),
        )
        seconds, _ = time_setting(tuned, bb.format, encoded, labels, best, batch_size, seed)
        recipe.append({"lora_dropout": dropout, "seconds_per_sample": seconds / samples})
        print(
            f"recipe LoRA, all linear layers, dropout {dropout}: {seconds / samples:.3f} s/sample"
        )
        del tuned
    model.set_attn_implementation("sdpa")
    score_flops = sum(forward_flops(shape, len(e), 1) for e in encoded)
    scoring = []
    for bf16 in (False, True):
        seconds = time_scoring(model, bb.format, encoded, bf16, 32)
        dtype = "bfloat16" if bf16 else "float32"
        scoring.append(
            {
                "dtype": dtype,
                "seconds_per_sample": seconds / samples,
                "tokens_per_s": real_tokens / seconds,
                "share_of_matmul_peak": score_flops / seconds / peak[dtype],
            }
        )
    result = {
        "backbone": backbone,
        "dataset": dataset,
        "samples": samples,
        "batch_size": batch_size,
        "mean_prompt_tokens": real_tokens / samples,
        "threads": threads,
        "matmul_peak_gflops": {k: v / 1e9 for k, v in peak.items()},
        "train_step": rows,
        "recipe_lora": recipe,
        "scoring": scoring,
        "command": command_line(),
        "machine": machine(),
    }
    (out / "llm_speed.json").write_text(json.dumps(result, indent=2))
    (out / "llm_speed.md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    lines = [
        f"# LoRA fine-tuning step speed: {r['backbone']} on {r['dataset']}",
        "",
        f"{r['samples']} training prompts (mean {r['mean_prompt_tokens']:.0f} tokens), batches "
        f"of {r['batch_size']}, LoRA r16 on q/v, {r['threads']} threads. Matmul peak measured "
        f"here: float32 {r['matmul_peak_gflops']['float32']:.0f} GFLOP/s, bfloat16 "
        f"{r['matmul_peak_gflops']['bfloat16']:.0f} GFLOP/s. Each row adds one change to the "
        "one above (except the thread and compile rows, which vary the best setting). GFLOP/s "
        "counts useful work only (bench/flops.py: real tokens, the LM head at the answer "
        "positions), so padding and a head over every position show as a lower rate.",
        "",
        "| setting | s / sample | tokens / s | padding | GFLOP/s | of matmul peak |",
        "|---|---|---|---|---|---|",
    ]
    base = r["train_step"][0]["seconds_per_sample"]
    for row in r["train_step"]:
        speedup = base / row["seconds_per_sample"]
        lines.append(
            f"| {row['setting']} | {row['seconds_per_sample']:.3f} ({speedup:.2f}x) | "
            f"{row['tokens_per_s']:.0f} | {row['padding_share']:.0%} | "
            f"{row['gflops_per_s']:.0f} | {row['share_of_matmul_peak']:.0%} ({row['dtype']}) |"
        )
    if r.get("recipe_lora"):
        lines += [
            "",
            "The training recipe's LoRA (every linear layer, r16) at the best setting above:",
            "",
            "| LoRA dropout | s / sample |",
            "|---|---|",
        ]
        for row in r["recipe_lora"]:
            lines.append(f"| {row['lora_dropout']} | {row['seconds_per_sample']:.3f} |")
    lines += ["", "Scoring (forward only, LM head at the answer, length-sorted batches of 32):", ""]
    lines += ["| dtype | s / sample | tokens / s | of matmul peak |", "|---|---|---|---|"]
    for row in r["scoring"]:
        lines.append(
            f"| {row['dtype']} | {row['seconds_per_sample']:.4f} | {row['tokens_per_s']:.0f} | "
            f"{row['share_of_matmul_peak']:.0%} |"
        )
    lines += ["", f"Command: `{r['command']}`", "", f"Machine: {r['machine']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    app()
