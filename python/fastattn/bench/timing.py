"""Timing: repeated calls of one function, and this machine's peaks (matmul, copy)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence

import torch

from .._dtypes import dtype_name

# (warmup, repeats, min_time_s): runs continue past `repeats` until min_time_s has passed,
# so a 50 us op gets enough samples for a stable median while a 2 s op gets `repeats`.
TIMING_DEFAULTS = {"cpu": (1, 5, 0.5), "cuda": (10, 50, 0.2), "quick": (1, 3, 0.05)}
MAX_RUNS_PER_REPEAT = 50
# Device cycles of head start per queued call (~100 us at ~2 GHz): more than the host needs
# to launch one call of any suite, so the device never waits for the host while timing.
HEAD_START_CYCLES_PER_CALL = 200_000

# Peak probes. The matmul doubles from 256 up to the cap while the next product is expected
# (8x the last) to stay under the time limit: CPU fp16 matmul can be 1000x slower than fp32,
# so a fixed 2048 would take minutes. The copy buffer is large enough to defeat caches.
PEAK_MATMUL_MAX_N = {"cpu": 2048, "cuda": 8192, "quick": 1024}
PEAK_MATMUL_TIME_LIMIT_S = 0.25
PEAK_COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 2**30, "quick": 64 * 2**20}


@dataclass
class Settings:
    """How to time: untimed warm-up calls, then at least `repeats` timed calls, more until
    `min_time_s` has passed."""
    device: str
    warmup: int
    repeats: int
    min_time_s: float


@dataclass
class Peaks:
    matmul_tflops: Dict[str, float]     # per dtype name
    matmul_n: Dict[str, int]
    copy_gbps: float
    copy_bytes: int


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], device, warmup: int, repeats: int,
            min_time_s: float = 0.0) -> List[float]:
    """Milliseconds of each timed call, after `warmup` untimed calls.

    At least `repeats` calls, more until `min_time_s` has passed (at most
    MAX_RUNS_PER_REPEAT * repeats). On CUDA each call is bracketed by events, in batches of
    `repeats` calls queued behind a device-side sleep: the host has queued them all before
    the device reaches the first, so the events time the kernels, not the host's launch gaps
    (a call-by-call synced loop adds ~10-50 us of launch latency to every call, which is
    the whole time of a small decode kernel). On CPU, perf_counter around each call.
    """
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    _sync(device)
    times: List[float] = []
    start = time.perf_counter()
    max_runs = max(repeats, MAX_RUNS_PER_REPEAT * repeats)
    while len(times) < repeats or (time.perf_counter() - start < min_time_s
                                   and len(times) < max_runs):
        if cuda:
            n = max(1, min(repeats, max_runs - len(times)))
            torch.cuda._sleep(HEAD_START_CYCLES_PER_CALL * n)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(n)]
            for begin, end in events:
                begin.record()
                fn()
                end.record()
            events[-1][1].synchronize()
            times.extend(begin.elapsed_time(end) for begin, end in events)
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure_peaks(device, dtypes: Sequence[torch.dtype], profile: str) -> Peaks:
    """This machine's achievable peaks, measured now (under the same load as the cases):
    the best of a few runs of torch.matmul per dtype, and of a large tensor copy."""
    tflops, sizes = {}, {}
    for dtype in dtypes:
        name = dtype_name(dtype)
        n, tflops[name] = 256, 0.0
        while True:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            seconds = min(time_fn(lambda: torch.matmul(a, b), device, warmup=1, repeats=3)) * 1e-3
            del a, b
            if 2.0 * n**3 / seconds / 1e12 > tflops[name]:
                tflops[name], sizes[name] = 2.0 * n**3 / seconds / 1e12, n
            if n >= PEAK_MATMUL_MAX_N[profile] or 8 * seconds > PEAK_MATMUL_TIME_LIMIT_S:
                break
            n *= 2
    nbytes = PEAK_COPY_BYTES[profile]
    return Peaks(tflops, sizes, measure_copy_gbps(device, nbytes), nbytes)


def measure_copy_gbps(device, nbytes: int) -> float:
    """Best read + write rate of a large tensor copy, in GB/s."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = min(time_fn(lambda: dst.copy_(src), device, warmup=1, repeats=5))
    return 2.0 * nbytes / (ms * 1e-3) / 1e9
