"""The CPU kernels at every instruction-set level this machine can run.

The extension picks the widest kernels the CPU supports (build_info()["cpu_isa"]);
FASTATTN_CPU_ISA=generic|avx512 caps the level. Each capped level reruns the CPU parity
tests in a subprocess, so the fallbacks that other CPUs would take are checked here too.
"""

import os
import pathlib
import subprocess
import sys

import pytest

import fastattn

LEVELS = ["generic", "avx512", "avx512_bf16"]
TESTS = pathlib.Path(__file__).parent
PARITY_FILES = ["test_paged.py", "test_attention.py", "test_varlen.py", "test_fp8.py"]


def _run_level(env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import fastattn; print(fastattn.build_info()['cpu_isa'])"],
                          env=env, capture_output=True, text=True, check=True)


def test_default_level_is_reported():
    assert fastattn.build_info()["cpu_isa"] in LEVELS


@pytest.mark.parametrize("level", ["generic", "avx512"])
def test_cpu_parity_at_capped_level(level):
    have = fastattn.build_info()["cpu_isa"]
    if LEVELS.index(have) <= LEVELS.index(level):
        pytest.skip(f"this CPU runs {have} kernels: the default run already covers them")
    env = dict(os.environ, FASTATTN_CPU_ISA=level)
    assert _run_level(env).stdout.strip() == level
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
         "cpu or e4m3 or e5m2",
         *[str(TESTS / name) for name in PARITY_FILES]],
        env=env, cwd=TESTS.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert " passed" in result.stdout


def test_unknown_level_is_ignored_with_a_warning():
    out = _run_level(dict(os.environ, FASTATTN_CPU_ISA="avx2"))
    assert out.stdout.strip() == fastattn.build_info()["cpu_isa"]
    assert "ignoring FASTATTN_CPU_ISA=avx2" in out.stderr
