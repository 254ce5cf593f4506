"""scripts/gpu_check.sh fits the time a lent GPU gives it: the step caps sum within
GPU_CHECK_BUDGET_S, and the plan is printed before any step runs. The full run needs a GPU;
its build step (--build-only) is checked where nvcc is present."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ["build", "primitives", "parity", "memcheck", "racecheck", "bench"]


def plan(budget=None, tmp_path=None):
    env = dict(os.environ)
    env.pop("GPU_CHECK_BUDGET_S", None)
    if budget is not None:
        env["GPU_CHECK_BUDGET_S"] = str(budget)
    if tmp_path is not None:
        env["OUT"] = str(tmp_path)
    done = subprocess.run(["bash", str(SCRIPT), "--plan"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return {name: int(value) for name, value in (l.split() for l in done.stdout.splitlines())}


@pytest.mark.parametrize("budget", [None, 250, 400, 470])
def test_step_caps_sum_within_the_budget(budget, tmp_path):
    p = plan(budget, tmp_path)
    assert p["budget"] == (budget or 400)
    assert [k for k in p if k not in ("reserve", "budget")] == STEPS
    assert sum(p[s] for s in STEPS) + p["reserve"] <= p["budget"]
    # Every step gets a real share: none is starved to a no-op.
    assert min(p[s] for s in STEPS) >= 15


def test_default_budget_fits_the_device_run():
    """8 minutes is what a device call is prepared for (README, GPU section)."""
    assert plan()["budget"] <= 8 * 60
