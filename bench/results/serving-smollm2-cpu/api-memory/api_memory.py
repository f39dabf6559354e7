"""API resident memory with and without the malloc settings, SmolLM2, 8 clients, batching on."""
import asyncio, os, sys, time
from pathlib import Path
sys.path.insert(0, "/work/main")
from bench.serving import start_server, drive
from bench.common import stop
work = Path("/tmp/work/serving-smollm2-work")
users = [str(u) for u in range(1, 101)]
def status(pid):
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":"); vals[k] = int(v.split()[0]) // 1024
    return vals
for label, extra in (("default", {}), ("settings", {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "17179869184"})):
    for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        os.environ.pop(k, None)
    os.environ.update(extra)
    proc = start_server(work, 8771, {"E2UREC_BATCHING": "true", "E2UREC_PREFIX_REUSE": "true"}, 50)
    try:
        idle = status(proc.pid)
        r = asyncio.run(drive("http://127.0.0.1:8771", users, 10, 8, 40.0))
        after = status(proc.pid)
        print(label, "idle", idle, "after 8 clients", after, f"rps {r['rps']:.3f} p50 {r['p50_ms']:.0f}", flush=True)
    finally:
        stop(proc)
