"""What the benchmarks that drive a live stack share: starting the API as its own process,
waiting for it, stopping process groups, and naming the machine in the results."""

from __future__ import annotations

import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
import typer

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**values: str) -> dict[str, str]:
    """This environment without any E2UREC_ setting of the caller's, plus ``values``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("E2UREC_")} | values


def start(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    """A process in its own group (so stopping it stops its children too)."""
    out = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def start_api(port: int, env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    """``e2urec-service serve`` on ``port``, returned once ``/ready`` answers 200."""
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    proc = start([*cmd, "--log-level", "warning"], env, log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode}")
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError("the API did not become ready in 180 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def command_line(skip: tuple[str, ...] = ()) -> str:
    """How this bench was run, as a reader would type it again: ``python -m bench.NAME ...``
    (under ``-m``, ``sys.argv[0]`` is the file's absolute path)."""
    script = Path(sys.argv[0])
    head = (
        f"python -m bench.{script.stem}"
        if script.parent == ROOT / "bench"
        else "python " + str(script)
    )
    args = [a for a in sys.argv[1:] if a not in skip]
    return " ".join([head, shlex.join(args)]) if args else head


def stop_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (``kill``, ``timeout``) into SystemExit, so a stopped bench still runs its
    ``finally`` blocks: the API and worker processes it started stop, its database is dropped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")


def machine() -> str:
    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    # glibc's mmap threshold changes a SmolLM2 pass on the CPU by up to 1.75x
    # (bench/results/prefix-scoring-cpu-malloc), so a result names the setting it ran under
    malloc = [f"{k}={os.environ[k]}" for k in MALLOC_SETTINGS if k in os.environ]
    allocator = ", ".join(malloc) if malloc else "glibc malloc defaults"
    return f"{platform.platform()}, {os.cpu_count()} CPUs, {device}, {allocator}"


def name_values(items: list[str], param_hint: str) -> dict[str, str]:
    """``NAME=VALUE`` options as a dict, or a usage error that names the malformed one."""
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=param_hint)
        pairs[name] = value
    return pairs
