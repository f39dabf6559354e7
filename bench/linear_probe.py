"""Does a frozen backbone already *know* what LLMRec asks? A linear probe on its hidden state.

For each backbone, the last hidden state at the answer position of every train, valid and test
prompt (no training, no LoRA) feeds a logistic regression fitted on train (C picked on valid).
Its test AUC says whether the signal is in the representation: if the probe learns and the
fine-tuned model does not, the recipe is what fails, not the model. Writes ``probe.json`` and
``probe.md``.

    python -m bench.linear_probe --data /tmp/e2urec-backbones/data --backbone smollm2-135m \
        --out bench/results/llm-train-cpu
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from bench.common import command_line, machine

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@torch.inference_mode()
def answer_states(backbone, prompts, batch_size: int = 16, desc: str = "") -> np.ndarray:
    """The final hidden state (after the last norm) at the answer position, [n, hidden]."""
    from e2urec.encoding import collate, encode_prompts
    from e2urec.scoring import length_batches

    fmt = backbone.format
    encoded = encode_prompts(backbone.tokenizer, fmt, prompts)
    out = np.zeros((len(prompts), backbone.model.config.hidden_size), dtype=np.float32)
    backbone.model.eval()
    for idx in tqdm(length_batches([len(e) for e in encoded], batch_size), desc=desc):
        batch = collate(fmt, [encoded[i] for i in idx]).to(backbone.device)
        hidden = backbone.model.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
        ).last_hidden_state[:, -1]  # left padding: the answer is the last position
        out[idx] = hidden.float().cpu().numpy()
    return out


@app.command()
def main(
    data: Annotated[Path, typer.Option(help="prepared dataset folder")],
    out: Annotated[Path, typer.Option(help="folder for probe.json and probe.md")],
    backbone: Annotated[
        list[str], typer.Option(help="backbone spec or trained model folder (repeat)")
    ],
    train_samples: Annotated[int, typer.Option(help="train samples used (0 = all)")] = 0,
) -> None:
    from e2urec.backbones import load_backbone
    from e2urec.data import load_prepared
    from e2urec.metrics import utility
    from e2urec.model_store import load_model

    prepared = load_prepared(data)
    splits = {
        "train": prepared.splits.train[: train_samples or None],
        "valid": prepared.splits.valid,
        "test": prepared.splits.test,
    }
    rows = {}
    for spec in backbone:
        started = time.perf_counter()
        if Path(spec).is_dir():
            model, _ = load_model(Path(spec))
        else:
            corpus = prepared.catalog.tokenizer_corpus(prepared.splits.train)
            model = load_backbone(spec, corpus=corpus)
        feats = {
            name: answer_states(
                model, [prepared.catalog.prompt(s) for s in part], desc=f"{spec} {name}"
            )
            for name, part in splits.items()
        }
        labels = {name: np.array([s.label for s in part]) for name, part in splits.items()}
        scaler = StandardScaler().fit(feats["train"])
        best = None
        for c in (0.001, 0.01, 0.1, 1.0):
            clf = LogisticRegression(C=c, max_iter=2000)
            clf.fit(scaler.transform(feats["train"]), labels["train"])
            valid = clf.predict_proba(scaler.transform(feats["valid"]))[:, 1]
            auc_valid = utility(labels["valid"].tolist(), valid)["auc"]
            if best is None or auc_valid > best[0]:
                best = (auc_valid, c, clf)
        _, c, clf = best
        test_scores = clf.predict_proba(scaler.transform(feats["test"]))[:, 1]
        test = utility(
            labels["test"].tolist(),
            test_scores.tolist(),
            [s.user_id for s in splits["test"]],
        )
        rows[spec] = {
            "C": c,
            "valid_auc": best[0],
            "test": test,
            "seconds": time.perf_counter() - started,
            "train_samples": len(splits["train"]),
        }
        print(spec, rows[spec], flush=True)
    result = {
        "rows": rows,
        "command": command_line(),
        "machine": machine(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Linear probe on the frozen backbone's answer-position hidden state",
        "",
        "Logistic regression on the last hidden state at the answer position (no fine-tuning),",
        "fitted on train, C chosen on valid AUC; the same prepared split as `backbones.md`.",
        "",
        "| backbone | train samples | C | valid AUC | test AUC | GAUC | LogLoss | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for spec, r in rows.items():
        t = r["test"]
        lines.append(
            f"| {spec} | {r['train_samples']:,} | {r['C']} | {r['valid_auc']:.4f} | "
            f"{t['auc']:.4f} | {t.get('gauc', float('nan')):.4f} | {t['logloss']:.4f} | "
            f"{r['seconds']:.0f} |"
        )
    lines += ["", f"Command: `{result['command']}`", "", f"Machine: {result['machine']}", ""]
    (out / "probe.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    app()
