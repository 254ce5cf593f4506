"""What a result was measured on: CPU identity, GPU, versions, load, and the git commit."""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

import fastattn

# The CPU kernels' paths: AVX-512 GEMM tiles, and bf16 dot products on avx512_bf16.
CPU_FLAGS = ("avx512f", "avx512_bf16")


def parse_cpuinfo(text: str) -> Dict[str, Any]:
    """The identity of the first processor listed in /proc/cpuinfo text. The family tells
    hosts apart that a virtualized "model name" does not ("AMD EPYC" on both a Zen 4,
    family 25, and a Zen 5, family 26, with twice the 512-bit FMA rate). Fields the text
    lacks (other architectures list other fields) are None."""
    fields: Dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields["flags"].split()) if "flags" in fields else None
    return {
        "cpu_model": fields.get("model name"),
        "cpu_vendor": fields.get("vendor_id"),
        "cpu_family": _int(fields.get("cpu family")),
        "cpu_model_number": _int(fields.get("model")),
        "cpu_stepping": _int(fields.get("stepping")),
        "cpu_flags": None if flags is None else {name: name in flags for name in CPU_FLAGS},
    }


def _int(value: Optional[str]) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def cpu_info(path: str = "/proc/cpuinfo") -> Dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError:
        text = ""
    info = parse_cpuinfo(text)
    info["cpu_model"] = info["cpu_model"] or platform.processor() or platform.machine()
    return info


def cpu_summary(info: Dict[str, Any]) -> str:
    """"AMD EPYC, family 26 model 2 stepping 1, avx512f avx512_bf16": enough to tell which
    host a record came from; unknown parts say so."""
    parts = [info.get("cpu_model") or "unknown CPU"]
    if info.get("cpu_family") is None:
        parts.append("family unknown")
    else:
        parts.append(" ".join(f"{key} {info[field]}" for key, field in (
            ("family", "cpu_family"), ("model", "cpu_model_number"),
            ("stepping", "cpu_stepping")) if info.get(field) is not None))
    flags = info.get("cpu_flags")
    if flags is not None:
        parts.append(" ".join(name if present else f"no {name}" for name, present in flags.items()))
    return ", ".join(parts)


def machine_info(argv: Sequence[str]) -> Dict[str, Any]:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([_python_path(), "-m", "fastattn.bench", *argv]),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **cpu_info(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "fastattn_build_info": fastattn.build_info(),
    }
    info.update(_git_info())
    return info


def header(info: Dict[str, Any], device: str) -> str:
    """The run's first line: versions, the device, the CPU on every run (a CUDA run's host
    CPU still feeds the GPU), and the commit."""
    commit = (info["git_commit"] or "unknown")[:12] + (" (dirty)" if info["git_dirty"] else "")
    where = [f"cuda: {info['cuda_device']}"] if device == "cuda" else []
    where.append(f"cpu: {cpu_summary(info)}, {info['torch_threads']} threads")
    return " | ".join([f"fastattn {fastattn.__version__}", f"torch {info['torch_version']}",
                       *where, f"commit {commit}"])


def load_warning(info: Dict[str, Any]) -> Optional[str]:
    load, cpus = info["load_average_1min"], info["cpu_count"] or 1
    if load is None or load <= 0.5 * cpus:
        return None
    # torch's CPU threads wait for each other, so one descheduled thread stalls a whole
    # op: on a busy machine timings jump by whole scheduler time slices.
    return (f"WARNING: load average {load:.1f} on {cpus} CPUs: other processes are running, "
            "timings will be noisy")


def _python_path() -> str:
    """The interpreter as one would type it here (.venv/bin/python), so the recorded
    command can be re-run as is."""
    relative = os.path.relpath(sys.executable)
    return sys.executable if relative.startswith("..") else relative


def _git_info() -> Dict[str, Any]:
    """Commit of the source tree fastattn was imported from, if it is a git checkout."""
    cwd = Path(fastattn.__file__).resolve().parent

    def git(*args) -> Optional[str]:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if dirty is None else bool(dirty)}
