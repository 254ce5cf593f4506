"""One case: check every implementation's output against fastattn's, then time each."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Collection, List, Optional, Tuple

import torch

from . import peers
from .peers import Impl
from .suites import BUILDERS, Case
from .timing import Peaks, Settings, measure_copy_gbps, time_fn

# allclose tolerances (atol = rtol) for "does the peer compute the same thing": loose on
# purpose, since kernels differ in accumulation order; a real disagreement is far larger.
CHECK_TOLERANCE = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@dataclass
class Result:
    """One implementation's figures on one case."""
    suite: str
    shape: str
    dtype: str
    impl: str
    time_ms: float                  # median
    times_ms: List[float]           # every timed run
    throughput: float               # TFLOP/s or GB/s, per `throughput_unit`
    throughput_unit: str
    pct_of_peak: Optional[float]    # throughput / peak, in %
    ratio: Optional[float]          # fastattn speed / this impl's speed; None for fastattn
    max_abs_diff: Optional[float]   # against fastattn's output; None for fastattn
    agrees: Optional[bool]
    gather_ms: Optional[float] = None
    peak: Optional[float] = None    # what pct_of_peak divides by: this run's matmul peak, or
                                    # for GB/s the copy peak measured around this case
    note: str = ""


@dataclass
class CaseReport:
    """Everything measured for one case."""
    case: Case
    work: float = 0.0               # FLOPs or bytes of one call, per `unit`
    unit: str = ""
    results: List[Result] = field(default_factory=list)   # fastattn first
    skipped: List[str] = field(default_factory=list)      # peers that could not run, and why


def _flatten(x) -> List[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for item in x for t in _flatten(item)]


def compare(reference, output, dtype) -> Tuple[float, bool]:
    """(max |difference|, agrees) of two outputs (tensors or nested tuples of tensors)."""
    ref, out = _flatten(reference), _flatten(output)
    if len(ref) != len(out) or any(a.shape != b.shape for a, b in zip(ref, out)):
        return math.inf, False
    tol = CHECK_TOLERANCE[dtype]
    worst, agrees = 0.0, True
    for a, b in zip(ref, out):
        a, b = a.float(), b.float()
        if a.numel():
            diff = (a - b).abs().max().item()
            worst = max(worst, diff if math.isfinite(diff) else math.inf)
        agrees = agrees and bool(torch.allclose(a, b, atol=tol, rtol=tol))
    return worst, agrees


def run_case(case: Case, settings: Settings, peaks: Peaks, families: Collection[str],
             warn: Callable[[str], None]) -> CaseReport:
    """Checks, then times, fastattn and the peers of the given families on one case."""
    device = settings.device
    report = CaseReport(case)
    torch.manual_seed(0)
    try:
        workload = BUILDERS[case.suite](case, device)
        reference = workload.fastattn.outputs()
    except Exception as error:  # noqa: BLE001 (e.g. a dtype fastattn has no kernel for)
        report.skipped.append(f"{case.suite} {case.label()} {case.dtype_name}: fastattn "
                              f"failed, case skipped: {peers.error_note(error)}")
        return report
    report.work, report.unit = workload.work, workload.unit
    skipped = report.skipped
    impls = peers.build(workload.peers, families, skipped)
    where = f"{case.suite} {case.label()} {case.dtype_name}"
    if not all(bool(t.isfinite().all()) for t in _flatten(reference)):
        warn(f"WARNING: {where}: fastattn's output has NaN or inf")

    # Check first: a peer that cannot run is skipped; one that disagrees is still timed
    # but flagged, because a speed ratio between different computations means nothing.
    checked: List[Tuple[Impl, Optional[float], Optional[bool]]] = [(workload.fastattn, None, None)]
    for impl in impls:
        try:
            output = impl.outputs()
        except Exception as error:  # noqa: BLE001
            skipped.append(f"{impl.name}: cannot run here: {peers.error_note(error)}")
            continue
        diff, agrees = compare(reference, output, case.dtype)
        del output
        if not agrees:
            warn(f"WARNING: {where}: {impl.name} disagrees with fastattn "
                 f"(max abs diff {diff:.3g}, tol {CHECK_TOLERANCE[case.dtype]:g})")
        checked.append((impl, diff, agrees))
    del reference, impls

    if workload.unit == "flop":
        unit, scale = "TFLOP/s", 1e12
        peak = peaks.matmul_tflops.get(case.dtype_name)
    else:
        # A machine's memory bandwidth can drift within a run (other tenants of the host):
        # compare with the best of the run's copy peak and copies just before and after
        # this case, never with a slower moment than the one the case ran in.
        unit, scale = "GB/s", 1e9
        peak = max(peaks.copy_gbps, measure_copy_gbps(device, peaks.copy_bytes))
    results = report.results

    def timed(fn) -> List[float]:
        return time_fn(fn, device, settings.warmup, settings.repeats, settings.min_time_s)

    for impl, diff, agrees in checked:
        try:
            times = timed(impl.run)
            gather_ms = statistics.median(timed(impl.gather)) if impl.gather else None
        except Exception as error:  # noqa: BLE001 (a peer running out of memory, ...)
            if not results:
                skipped.append(f"{where}: fastattn failed while timing, case skipped: "
                               f"{peers.error_note(error)}")
                break
            skipped.append(f"{impl.name}: failed while timing: {peers.error_note(error)}")
            continue
        ms = statistics.median(times)
        throughput = (impl.work or workload.work) / (ms * 1e-3) / scale
        results.append(Result(
            suite=case.suite, shape=case.label(), dtype=case.dtype_name, impl=impl.name,
            time_ms=ms, times_ms=times, throughput=throughput, throughput_unit=unit,
            pct_of_peak=None, ratio=None, max_abs_diff=diff, agrees=agrees,
            gather_ms=gather_ms, note=impl.note))
    if workload.unit != "flop" and results:
        peak = max(peak, measure_copy_gbps(device, peaks.copy_bytes))
    for result in results:
        result.peak = peak
        result.pct_of_peak = 100.0 * result.throughput / peak if peak else None
    for result in results[1:]:
        result.ratio = result.time_ms / results[0].time_ms
    del workload, checked
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return report
