"""scripts/kernel_report.sh: every shipped CUDA kernel compiles without spills or local
memory, the attention_fwd kernels use tensor cores, and the sm_90a ones HGMMA and TMA.
The shipped check reads the build's own objects (--objects) when there is a build tree;
the bad-kernel checks compile, so both modes are exercised.

Needs nvcc and a build with the CUDA kernels (fastattn.build_info()['cuda']); skipped
otherwise. No GPU is needed: the script compiles and disassembles. It also runs on a kernel
written to break every check, so that the checks are known to bite.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastattn

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "kernel_report.sh"


def _nvcc():
    path = os.environ.get("NVCC")
    if path:
        return path if os.path.exists(path) else None
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda/bin/nvcc"
    return shutil.which("nvcc")


pytestmark = [
    pytest.mark.skipif(_nvcc() is None, reason="nvcc not found"),
    pytest.mark.skipif(not fastattn.build_info().get("cuda"), reason="built without CUDA kernels"),
]


def run_report(*args, env=None):
    e = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=e, timeout=900)


def build_objects():
    """The CMake build tree whose csrc/cuda objects are newest (what `make build` made), or
    None: the report then compiles every translation unit again (minutes on 2 cores)."""
    found = sorted(ROOT.glob("build/*/CMakeFiles/_C.dir/csrc/cuda/*.cu.o"),
                   key=lambda p: p.stat().st_mtime)
    return found[-1].parents[3] if found else None


def test_shipped_kernels_pass():
    objects = build_objects()
    r = run_report(*(["--objects", str(objects)] if objects else []))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "OK: no spills, no local memory" in r.stdout, out
    # Every translation unit was compiled (some, like attention_fwd.cu, hold only the
    # host-side dispatch and add no row).
    tus = [p for p in ROOT.glob("csrc/cuda/*.cu") if not p.name.startswith("primitives_test")]
    assert f"from {len(tus)} translation units" in r.stdout, out
    assert "merge_states_kernel<fp16, true>" in r.stdout
    # compute_80 PTX of every kernel, for GPUs newer than the machine code (Blackwell).
    kernels = re.search(r"(\d+) kernels x 2 archs", r.stdout)
    assert kernels, out
    assert f"PTX for sm_80: all {kernels.group(1)} kernels are in" in r.stdout, out
    assert "append_kv_kernel<bf16, bf16, 8, 4>" in r.stdout
    # The fp8 cache variants are compiled and checked like the others.
    assert "paged_decode_kernel<bf16, cuda_v1::fp8_e4m3_t, 128, 4>" in r.stdout
    assert "attention_fwd_kernel<fp16, cuda_v1::fp8_e5m2_t, 256>" in r.stdout
    assert "append_kv_kernel<fp16, cuda_v1::fp8_e4m3_t, 8, 4>" in r.stdout
    # The sm_90a kernels: HGMMA and TMA checked, their register roles reported.
    for dtype in ("fp16", "bf16"):
        for d in (64, 128, 256):
            assert (f"attn_fwd_sm90::attention_fwd_sm90_kernel<{dtype}, {d}>: registers at "
                    "entry") in r.stdout, out
    assert "producer 40, consumers 232" in r.stdout, out


BAD_KERNEL = r"""
// Breaks every check: a dynamically indexed local array (LDL/STL), register pressure under
// a tight launch bound (spills), and an attention_fwd kernel without tensor cores.
__global__ void __launch_bounds__(1024, 2)
bad_attention_fwd_kernel(const float* in, float* out, int n, int k) {
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = in[threadIdx.x * 64 + i];
  for (int j = 0; j < n; ++j) {
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = acc[i] * acc[(i + 7) & 63] + in[j * 64 + i];
  }
  float local[32];
  for (int i = 0; i < 32; ++i) local[i] = in[i * k];
  float s = local[k & 31];
#pragma unroll
  for (int i = 0; i < 64; ++i) s += acc[i];
  out[threadIdx.x] = s;
}
"""


def report_on(tmp_path, name, source, arch="8.0", *args):
    """The report on one translation unit `name` holding `source`, for one architecture."""
    src = tmp_path / name
    src.write_text(source)
    return run_report("--no-so", "--src", str(src), *args,
                      env={"TORCH_CUDA_ARCH_LIST": arch})


def test_checks_fail_on_a_bad_kernel(tmp_path):
    r = report_on(tmp_path, "bad_attention_fwd.cu", BAD_KERNEL)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "bad_attention_fwd_kernel [sm_80]: spills" in r.stdout, out
    assert "bad_attention_fwd_kernel [sm_80]: local memory LDL" in r.stdout, out
    assert "bad_attention_fwd_kernel [sm_80]: no tensor-core MMA" in r.stdout, out


def test_compile_error_is_exit_2(tmp_path):
    r = report_on(tmp_path, "broken.cu", "__global__ void k() { this does not compile; }\n")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "does not compile" in r.stderr


def test_objects_mode_fails_on_a_bad_kernel(tmp_path):
    """--objects reads what a build compiled: the same kernel, compiled into a build-like
    tree, fails there too (spills seen as local memory, no MMA)."""
    src = tmp_path / "bad_attention_fwd.cu"
    src.write_text(BAD_KERNEL)
    obj = tmp_path / "build" / "csrc" / "cuda" / "bad_attention_fwd.cu.o"
    obj.parent.mkdir(parents=True)
    subprocess.run([_nvcc(), "-c", "-O3", "-gencode", "arch=compute_80,code=sm_80", str(src),
                    "-o", str(obj)], check=True, capture_output=True, timeout=600)
    r = run_report("--no-so", "--src", str(src), "--objects", str(tmp_path / "build"),
                   env={"TORCH_CUDA_ARCH_LIST": "8.0"})
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "bad_attention_fwd_kernel [sm_80]: local memory" in r.stdout, out
    assert "bad_attention_fwd_kernel [sm_80]: no tensor-core MMA" in r.stdout, out


BAD_SM90_KERNEL = r"""
// An sm_90a "attention" kernel that reads a wgmma accumulator before its wait: ptxas
// injects a warpgroup.wait (C7517), which costs the overlap the real kernel relies on.
__global__ void __launch_bounds__(128) attention_fwd_sm90_kernel(float* out,
    unsigned long long da, unsigned long long db, int scale) {
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0, %1, %2, %3}, %4, %5, p, 1, 1, "
      "0, 0;\n}"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "l"(da), "l"(db), "r"(scale));
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
  out[threadIdx.x + 128] = d[0];
  asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
  out[threadIdx.x] = d[0] + d[1] + d[2] + d[3];
}
"""


def test_sm90_checks_fail_on_a_bad_kernel(tmp_path):
    """The sm_90a checks bite: an injected warpgroup wait (ptxas C7517), no TMA load and
    no setmaxnreg each fail the kernel."""
    r = report_on(tmp_path, "bad_attention_fwd_sm90.cu", BAD_SM90_KERNEL, "9.0a")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "attention_fwd_sm90_kernel [sm_90a]: ptxas serialised wgmma (C7517)" in r.stdout, out
    assert "attention_fwd_sm90_kernel [sm_90a]: no TMA load (UTMALDG)" in r.stdout, out
    assert "attention_fwd_sm90_kernel [sm_90a]: no setmaxnreg" in r.stdout, out
