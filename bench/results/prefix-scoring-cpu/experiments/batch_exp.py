import time, torch, copy
from pathlib import Path
from bench.prefix_scoring import build_requests
from e2urec.scoring import prefix_answer_logits
from e2urec.encoding import collate
bb, reqs, _ = build_requests("smollm2-135m", Path("/work/shared/data/ml-1m"), "ratings.users_1-2999.partial.dat", 8, 0)
m, fmt, dev = bb.model, bb.format, bb.device
P = [r[0] for r in reqs]; S = [r[1] for r in reqs]
def timed(f):
    with torch.inference_mode():
        f(); t = time.perf_counter(); f(); return time.perf_counter() - t
def one_at_a_time():
    for p, s in reqs: prefix_answer_logits(m, fmt, [p], [s], dev)
def all_in_one():
    prefix_answer_logits(m, fmt, P, S, dev)
def pairs(k):
    def f():
        for i in range(0, 8, k): prefix_answer_logits(m, fmt, P[i:i+k], S[i:i+k], dev)
    return f
def prefix_only_all():
    b = collate(fmt, P); m(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids, use_cache=True, logits_to_keep=1)
def prefix_only_each():
    for p in P:
        b = collate(fmt, [p]); m(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids, use_cache=True, logits_to_keep=1)
for name, f in [("one at a time", one_at_a_time), ("8 in one", all_in_one), ("2 a pass", pairs(2)), ("4 a pass", pairs(4)), ("prefixes together", prefix_only_all), ("prefixes each", prefix_only_each), ("one at a time", one_at_a_time)]:
    print(name, f"{timed(f):.2f} s for 8 requests", flush=True)
