import contextlib, time, torch, numpy as np
from pathlib import Path
from scipy.stats import spearmanr
from bench.prefix_scoring import build_requests
from e2urec.scoring import prefix_answer_logits, yes_probability

bb, reqs, _ = build_requests("smollm2-135m", Path("/work/shared/data/ml-1m"), "ratings.users_1-2999.partial.dat", 8, 0)
m, fmt = bb.model, bb.format

@contextlib.contextmanager
def fp32_head(model):
    head = model.get_output_embeddings()
    def forward(x):
        with torch.autocast(x.device.type, enabled=False):
            return torch.nn.functional.linear(x.float(), head.weight.float(), None if head.bias is None else head.bias.float())
    head.forward = forward
    try:
        yield
    finally:
        del head.forward

def run(bf16, fp32head):
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    hctx = fp32_head(m) if fp32head else contextlib.nullcontext()
    out = []
    with torch.inference_mode(), ctx, hctx:
        prefix_answer_logits(m, fmt, [reqs[0][0]], [reqs[0][1]], bb.device)
        t = time.perf_counter()
        for p, s in reqs:
            out.append(yes_probability(prefix_answer_logits(m, fmt, [p], [s], bb.device), fmt))
        return (time.perf_counter() - t) / len(reqs), torch.cat(out)
t0, ref = run(False, False)
for b, h in [(True, False), (True, True)]:
    t, p = run(b, h)
    agr = [spearmanr(ref[i*50:(i+1)*50], p[i*50:(i+1)*50]).statistic for i in range(8)]
    print(f"bf16={b} fp32head={h}: {t:.2f} s vs {t0:.2f}; max dP {(p-ref).abs().max():.4f} mean {(p-ref).abs().mean():.4f}; rank agreement median {np.median(agr):.3f} min {min(agr):.3f}")
