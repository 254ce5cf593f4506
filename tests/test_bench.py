"""The benchmark CLI (`python -m fastattn.bench`) at tiny shapes: every suite runs, every peer
that runs agrees with fastattn, and the JSON report has its fields. No assertion on speed."""

import functools
import itertools
import json
import math

import pytest
import torch

from fastattn import bench
from fastattn.bench import cli, machine, measure, peers, suites, timing

# Tiny shapes for every suite (kv-heads 1: GQA everywhere; page 8 with lengths that end
# mid-page), and just enough timing to produce numbers.
TINY = ["--quick", "--batch", "2", "--heads", "2", "--kv-heads", "1", "--head-dim", "32",
        "--seqlen", "48", "--seqlen-k", "80", "--context", "40", "--tokens", "24",
        "--page-size", "8", "--warmup", "1", "--repeats", "2", "--min-time", "0"]


def run_bench(tmp_path, *args):
    path = tmp_path / "bench.json"
    assert bench.main([*args, *TINY, "--device", "cpu", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_all_suites_report(tmp_path, capsys):
    doc = run_bench(tmp_path)
    out = capsys.readouterr().out
    assert "fastattn x" in out and "% peak" in out
    assert f"| cpu: {machine.cpu_summary(machine.cpu_info())}, " in out.splitlines()[0]

    info = doc["machine"]
    for key in ("date", "command", "platform", "cpu_model", "cpu_family", "cpu_model_number",
                "cpu_stepping", "cpu_flags", "torch_version", "cuda_device",
                "fastattn_build_info", "git_commit"):
        assert key in info
    assert info["command"].endswith(" ".join(["-m", "fastattn.bench", *TINY, "--device", "cpu",
                                                 "--json", str(tmp_path / "bench.json")]))
    assert doc["settings"]["device"] == "cpu" and doc["settings"]["dtypes"] == ["float32"]
    assert positive(doc["peaks"]["matmul_tflops"]["float32"]) and positive(doc["peaks"]["copy_gbps"])

    assert [c["suite"] for c in doc["cases"]] == list(suites.SUITES)
    for case in doc["cases"]:
        results = case["results"]
        assert results and results[0]["impl"] == "fastattn", case
        assert positive(case["work"])
        assert case["work_unit"] == ("flop" if case["suite"] in suites.FLOP_SUITES else "byte")
        # SDPA math runs on every CPU; append's peer is index_copy_.
        assert len(results) >= 2, case["skipped"]
        for r in results:
            assert positive(r["time_ms"]) and positive(r["throughput"]) and positive(r["pct_of_peak"])
            assert r["pct_of_peak"] == pytest.approx(100 * r["throughput"] / r["peak"])
            if case["work_unit"] == "byte":
                assert r["peak"] >= doc["peaks"]["copy_gbps"]
            else:
                assert r["peak"] == doc["peaks"]["matmul_tflops"]["float32"]
            assert len(r["times_ms"]) >= 2
            assert r["throughput_unit"] == ("TFLOP/s" if case["work_unit"] == "flop" else "GB/s")
        assert results[0]["ratio"] is None and results[0]["agrees"] is None
        assert case["ratios"] and all(positive(x) for x in case["ratios"].values())
        for r in results[1:]:
            assert r["agrees"] is True, (case["suite"], r["impl"], r["max_abs_diff"])
            assert r["ratio"] == case["ratios"][r["impl"]]
            assert math.isclose(r["ratio"], r["time_ms"] / results[0]["time_ms"])
        if case["suite"] in ("decode", "extend"):
            assert any(r["impl"].startswith("gather+") and positive(r["gather_ms"]) for r in results)


def test_several_dtypes_and_suite_selection(tmp_path):
    doc = run_bench(tmp_path, "decode", "append", "--dtype", "bfloat16", "float16")
    assert [(c["suite"], c["dtype"]) for c in doc["cases"]] == [
        ("decode", "bfloat16"), ("decode", "float16"), ("append", "bfloat16"), ("append", "float16")]
    for case in doc["cases"]:
        assert all(positive(x) for x in case["ratios"].values())
        assert all(r["agrees"] is not False for r in case["results"])


def test_distributed_suite(tmp_path):
    """Opt-in: 2 and 4 gloo ranks against one process, with the communication share; not
    part of the default set of suites."""
    doc = run_bench(tmp_path, "distributed", "prefill")
    assert [c["suite"] for c in doc["cases"]] == ["prefill"]
    rows = doc["distributed"]
    assert [r["world"] for r in rows] == [1, 2, 4]
    assert rows[0]["shape"] == "B2 H2 S48 D32 causal"  # the shape options apply
    assert all(positive(r["ms"]) for r in rows)
    assert all(positive(r["comm_ms"]) and 0 < r["comm_share"] and positive(r["speedup"])
               for r in rows[1:])
    assert "distributed" not in [c["suite"] for c in run_bench(tmp_path, "--dtype", "float32")
                                 ["cases"]]


def test_kv_dtype_rows(tmp_path):
    """--kv-dtype: a row per cache dtype for the paged suites only; an fp8 case is checked
    against and timed with fastattn over the same values in a cache of q's dtype, counted
    in its own bytes."""
    doc = run_bench(tmp_path, "decode", "extend", "append", "prefill", "--dtype", "bfloat16",
                    "--kv-dtype", "same", "--kv-dtype", "fp8_e4m3", "--kv-dtype", "fp8_e5m2")
    assert [(c["suite"], c["dtype"]) for c in doc["cases"]] == [
        (suite, dtype) for suite in ("decode", "extend", "append")
        for dtype in ("bfloat16", "bfloat16/e4m3fn", "bfloat16/e5m2")] + [("prefill", "bfloat16")]
    by_key = {(c["suite"], c["dtype"]): c for c in doc["cases"]}
    for suite in ("decode", "extend", "append"):
        for fmt in ("e4m3fn", "e5m2"):
            case = by_key[(suite, f"bfloat16/{fmt}")]
            fa, baseline = case["results"]
            assert baseline["impl"] == "fastattn, bfloat16 cache" and baseline["agrees"] is True
            if suite != "extend":  # byte counts: the fp8 call moves fewer bytes
                assert case["work"] < by_key[(suite, "bfloat16")]["work"]
                assert baseline["throughput"] * baseline["time_ms"] == pytest.approx(
                    by_key[(suite, "bfloat16")]["work"] / 1e6)


@pytest.mark.parametrize("sq,sk", [(1, 1), (5, 5), (3, 9), (9, 3), (16, 16), (7, 20)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [(-1, -1), (0, 0), (2, -1), (-1, 3), (4, 1)])
def test_visible_pairs_matches_brute_force(sq, sk, causal, window):
    left, right = window
    expected = 0
    for i, j in itertools.product(range(sq), range(sk)):
        diag = i + sk - sq
        visible = (not causal or j <= diag) and (left < 0 or j >= diag - left) \
            and (right < 0 or j <= diag + right)
        expected += visible
    assert suites.visible_pairs(sq, sk, causal, window) == expected


def test_flop_count_causal_is_about_half():
    full = suites.visible_pairs(2048, 2048, causal=False)
    assert full == 2048 * 2048
    assert suites.visible_pairs(2048, 2048, causal=True) == 2048 * 2049 // 2


def test_spread_lengths():
    lens = suites.spread(1024, 8)
    assert sorted(lens) == [256, 366, 475, 585, 695, 805, 914, 1024]
    assert lens == suites.spread(1024, 8)  # deterministic
    assert suites.spread(10, 1) == [10]


def test_compare_flags_a_different_computation():
    a = torch.randn(4, 8)
    assert measure.compare(a, a + 1e-4, torch.float32) == (pytest.approx(1e-4, rel=0.1), True)
    diff, agrees = measure.compare(a, a + 0.5, torch.float32)
    assert not agrees and diff == pytest.approx(0.5)
    assert measure.compare((a, a), (a,), torch.float32) == (math.inf, False)


def test_cli_errors():
    with pytest.raises(SystemExit):
        bench.main(["nosuchsuite", "--quick"])
    with pytest.raises(SystemExit, match="multiple of --kv-heads"):
        bench.main(["prefill", "--quick", "--heads", "6", "--kv-heads", "4"])


@pytest.mark.parametrize("argv,dtypes,names", [
    (["--dtype", "float32", "prefill"], ["float32"], ["prefill"]),
    (["--dtype", "float32", "bfloat16", "prefill", "decode"], ["float32", "bfloat16"],
     ["prefill", "decode"]),
    (["decode", "--dtype", "bf16", "append", "--quick"], ["bf16"], ["decode", "append"]),
    (["prefill", "--quick", "decode"], None, ["prefill", "decode"]),
    (["--device", "cpu", "--quick"], None, []),
])
def test_cli_takes_suites_typed_after_dtype(argv, dtypes, names):
    args = cli.parse_args(argv)
    assert args.dtype == dtypes and args.suites == names


@pytest.mark.parametrize("argv,message", [
    (["--dtype", "float32", "prefil"], "prefil: neither a suite nor a dtype"),
    (["prefill", "fp8"], "fp8: neither a suite nor a dtype"),
    (["prefill", "float32"], "float32: dtypes go after --dtype"),
    (["--dtype", "prefill"], "--dtype needs at least one dtype"),
])
def test_cli_says_what_it_accepts(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(argv)
    err = capsys.readouterr().err
    assert message in err
    if "dtypes go after" not in message:
        assert all(name in err for name in [*suites.SUITES, "float32", "float16", "bfloat16"])


def test_quick_leaves_out_compiled_peers(monkeypatch):
    """A cold torch.compile takes minutes: --quick (the GPU check's smoke run) must not
    wait for one, and must say that it left those peers out."""
    monkeypatch.setattr(peers, "_import", lambda module: object())
    compiled = [name for name, family in peers.FAMILIES.items() if family.compiled]
    assert "flex" in compiled

    full, full_notes = peers.select("cuda", quick=False)
    assert set(full) == set(peers.FAMILIES) and not full_notes
    quick, quick_notes = peers.select("cuda", quick=True)
    assert set(quick) == set(peers.FAMILIES) - set(compiled)
    assert len(quick_notes) == len(compiled)
    assert all("--quick" in note and "torch.compile" in note for note in quick_notes)
    plain, plain_notes = peers.select("cuda", quick=False, no_compile=True)
    assert plain == quick and all("--no-compile" in note for note in plain_notes)
    assert cli.parse_args(["--no-compile", "prefill"]).no_compile

    cpu, cpu_notes = peers.select("cpu", quick=False)
    assert "flex" not in cpu and "flashinfer" not in cpu and "torch" in cpu
    assert "flex: measured on CUDA only, skipped" in cpu_notes


def test_build_sets_up_only_selected_families():
    called = []

    @peers.family("flex")
    def compiled_peer():
        called.append("flex")
        return [peers.Impl("flex", run=lambda: None)]

    @peers.family("torch")
    def failing_peer():
        raise RuntimeError("plan rejected. more detail")

    skipped = []
    impls = peers.build([compiled_peer, functools.partial(failing_peer)], ["torch"], skipped)
    assert impls == [] and called == []
    assert skipped == ["failing_peer: setup failed: RuntimeError: plan rejected"]
    assert [i.name for i in peers.build([compiled_peer], ["flex"], [])] == ["flex"]


ZEN4_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9654 96-Core Processor
stepping\t: 1
flags\t\t: fpu avx2 avx512f avx512bw

processor\t: 1
cpu family\t: 99
"""


def test_cpu_identity_from_cpuinfo():
    info = machine.parse_cpuinfo(ZEN4_CPUINFO)
    assert info == {"cpu_model": "AMD EPYC 9654 96-Core Processor", "cpu_vendor": "AuthenticAMD",
                    "cpu_family": 25, "cpu_model_number": 17, "cpu_stepping": 1,
                    "cpu_flags": {"avx512f": True, "avx512_bf16": False}}
    assert machine.cpu_summary(info) == ("AMD EPYC 9654 96-Core Processor, family 25 model 17 "
                                         "stepping 1, avx512f no avx512_bf16")


def test_cpu_identity_without_proc_cpuinfo(tmp_path):
    info = machine.cpu_info(str(tmp_path / "absent"))
    assert info["cpu_model"] and info["cpu_family"] is None and info["cpu_flags"] is None
    assert machine.cpu_summary(info) == f"{info['cpu_model']}, family unknown"


def test_header_names_cpu_on_every_device():
    info = {**machine.parse_cpuinfo(ZEN4_CPUINFO), "torch_threads": 16, "torch_version": "2.x",
            "cuda_device": "NVIDIA H200", "git_commit": "0123456789abcdef", "git_dirty": False}
    cpu = "cpu: AMD EPYC 9654 96-Core Processor, family 25 model 17 stepping 1"
    assert cpu in machine.header(info, "cpu") and "H200" not in machine.header(info, "cpu")
    line = machine.header(info, "cuda")
    assert line.startswith("fastattn ") and "| cuda: NVIDIA H200 | " + cpu in line
    assert line.endswith("| commit 0123456789ab")


def test_plot_without_matplotlib_fails_early(tmp_path, monkeypatch):
    """--plot must fail before any timing, with a message naming the extra to install."""
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.setattr(timing, "measure_peaks", lambda *a: pytest.fail("timed before failing"))
    with pytest.raises(SystemExit, match=r"fastattn\[bench\]"):
        bench.main(["--quick", "--plot", str(tmp_path / "x.png")])


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "ratios.png"
    assert bench.main(["append", *TINY, "--device", "cpu", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_disagreeing_peer_is_flagged_and_failing_peer_skipped(tmp_path, monkeypatch, capsys):
    """A peer computing something else is timed but flagged; one that raises is skipped."""
    real_index_copy = peers.index_copy_append

    @functools.wraps(real_index_copy)
    def bad_peers(k_cache, v_cache, k, v, slot_mapping):
        wrong = real_index_copy(k_cache, v_cache, k * 2, v, slot_mapping)
        broken = peers.Impl("broken", run=lambda: 1 / 0)
        return wrong + [broken]

    monkeypatch.setattr(peers, "index_copy_append", bad_peers)
    doc = run_bench(tmp_path, "append")
    captured = capsys.readouterr()
    (case,) = doc["cases"]
    assert [r["impl"] for r in case["results"]] == ["fastattn", "index_copy_"]
    assert case["results"][1]["agrees"] is False
    assert "index_copy_ disagrees with fastattn" in captured.err
    assert any(note.startswith("broken: cannot run here: ZeroDivisionError") for note in case["skipped"])
