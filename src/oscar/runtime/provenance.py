"""Where a number was measured: machine, library versions, source commit.

Shared by ``oscar bench`` (results files), training (each stage's ``done.json``), ``oscar eval``
and ``benchmarks/run.py``, so that every record names its machine the same way.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from oscar import __version__
from oscar.runtime.device import device_name as accelerator_name
from oscar.runtime.device import resolve_device

SOURCE_ROOT = Path(__file__).resolve().parents[3]  # the checkout, when running from one
MAX_CHANGED_PATHS = 50  # of a dirty checkout, recorded by git_state


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector extensions that decide CPU speed (and which dtypes pay), where known."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "neon")
    try:
        match = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return []
    flags = set(match.group(1).split()) if match else set()
    return [f for f in wanted if f in flags]


def memory_total_gb() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
        return int(re.search(r"MemTotal:\s+(\d+) kB", text).group(1)) / 1024**2
    except (OSError, AttributeError):
        return None


def usable_cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_state(root: Path = SOURCE_ROOT, exclude: Sequence[Path] = ()) -> dict[str, Any]:
    """Commit of the checkout at ``root`` and whether tracked files differ from it (files under
    ``exclude``, such as a script's own outputs, not counted), with the first
    ``MAX_CHANGED_PATHS`` of those files and their count; ``{"commit": None}`` outside one."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None}
    root = root.resolve()
    outputs = [
        f":(exclude){Path(p).resolve().relative_to(root)}"
        for p in exclude
        if root in Path(p).resolve().parents
    ]
    # Tracked files that differ from the commit (staged or not), so that a record made from a
    # dirty tree still says what the measured code was.
    names = git("diff", "--name-only", "HEAD", "--", ".", *outputs)
    changed = sorted(names.splitlines()) if names else []
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    state: dict[str, Any] = {"commit": commit, "dirty": bool(changed), "branch": branch}
    if changed:
        state["changed"] = changed[:MAX_CHANGED_PATHS]
        state["changed_count"] = len(changed)
    return state


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("oscar-codec", "torch", "diffusers", "numpy", "constriction", "safetensors"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def environment(device: str | torch.device = "auto") -> dict[str, Any]:
    """Machine, library versions and source commit: the one record of where a number was
    measured, for bench results, training's ``done.json`` and evaluation summaries."""
    if not isinstance(device, torch.device):
        device = resolve_device(device)
    return {
        "machine": {
            "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "usable_cpus": usable_cpus(),
            "torch_threads": torch.get_num_threads(),
            "cpu_flags": cpu_flags(),
            "memory_gb": memory_total_gb(),
            "os": platform.platform(),
            "device": str(device),
            "accelerator": accelerator_name(device),
            "cuda": torch.version.cuda,
        },
        "versions": library_versions(),
        "git": git_state(),
    }


def summary(env: dict[str, Any]) -> dict[str, str]:
    """An :func:`environment` record as a few readable lines (evaluation reports)."""
    m, v = env["machine"], env["versions"]
    device = m["device"] + (f" ({m['accelerator']})" if m.get("accelerator") else "")
    commit = (env["git"].get("commit") or "unknown")[:10]
    if env["git"].get("dirty"):
        commit += " (dirty)"
    return {
        "oscar": __version__,
        "torch": v.get("torch") or "unknown",
        "machine": f"{m['cpu']}, {m['usable_cpus']} usable CPUs, {m['os']}",
        "device": device,
        "commit": commit,
    }
