#!/usr/bin/env bash
# The one command for a lent GPU (an H200 here): build, then check and time the CUDA kernels.
#
#   scripts/gpu_check.sh               on the GPU machine, from the repository root
#   scripts/gpu_check.sh --build-only  the build step alone: runs without a GPU, to prove
#                                      the build before device time is spent
#   scripts/gpu_check.sh --plan        print the step caps for GPU_CHECK_BUDGET_S and exit
#
# Steps, each under its own `timeout`, each recorded as ok / FAILED / skipped / incomplete;
# a failure does not stop the script (only a failed build skips the steps that need it), and
# the exit status is non-zero when a required step failed:
#   build       pip install --no-build-isolation -e . with FASTATTN_EMU=ON (so the primitive
#               tests can compare the emulation with the GPU), TORCH_CUDA_ARCH_LIST=9.0a
#               (the H200's own code only: half the nvcc work of "8.0+PTX;9.0a"), into
#               build/gpu_check/torch<version>/<wheel tag>
#   primitives  the cuda cases of tests/test_primitives.py and test_primitives_sm90.py (the
#               emulation's references on the GPU, primitive by primitive; Hopper ones on sm_90)
#   parity      the parity suite's cuda cases (pytest -k cuda: every test with a cuda device
#               parameter, tests/test_cuda_graphs.py, the CUDA index-error tests)
#   memcheck    compute-sanitizer --tool memcheck on scripts/gpu_sanitize_case.py
#   racecheck   compute-sanitizer --tool racecheck on the same cases; both are skipped (not
#               failed) where compute-sanitizer is not installed or refuses the device (it
#               does under gVisor: "Device not supported"), and a timeout there is
#               "incomplete", not a failure: only a reported error fails them
#   bench       optional (running out of time fails nothing): python -m fastattn.bench
#               --device cuda --quick (no torch.compile'd peers), then the default prefill
#               and decode shapes (--no-compile) with whatever time is left
# The whole run stays inside GPU_CHECK_BUDGET_S (default 400 s, well under the 8 minutes a
# run may take): each step's cap is its share of the budget (printed at the start; the caps
# sum to the budget less 10 s for the summary), and a step's timeout is the smaller of its
# cap and the time left, so time a step does not use goes to the later ones.
#
# Output goes to $OUT when set (the device tool's folder), else ./gpu_check_out: summary.md
# (GPU, driver, torch, commit, per-step result and time, headline figures), one log per
# step, and bench.json; 8 files at most, as the device tool returns no more.
#
# Environment: PYTHON (default: python3, or .venv/bin/python where it exists),
# GPU_CHECK_ARCHS (TORCH_CUDA_ARCH_LIST of the build; default 9.0a on the GPU, and the
# project's default "8.0+PTX;9.0a" with --build-only, so that the .venv it installs into keeps
# both), GPU_CHECK_BUDGET_S, GPU_CHECK_COMMIT (the commit to report where the copy of the
# tree has no .git).
set -uo pipefail
cd "$(dirname "$0")/.."

BUILD_ONLY=0
PLAN_ONLY=0
case "${1:-}" in
  --build-only) BUILD_ONLY=1 ;;
  --plan) PLAN_ONLY=1 ;;
  "") ;;
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
  *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
esac


if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=$(pwd)/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
export FASTATTN_REQUIRE_EMU=1

BUDGET=${GPU_CHECK_BUDGET_S:-400}
T0=$(date +%s)
# Seconds kept for the summary, and for `timeout --kill-after` on a step that ignores TERM.
KILL_AFTER=5
RESERVE=15
# Each step's share of BUDGET - RESERVE, in percent (sums to 100). The build of 9.0a alone
# took ~160 s on 2 cores here; the GPU machine has 16.
STEP_NAMES=(build primitives parity memcheck racecheck bench)
STEP_SHARES=(28 7 33 10 10 12)
declare -A CAP
cap_sum=0
for i in "${!STEP_NAMES[@]}"; do
  CAP[${STEP_NAMES[$i]}]=$(( (BUDGET - RESERVE) * STEP_SHARES[$i] / 100 ))
  cap_sum=$(( cap_sum + CAP[${STEP_NAMES[$i]}] ))
done
if [ "$BUILD_ONLY" = 0 ]; then
  for n in "${STEP_NAMES[@]}"; do
    if [ "${CAP[$n]}" -lt 15 ]; then
      echo "gpu_check: GPU_CHECK_BUDGET_S=$BUDGET gives the $n step ${CAP[$n]} s; use 150 or more" >&2
      exit 2
    fi
  done
fi
if [ "$PLAN_ONLY" = 1 ]; then
  for n in "${STEP_NAMES[@]}"; do echo "$n ${CAP[$n]}"; done
  echo "reserve $RESERVE"
  echo "budget $BUDGET"
  exit 0
fi

OUT_DIR=${OUT:-./gpu_check_out}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
SUMMARY="$OUT_DIR/summary.md"

if [ -n "${GPU_CHECK_ARCHS:-}" ]; then
  ARCHS=$GPU_CHECK_ARCHS
elif [ "$BUILD_ONLY" = 1 ]; then
  ARCHS=${TORCH_CUDA_ARCH_LIST:-8.0+PTX;9.0a}
else
  ARCHS=9.0a
fi

# ---- facts for the summary -------------------------------------------------------------------
commit=${GPU_CHECK_COMMIT:-}
if [ -z "$commit" ]; then
  commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  if [ "$commit" != unknown ] && [ -n "$(git status --porcelain 2>/dev/null | head -1)" ]; then
    commit="$commit (dirty)"
  fi
fi
# A fingerprint of the sources, so a result can be matched to a tree without .git.
tree_hash=$(find csrc python/fastattn cmake scripts tests CMakeLists.txt pyproject.toml -type f \
              \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.py' \
                 -o -name '*.cmake' -o -name '*.txt' -o -name '*.toml' -o -name '*.sh' \) \
              -not -path '*/__pycache__/*' -print0 2>/dev/null | sort -z | xargs -0 sha256sum |
            sha256sum | cut -c1-12)
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
      head -1)
[ -n "$gpu" ] || gpu="none (nvidia-smi absent or no GPU)"
torch_info=$("$PYTHON" -c "import torch; print(torch.__version__, 'CUDA', torch.version.cuda, \
'- GPU visible:', torch.cuda.is_available())" 2>&1 | tail -1 | tr '|' '/')
torch_version=$("$PYTHON" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null ||
                echo unknown)
cpu_model=$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')
nvcc_version=$( (/usr/local/cuda/bin/nvcc --version 2>/dev/null || nvcc --version 2>/dev/null) |
               grep -o 'release [0-9.]*' | head -1)
SANITIZER=$(command -v compute-sanitizer 2>/dev/null || true)
[ -n "$SANITIZER" ] || { [ -x /usr/local/cuda/bin/compute-sanitizer ] &&
                         SANITIZER=/usr/local/cuda/bin/compute-sanitizer; }

# ---- step runner -------------------------------------------------------------------------------
STEPS=()     # "name|result|seconds|note"
FAILED=0

left() { echo $(( BUDGET - ($(date +%s) - T0) - RESERVE )); }

# run_step NAME CAP LOG CMD...: CMD under timeout min(CAP, time left), output to LOG.
run_step() {
  local name=$1 cap=$2 log=$3; shift 3
  local t
  t=$(left)
  [ "$t" -gt "$cap" ] && t=$cap
  if [ "$t" -lt 15 ]; then
    STEPS+=("$name|skipped|0|no time left in the ${BUDGET}s budget")
    echo "== $name: skipped (no time left)"
    return 0
  fi
  echo "== $name (timeout ${t}s) -> $(basename "$log")"
  local s=$(date +%s) rc
  { echo "\$ $*"; echo; } >>"$log"
  timeout --kill-after="$KILL_AFTER" "$t" "$@" >>"$log" 2>&1
  rc=$?
  local d=$(( $(date +%s) - s ))
  local note=""
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && note="timed out after ${t}s"
  [ -z "$note" ] && [ "$rc" != 0 ] && note="exit $rc"
  # pytest's last line ("N passed, M failed in Xs") says more than an exit status.
  local counts
  counts=$(grep -E '[0-9]+ (passed|failed|error)' "$log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
  [ -n "$counts" ] && note="${note:+$note; }$counts"
  if [ "$rc" = 0 ]; then
    STEPS+=("$name|ok|$d|$note")
    echo "   ok (${d}s) $note"
  elif [ -n "${SKIP_IF_LOG_MATCHES:-}" ] && grep -qE "$SKIP_IF_LOG_MATCHES" "$log"; then
    # The tool cannot run here at all (not a finding about our code).
    STEPS+=("$name|skipped|$d|$(grep -oE "$SKIP_IF_LOG_MATCHES" "$log" | head -1)")
    echo "   skipped (${d}s): the tool cannot run here"
  elif [ "${OPTIONAL_STEP:-0}" = 1 ] && { [ "$rc" = 124 ] || [ "$rc" = 137 ]; }; then
    # An extra that ran out of time: what it printed is kept, and it fails nothing.
    STEPS+=("$name|incomplete|$d|$note (optional step)")
    echo "   incomplete (${d}s) $note"
  else
    STEPS+=("$name|FAILED|$d|$note")
    FAILED=1
    echo "   FAILED (${d}s) $note; tail of $(basename "$log"):"
    tail -15 "$log" | sed 's/^/     /'
  fi
  return "$rc"
}

skip_step() {  # NAME REASON
  STEPS+=("$1|skipped|0|$2")
  echo "== $1: skipped ($2)"
}

write_summary() {
  {
    echo "# fastattn GPU check"
    echo
    echo "| | |"
    echo "| --- | --- |"
    echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    echo "| mode | $([ "$BUILD_ONLY" = 1 ] && echo 'build only' || echo full) |"
    echo "| GPU (name, driver, memory) | $gpu |"
    echo "| torch | $torch_info |"
    echo "| nvcc | ${nvcc_version:-not found} |"
    echo "| CPU | ${cpu_model:-unknown}, $(nproc) cores |"
    echo "| commit | $commit |"
    echo "| source hash | $tree_hash |"
    echo "| TORCH_CUDA_ARCH_LIST | $ARCHS |"
    echo "| total | $(( $(date +%s) - T0 )) s of a ${BUDGET} s budget |"
    echo "| step caps | $(budget_line) |"
    echo
    echo "| step | result | seconds | note |"
    echo "| --- | --- | --- | --- |"
    local s
    for s in "${STEPS[@]}"; do
      IFS='|' read -r n r d note <<<"$s"
      echo "| $n | $r | $d | $note |"
    done
    if [ -s "$OUT_DIR/bench.log" ]; then
      echo
      echo "## Headline figures (python -m fastattn.bench)"
      echo
      echo '```'
      # The header, peak and table lines of each run; not the per-peer notes.
      grep -E '^(fastattn [0-9]|peaks:|suite |---|prefill |cross |varlen |decode |extend |append |total )' \
        "$OUT_DIR/bench.log" | grep -v '^---' | head -80
      echo '```'
    fi
    local lg
    for lg in memcheck racecheck; do
      if [ -s "$OUT_DIR/$lg.log" ]; then
        echo
        echo "## $lg"
        echo
        echo '```'
        grep -E '^(prefill|decode|extend|append|merge|failed cases):|ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Race|Hazard' \
          "$OUT_DIR/$lg.log" | head -20
        echo '```'
      fi
    done
  } >"$SUMMARY"
}

# ---- steps -------------------------------------------------------------------------------------
BUILD_CAP=${GPU_CHECK_BUILD_CAP_S:-${CAP[build]}}
if [ "$BUILD_ONLY" = 1 ]; then
  BUILD_CAP=${GPU_CHECK_BUILD_CAP_S:-1800}; BUDGET=$((BUILD_CAP + RESERVE)); cap_sum=$BUILD_CAP
fi
budget_line() {
  if [ "$BUILD_ONLY" = 1 ]; then echo "build ${BUILD_CAP}"; return; fi
  local n out=""
  for n in "${STEP_NAMES[@]}"; do out+="$n ${CAP[$n]}, "; done
  echo "${out%, } = ${cap_sum} s + ${RESERVE} s reserve"
}
echo "gpu_check: $([ "$BUILD_ONLY" = 1 ] && echo 'build only' || echo 'full run'); GPU: $gpu;" \
     "torch $torch_info; archs $ARCHS; output in $OUT_DIR"
echo "gpu_check: budget ${BUDGET}s; step caps: $(budget_line)"
if [ "$cap_sum" -gt $(( BUDGET - RESERVE )) ]; then
  echo "gpu_check: the step caps exceed the budget" >&2
  exit 2
fi
rm -f "$OUT_DIR"/{build,primitives,parity,memcheck,racecheck,bench}.log "$OUT_DIR/bench.json"

# build: the same pip command as `make build`, into its own build directory (a fresh one on the
# GPU machine; here it leaves the everyday build directory alone). --no-index: there is no
# network there, and nothing needs fetching with --no-deps --no-build-isolation.
build_ok=0
if run_step build "$BUILD_CAP" "$OUT_DIR/build.log" \
     env FASTATTN_EMU=ON TORCH_CUDA_ARCH_LIST="$ARCHS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
     "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -v -e . \
       -C "build-dir=build/gpu_check/torch${torch_version}/{wheel_tag}"; then
  # The module must import and carry the CUDA kernels for the archs asked for.
  if "$PYTHON" -c "
import sys, fastattn
info = fastattn.build_info()
print('build_info:', info)
sys.exit(0 if info.get('cuda') else 'built without the CUDA kernels')" >>"$OUT_DIR/build.log" 2>&1; then
    build_ok=1
  else
    IFS='|' read -r _ _ secs _ <<<"${STEPS[-1]}"
    STEPS[-1]="build|FAILED|$secs|fastattn imports without the CUDA kernels (see build.log)"
    FAILED=1
  fi
fi

if [ "$BUILD_ONLY" = 1 ]; then
  write_summary
  cat "$SUMMARY"
  exit "$FAILED"
fi

GPU_OK=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)

if [ "$build_ok" != 1 ]; then
  for s in primitives parity memcheck racecheck bench; do skip_step "$s" "build failed"; done
elif [ "$GPU_OK" != 1 ]; then
  for s in primitives parity memcheck racecheck bench; do skip_step "$s" "torch sees no GPU"; done
  FAILED=1
else
  # The GPU half of the primitive tests (their emulated half runs in CI): the same test
  # kernels on the GPU against the references the emulation passes.
  run_step primitives "${CAP[primitives]}" "$OUT_DIR/primitives.log" \
    "$PYTHON" -m pytest -q -rfE -p no:cacheprovider -k cuda tests/test_primitives.py \
    tests/test_primitives_sm90.py

  run_step parity "${CAP[parity]}" "$OUT_DIR/parity.log" \
    "$PYTHON" -m pytest -q -rfE -p no:cacheprovider -k cuda --ignore=tests/test_primitives.py \
    --ignore=tests/test_primitives_sm90.py tests

  if [ -z "$SANITIZER" ]; then
    skip_step memcheck "not installed (compute-sanitizer)"
    skip_step racecheck "not installed (compute-sanitizer)"
  else
    # Instrument fastattn's kernels only (much faster), where this sanitizer can filter.
    filter=()
    "$SANITIZER" --help 2>/dev/null | grep -q -- '--kernel-name' && filter=(--kernel-name kns=fastattn)
    # Under gVisor compute-sanitizer refuses the device (device/KINDS.md).
    unsupported='Device not supported|error 999|CUDA_ERROR_UNKNOWN'
    for tool in memcheck racecheck; do
      if [ "$tool" = racecheck ] && [ "${STEPS[-1]%%|*}" = memcheck ] &&
         [ "$(cut -d'|' -f2 <<<"${STEPS[-1]}")" = skipped ]; then
        skip_step racecheck "as memcheck: compute-sanitizer cannot run here"
        continue
      fi
      OPTIONAL_STEP=1 SKIP_IF_LOG_MATCHES=$unsupported run_step "$tool" "${CAP[$tool]}" \
        "$OUT_DIR/$tool.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        "$SANITIZER" --tool "$tool" --error-exitcode 99 ${filter[@]+"${filter[@]}"} \
        "$PYTHON" scripts/gpu_sanitize_case.py
    done
  fi

  if OPTIONAL_STEP=1 run_step bench "${CAP[bench]}" "$OUT_DIR/bench.log" \
       "$PYTHON" -m fastattn.bench --device cuda --quick --json "$OUT_DIR/bench.json"; then
    # Default (large) shapes of the two headline suites, with the time the steps left.
    if [ "$(left)" -ge 60 ]; then
      OPTIONAL_STEP=1 run_step bench-default "$(left)" "$OUT_DIR/bench.log" \
        "$PYTHON" -m fastattn.bench --device cuda --no-compile prefill decode
    else
      skip_step bench-default "no time left"
    fi
  fi
fi

write_summary
echo
cat "$SUMMARY"
exit "$FAILED"
