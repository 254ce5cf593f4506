"""The command line: `python -m fastattn.bench [suite ...] [options]`."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from .._dtypes import DTYPES
from . import machine, peers, timing
from .measure import run_case
from .plot import plot, require_matplotlib
from .report import Table, group_skips, write_json
from .suites import KV_DTYPES, KV_SUITES, SUITES, Case, resolve_shape

# Suites run only when named: `distributed` spawns process groups (fastattn/bench/distributed.py).
OPT_IN_SUITES = ("distributed",)


def _dtype_names() -> str:
    """"float32 (fp32), float16 (fp16, half), ...": each dtype once, with its aliases."""
    names: Dict[torch.dtype, List[str]] = {}
    for name, dtype in DTYPES.items():
        names.setdefault(dtype, []).append(name)
    return ", ".join(n[0] + (f" ({', '.join(n[1:])})" if n[1:] else "") for n in names.values())


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fastattn.bench",
        description="Time fastattn against PyTorch SDPA, FlexAttention, flash_attn and "
                    "flashinfer (whichever are available) on the same inputs.",
        epilog="Shape options apply to every selected suite that uses them; unset ones take "
               "the suite's default for the device (see benchmarks/README.md).")
    p.add_argument("suites", nargs="*", metavar="suite",
                   help=f"suites to run, from {', '.join(SUITES + OPT_IN_SUITES)} (default: "
                        f"all but {', '.join(OPT_IN_SUITES)})")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="default: cuda if available, else cpu")
    p.add_argument("--dtype", nargs="+", metavar="DTYPE",
                   help=f"one or more of {_dtype_names()}; default bfloat16 on cuda, float32 "
                        "on cpu. Suite names may follow: --dtype float32 prefill")
    p.add_argument("--kv-dtype", action="append", choices=list(KV_DTYPES),
                   help="cache dtype of the paged suites (decode, extend, append); repeat it "
                        "for a row per cache dtype. 'same' (default) is q's dtype; an fp8 "
                        "case also times fastattn over the same values in a cache of q's "
                        "dtype, so its 'fastattn x' is the fp8 cache's speed-up. CPU only")
    shape = p.add_argument_group("shapes")
    shape.add_argument("--batch", type=int, help="batch size; number of sequences for varlen")
    shape.add_argument("--heads", type=int, help="query heads")
    shape.add_argument("--kv-heads", type=int, help="key/value heads (GQA when < heads)")
    shape.add_argument("--head-dim", type=int)
    shape.add_argument("--seqlen", type=int,
                       help="sequence length (prefill), query length (cross), longest "
                            "sequence (varlen; lengths spread over [L/4, L])")
    shape.add_argument("--seqlen-k", type=int, help="key length (cross)")
    shape.add_argument("--context", type=int, help="tokens already in the cache per sequence "
                       "(decode, extend)")
    shape.add_argument("--page-size", type=int)
    shape.add_argument("--tokens", type=int, help="new tokens: the most per sequence for "
                       "extend (spread over [N/4, N]); the total for append")
    timing_group = p.add_argument_group("timing")
    timing_group.add_argument(
        "--quick", action="store_true",
        help="small shapes and few repeats (a smoke run, well under a minute); leaves out "
             "the peers that need torch.compile")
    timing_group.add_argument(
        "--no-compile", action="store_true",
        help="leave out the peers that need torch.compile (FlexAttention), as --quick does")
    timing_group.add_argument("--warmup", type=int, help="untimed calls before timing")
    timing_group.add_argument("--repeats", type=int, help="least number of timed calls")
    timing_group.add_argument("--min-time", type=float,
                              help="keep timing a case until this many seconds have passed")
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write every figure and machine info")
    out.add_argument("--plot", metavar="PATH", help="PNG bar chart of the ratios (matplotlib)")
    # Intermixed, so that `prefill --quick decode` names two suites (parse_args would
    # reject the second).
    args = p.parse_intermixed_args(argv)
    _sort_words(p, args)
    return args


def _sort_words(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--dtype takes one or more words, so suites typed after it (`--dtype float32 prefill`,
    the way a newcomer writes it) land in args.dtype: move them to args.suites."""
    dtype_words = args.dtype or []
    names = SUITES + OPT_IN_SUITES
    accepted = f"suites: {', '.join(names)}; dtypes, after --dtype: {_dtype_names()}"
    unknown = [w for w in args.suites + dtype_words if w not in names and w not in DTYPES]
    if unknown:
        p.error(f"{', '.join(unknown)}: neither a suite nor a dtype ({accepted})")
    misplaced = [w for w in args.suites if w in DTYPES]
    if misplaced:
        p.error(f"{', '.join(misplaced)}: dtypes go after --dtype "
                f"(--dtype {' '.join(misplaced)})")
    if args.dtype is not None:
        args.dtype = [w for w in dtype_words if w in DTYPES]
        if not args.dtype:
            p.error(f"--dtype needs at least one dtype ({accepted})")
        args.suites = args.suites + [w for w in dtype_words if w in names]


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.plot:
        require_matplotlib()  # fail now, not after minutes of timing
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    default_dtype = "bfloat16" if device == "cuda" else "float32"
    dtypes = list(dict.fromkeys(DTYPES[name] for name in (args.dtype or [default_dtype])))
    profile = "quick" if args.quick else device
    warmup, repeats, min_time = timing.TIMING_DEFAULTS[profile]
    settings = timing.Settings(
        device=device,
        warmup=warmup if args.warmup is None else args.warmup,
        repeats=max(1, repeats if args.repeats is None else args.repeats),
        min_time_s=min_time if args.min_time is None else args.min_time)
    suites = list(dict.fromkeys(args.suites)) or list(SUITES)
    run_distributed = "distributed" in suites
    suites = [s for s in suites if s not in OPT_IN_SUITES]
    kv_dtypes = [KV_DTYPES[name] for name in dict.fromkeys(args.kv_dtype or ["same"])]
    cases = [Case(suite, dtype, resolve_shape(suite, profile, vars(args)), kv_dtype)
             for suite in suites for dtype in dtypes
             for kv_dtype in (kv_dtypes if suite in KV_SUITES else [None])]
    families, family_notes = peers.select(device, quick=args.quick, no_compile=args.no_compile)

    started = time.perf_counter()
    info = machine.machine_info(argv)
    print(machine.header(info, device))
    load_warning = machine.load_warning(info)
    if load_warning:
        print(load_warning)
    with torch.inference_mode():
        peaks = timing.measure_peaks(device, dtypes, profile)
        print("peaks: " + ", ".join(f"{name} matmul {tf:.3g} TFLOP/s (n={peaks.matmul_n[name]})"
                                    for name, tf in peaks.matmul_tflops.items())
              + f", copy {peaks.copy_gbps:.3g} GB/s (read+write)\n")

        warnings: List[str] = []

        def warn(message: str) -> None:
            warnings.append(message)
            print(message, file=sys.stderr, flush=True)

        reports = []
        if cases:
            table = Table(cases)
            table.header()
        for case in cases:
            reports.append(run_case(case, settings, peaks, families, warn))
            for result in reports[-1].results:
                table.row(result)

    distributed_rows = []
    if run_distributed:
        from . import distributed

        distributed_rows = distributed.run(profile, dtypes[0], vars(args))

    notes = family_notes + group_skips(reports)
    print("\nfastattn x = fastattn speed / that implementation's speed (> 1: fastattn "
          "faster); '!' = outputs disagree.")
    print("% peak = throughput / this run's matmul peak (TFLOP/s), or for GB/s the best copy rate "
          "of the run's start and of copies just before and after that case.")
    for note in notes:
        print(f"note: {note}")
    for message in warnings:
        print(message)
    print(f"total {time.perf_counter() - started:.1f} s")

    if args.json:
        write_json(args.json, info, settings, dtypes, peaks, reports, notes, distributed_rows)
        print(f"wrote {args.json}")
    if args.plot:
        if plot(args.plot, [r for report in reports for r in report.results]):
            print(f"wrote {args.plot}")
        else:
            print("--plot: no peer ratios to plot")
    return 0
