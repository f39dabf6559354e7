import time, torch
from pathlib import Path
from bench.prefix_scoring import build_requests
from e2urec.scoring import prefix_answer_logits, yes_probability
bb, reqs, _ = build_requests("smollm2-135m", Path("/work/shared/data/ml-1m"), "ratings.users_1-2999.partial.dat", 8, 0)
m, fmt, dev = bb.model, bb.format, bb.device
P = [r[0] for r in reqs]; S = [r[1] for r in reqs]
def timed(f):
    with torch.inference_mode():
        f(); t = time.perf_counter(); out = f(); return time.perf_counter() - t, out
def one():
    return torch.cat([prefix_answer_logits(m, fmt, [p], [s], dev) for p, s in reqs])
def all8():
    return prefix_answer_logits(m, fmt, P, S, dev)
for name, f in [("one at a time", one), ("8 in one", all8)]:
    t, out = timed(f)
    print(name, f"{t:.2f} s", yes_probability(out, fmt)[:3].tolist(), flush=True)
