#!/usr/bin/env bash
# Resource and SASS report of every shipped CUDA kernel (each __global__ instantiation that
# the csrc/cuda/*.cu translation units put into fastattn._C; primitives_test*.cu are test
# kernels of fastattn._emu and are left out).
#
#   scripts/kernel_report.sh [-j JOBS] [--keep DIR] [--so PATH | --no-so] [--src FILE.cu ...]
#                            [--objects BUILD_DIR]
#
# --keep DIR keeps the objects, ptxas logs and SASS; --so names the module to cross-check
# (default: fastattn._C as imported); --src replaces the csrc/cuda/*.cu list (tests use it to
# show that the checks fail on a kernel that breaks them). --objects BUILD_DIR reads the
# objects the CMake build already compiled (BUILD_DIR/**/csrc/cuda/<tu>.cu.o) instead of
# compiling again, which halves the CUDA compile work of a CI run; it has no ptxas log, so
# spills show as local memory (cuobjdump's LOCAL bytes, and LDL/STL in the SASS) and ptxas's
# wgmma notes are not checked.
#
# How: recompiles each csrc/cuda/*.cu with nvcc (-Xptxas -v) using the build's flags and
# architectures (TORCH_CUDA_ARCH_LIST, default "8.0+PTX;9.0a", as cmake/FastattnTorch.cmake),
# in parallel, into a temporary directory; reads registers, static shared memory, stack
# frame and spill bytes from ptxas; disassembles the objects with `cuobjdump --dump-sass`.
# When fastattn._C is importable, its kernel list (cuobjdump --dump-resource-usage) is
# compared with the report's: a difference is a warning (a stale build, or flags that
# differ from CMake's), since the report itself reads the current sources.
#
# Checks (exit 1 when one fails):
#   - zero spill bytes (stores and loads) in every kernel and architecture;
#   - no local-memory instructions (LDL/STL) in the SASS of any kernel;
#   - tensor-core MMA (HMMA, or HGMMA from wgmma) in every attention_fwd kernel;
#   - the sm_90a attention kernels (attention_fwd_sm90_kernel, sm_90a SASS) use HGMMA and TMA
#     loads (UTMALDG), and ptxas injected no wgmma serialisation (its C75xx notes: a
#     wait it had to insert, or wgmma it had to serialise, costs the overlap the kernel is
#     built around); their register budgets per warpgroup role (setmaxnreg) are reported.
#     Their other-architecture passes are traps (the dispatch never launches them) and are
#     only listed;
#   - for each "+PTX" architecture, the shipped module carries PTX of every kernel compiled
#     for it (cuobjdump --dump-ptx), so GPUs newer than the SASS targets JIT it instead of
#     failing with "no kernel image is available" (checked only when fastattn._C is read).
# Tensor-core use of the other kernels (paged_decode, ...) is reported, not required.
# Exit 2: a tool is missing or a translation unit does not compile.
#
# Environment: NVCC (default: /usr/local/cuda/bin/nvcc, else nvcc on PATH), CUOBJDUMP,
# NVDISASM (found on PATH, in the CUDA toolkit, in the nvidia-cuda-cuobjdump wheel or in
# Triton's bundled binaries), PYTHON (default: .venv/bin/python, else python3),
# TORCH_CUDA_ARCH_LIST.
set -uo pipefail
CALLER_PWD=$PWD
cd "$(dirname "$0")/.."

JOBS=$(nproc 2>/dev/null || echo 2)
KEEP=""
SO=""
NO_SO=0
SRC_OVERRIDE=()
OBJECTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    -j) JOBS="$2"; shift 2 ;;
    -j*) JOBS="${1#-j}"; shift ;;
    --keep) KEEP="$2"; shift 2 ;;
    --so) SO="$2"; shift 2 ;;
    --no-so) NO_SO=1; shift ;;
    --src) case "$2" in /*) SRC_OVERRIDE+=("$2") ;; *) SRC_OVERRIDE+=("$CALLER_PWD/$2") ;; esac
           shift 2 ;;
    --objects) case "$2" in /*) OBJECTS="$2" ;; *) OBJECTS="$CALLER_PWD/$2" ;; esac; shift 2 ;;
    -h|--help) sed -n '2,44p' "$0"; exit 0 ;;
    *) echo "kernel_report: unknown argument $1" >&2; exit 2 ;;
  esac
done

die() { echo "kernel_report: $*" >&2; exit 2; }

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

NVCC=${NVCC:-}
if [ -z "$NVCC" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc
  else NVCC=$(command -v nvcc || true); fi
fi
[ -n "$NVCC" ] && [ -x "$NVCC" ] || die "nvcc not found (set NVCC)"
CUDA_BIN=$(dirname "$NVCC")

# Python package directories that may carry cuobjdump / nvdisasm: the nvidia-cuda-cuobjdump
# wheel (nvidia/cu13/bin) and Triton's bundled CUDA binaries.
wheel_bins=$("$PYTHON" - <<'EOF' 2>/dev/null
import glob, os, site, sys
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += glob.glob(os.path.join(sp, "nvidia", "*", "bin"))
    dirs += glob.glob(os.path.join(sp, "nvidia", "cuda_cuobjdump", "bin"))
    dirs += glob.glob(os.path.join(sp, "triton", "backends", "nvidia", "bin"))
print("\n".join(d for d in dirs if os.path.isdir(d)))
EOF
)

find_tool() {  # name -> path of an executable, or empty
  local name=$1 d
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  for d in "$CUDA_BIN" /usr/local/cuda/bin $wheel_bins; do
    if [ -x "$d/$name" ]; then echo "$d/$name"; return; fi
  done
}
CUOBJDUMP=${CUOBJDUMP:-$(find_tool cuobjdump)}
NVDISASM=${NVDISASM:-$(find_tool nvdisasm)}
[ -n "$CUOBJDUMP" ] || die "cuobjdump not found (pip install nvidia-cuda-cuobjdump, or set CUOBJDUMP)"
# cuobjdump --dump-sass runs nvdisasm, which the nvidia-cuda-cuobjdump wheel lacks.
[ -n "$NVDISASM" ] || die "nvdisasm not found (cuobjdump --dump-sass needs it; set NVDISASM)"
export NVDISASM_PATH=$(dirname "$NVDISASM")
export PATH="$NVDISASM_PATH:$PATH"

# Architectures, as cmake/FastattnTorch.cmake passes them to torch: "8.0+PTX;9.0a" -> sm_80,
# sm_90a. "+PTX" adds PTX, not SASS, to the module: the SASS compiled here is the same.
ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0+PTX;9.0a}
GENCODE=()
ARCHS=()
PTX_ARCHS=()
for a in ${ARCH_LIST//;/ }; do
  case "$a" in *+PTX) a=${a%+PTX}; PTX_ARCHS+=("sm_${a/./}") ;; esac
  sm=${a/./}
  GENCODE+=(-gencode "arch=compute_${sm},code=sm_${sm}")
  ARCHS+=("sm_${sm}")
done
[ ${#ARCHS[@]} -gt 0 ] || die "empty TORCH_CUDA_ARCH_LIST"

SOURCES=("${SRC_OVERRIDE[@]}")
[ ${#SRC_OVERRIDE[@]} -gt 0 ] || for f in csrc/cuda/*.cu; do
  [ -e "$f" ] || continue
  case "$(basename "$f")" in primitives_test*.cu) continue ;; esac
  SOURCES+=("$f")
done
[ ${#SOURCES[@]} -gt 0 ] || die "no csrc/cuda/*.cu"

if [ -n "$KEEP" ]; then
  WORK=$KEEP; mkdir -p "$WORK"
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/kernel_report.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi

# The flags CMake gives the csrc/cuda TUs (CMakeLists.txt, torch's CUDA flags), minus the
# host-only ones; torch's headers are on the path in case a TU includes them.
TORCH_INC=()
while IFS= read -r d; do [ -n "$d" ] && TORCH_INC+=(-isystem "$d"); done < <(
  "$PYTHON" -c "from torch.utils.cpp_extension import include_paths; print('\n'.join(include_paths()))" 2>/dev/null)
FLAGS=(-c -O3 -DNDEBUG -std=c++20 --expt-relaxed-constexpr --expt-extended-lambda -lineinfo
       -Xcompiler=-fPIC -DFASTATTN_WITH_CUDA=1 "-DFASTATTN_CUDA_ARCHS=\"${ARCH_LIST//;/ }\""
       -Icsrc/include -Icsrc "${TORCH_INC[@]}" "${GENCODE[@]}" -Xptxas -v)
case "$ARCH_LIST" in *9.0a*) FLAGS+=(-DFASTATTN_HAS_SM90A=1) ;; esac  # as CMakeLists.txt

if [ -n "$OBJECTS" ]; then
  [ -d "$OBJECTS" ] || die "--objects $OBJECTS is not a directory"
  for src in "${SOURCES[@]}"; do
    name=$(basename "$src" .cu)
    obj=$(find "$OBJECTS" -path "*/csrc/cuda/$name.cu.o" -print -quit)
    [ -n "$obj" ] || die "no object for $src under $OBJECTS (build first)"
    [ "$obj" -nt "$src" ] || echo "kernel_report: WARNING: $obj is older than $src" >&2
    cp "$obj" "$WORK/$name.o"
    "$CUOBJDUMP" --dump-resource-usage "$WORK/$name.o" >"$WORK/$name.res" 2>&1 ||
      die "cuobjdump --dump-resource-usage $obj failed"
  done
  echo "kernel_report: ${#SOURCES[@]} translation units from the objects under $OBJECTS" >&2
fi
[ -n "$OBJECTS" ] || {
echo "kernel_report: compiling ${#SOURCES[@]} translation units for ${ARCHS[*]} with $NVCC (-j$JOBS)" >&2
start=$(date +%s)
compile() {  # src -> $WORK/<name>.o and <name>.ptxas
  local src=$1 name
  name=$(basename "$src" .cu)
  "$NVCC" "${FLAGS[@]}" "$src" -o "$WORK/$name.o" >"$WORK/$name.ptxas" 2>&1
  echo $? >"$WORK/$name.rc"
}
running=0
for src in "${SOURCES[@]}"; do
  compile "$src" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
done
wait
failed=0
for src in "${SOURCES[@]}"; do
  name=$(basename "$src" .cu)
  if [ "$(cat "$WORK/$name.rc" 2>/dev/null)" != 0 ]; then
    echo "kernel_report: $src does not compile:" >&2
    grep -v '^ptxas info' "$WORK/$name.ptxas" | head -30 >&2
    failed=1
  fi
done
[ "$failed" = 0 ] || exit 2
echo "kernel_report: compiled in $(( $(date +%s) - start )) s" >&2
}

for src in "${SOURCES[@]}"; do
  name=$(basename "$src" .cu)
  "$CUOBJDUMP" --dump-sass "$WORK/$name.o" >"$WORK/$name.sass" 2>"$WORK/$name.sass.err" ||
    die "cuobjdump --dump-sass $WORK/$name.o failed: $(head -3 "$WORK/$name.sass.err")"
done

# The shipped module, for the cross-check (optional).
if [ "$NO_SO" = 1 ]; then
  SO=""
elif [ -z "$SO" ]; then
  SO=$("$PYTHON" -c "import fastattn._C as m; print(m.__file__)" 2>/dev/null || true)
fi
if [ -n "$SO" ] && [ -f "$SO" ]; then
  "$CUOBJDUMP" --dump-resource-usage "$SO" >"$WORK/_C.res" 2>/dev/null || rm -f "$WORK/_C.res"
  "$CUOBJDUMP" --dump-ptx "$SO" >"$WORK/_C.ptx" 2>/dev/null || rm -f "$WORK/_C.ptx"
fi

"$PYTHON" - "$WORK" "$SO" "$NVCC" "${ARCHS[*]}" "${PTX_ARCHS[*]}" "${SOURCES[@]}" <<'EOF'
import os
import re
import shutil
import subprocess
import sys

work, so, nvcc, archs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
ptx_archs = sys.argv[5].split()
sources = sys.argv[6:]

# ---- ptxas -v: per (arch, mangled entry) -------------------------------------------------
res = {}     # (arch, mangled) -> dict
origin = {}  # mangled -> translation unit
devfn_spills = []  # (arch, mangled device function, stores, loads)
wgmma_notes = {}   # (arch, mangled) -> ptxas codes of injected waits / serialised wgmma
from_objects = False
for src in sources:
    name = os.path.splitext(os.path.basename(src))[0]
    res_path = os.path.join(work, name + ".res")
    if os.path.exists(res_path):  # --objects: cuobjdump's resource usage, no ptxas log
        from_objects = True
        arch = fn = None
        for line in open(res_path, errors="replace"):
            m = re.match(r"\s*arch = (sm_\w+)", line)
            if m:
                arch = m.group(1)
                continue
            m = re.match(r"\s*Function (\S+):", line)
            if m:
                fn = m.group(1)
                continue
            m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
            if m and fn:
                regs, stack, smem, local = map(int, m.groups())
                res[(arch, fn)] = dict(regs=regs, smem=smem, stack=stack, spill_st=local,
                                       spill_ld=local, barriers=0)
                origin[fn] = os.path.basename(src)
                fn = None
        continue
    cur = props_of = None
    pending = {}  # function -> wgmma notes not yet tied to an architecture
    for line in open(os.path.join(work, name + ".ptxas"), errors="replace"):
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
        if m:
            cur = (m.group(2), m.group(1))
            if m.group(1) in pending:
                wgmma_notes.setdefault(cur, []).extend(pending.pop(m.group(1)))
            res[cur] = dict(regs=0, smem=0, stack=0, spill_st=0, spill_ld=0, barriers=0)
            origin[m.group(1)] = os.path.basename(src)
            continue
        # ptxas's wgmma advisories ("(C7517) warpgroup.wait is injected ... in function
        # '...'"; C7515 "wgmma.mma_async instructions are serialized ..."): printed before
        # the "Compiling entry function" line of the pass they belong to, so a note naming a
        # function waits for that line to learn its architecture.
        m = re.search(r"\((C75\d\d)\)", line)
        if m and re.search(r"wgmma|warpgroup|GMMA", line):
            named = re.search(r"function '([^']+)'", line)
            if named:
                pending.setdefault(named.group(1), []).append(m.group(1))
            else:
                wgmma_notes.setdefault(cur or ("?", "?"), []).append(m.group(1))
            continue
        if cur is None:
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            props_of = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m:
            stack, spill_st, spill_ld = map(int, m.groups())
            if props_of == cur[1]:
                r = res[cur]
                r["stack"], r["spill_st"], r["spill_ld"] = stack, spill_st, spill_ld
            elif spill_st or spill_ld:  # a device function the compiler did not inline
                devfn_spills.append((cur[0], props_of, spill_st, spill_ld))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m:
            r = res[cur]
            r["regs"] = int(m.group(1))
            b = re.search(r"used (\d+) barriers", line)
            s = re.search(r"(\d+) bytes smem", line)
            r["barriers"] = int(b.group(1)) if b else 0
            r["smem"] = int(s.group(1)) if s else 0
            cur = None  # the entry's last line
    for fn, codes in pending.items():  # named a function no entry line followed
        wgmma_notes.setdefault(("?", fn), []).extend(codes)

# ---- SASS: per (arch, mangled) opcode counts ---------------------------------------------
OPS = ("HMMA", "HGMMA", "UTMALDG", "LDL", "STL", "LDG128", "STG128")
sass = {}
setmaxnreg = {}  # (arch, mangled) -> {("alloc" | "dealloc", registers)}
for src in sources:
    name = os.path.splitext(os.path.basename(src))[0]
    arch = fn = None
    for line in open(os.path.join(work, name + ".sass"), errors="replace"):
        m = re.match(r"\s*code for (sm_\w+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            fn = m.group(1)
            sass[(arch, fn)] = dict.fromkeys(OPS, 0)
            continue
        if fn is None or "/*" not in line:
            continue
        # "/*0a70*/  @P1 LDG.E.128 R4, [R20.64] ;  /* 0x... */": the opcode is the first
        # word after the address and an optional predicate.
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if not m:
            continue
        op = m.group(1)
        base = op.split(".")[0]
        c = sass[(arch, fn)]
        if base in ("HMMA", "HGMMA", "UTMALDG", "LDL", "STL"):
            c[base] += 1
        if base == "USETMAXREG":  # "USETMAXREG.TRY_ALLOC.CTAPOOL R4, 0xe0": the budget
            imm = re.search(r"0x([0-9a-f]+)\s*;", line)
            if imm:
                setmaxnreg.setdefault((arch, fn), set()).add(
                    ("dealloc" if "DEALLOC" in op else "alloc", int(imm.group(1), 16)))
        if base in ("LDG", "STG") and ".128" in op:
            c[base + "128"] += 1

# ---- names ---------------------------------------------------------------------------------
mangled = sorted({fn for _, fn in res} | {fn for _, fn in sass} | {f for _, f, _, _ in devfn_spills})
demangled = dict(zip(mangled, mangled))
filt = shutil.which("c++filt") or shutil.which("cu++filt")
if filt and mangled:
    out = subprocess.run([filt], input="\n".join(mangled), capture_output=True, text=True).stdout
    demangled.update(zip(mangled, out.splitlines()))


def short(fn):
    d = demangled.get(fn, fn)
    d = re.sub(r"^void ", "", d)
    d = d.replace("fastattn::kernels::", "").replace("fastattn::device::", "")
    d = d.replace("__nv_bfloat16", "bf16").replace("__half", "fp16")
    depth = 0  # drop the parameter list: the first '(' outside template brackets
    for i, ch in enumerate(d):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            return d[:i]
    return d


def family(fn):
    d = demangled.get(fn, fn)
    if "attention_fwd" in d:
        return "attention_fwd"
    if "paged_decode" in d:
        return "paged_decode"
    return "other"


# ---- table ---------------------------------------------------------------------------------
keys = sorted(set(res) | set(sass), key=lambda k: (origin.get(k[1], ""), short(k[1]), k[0]))
rows, failures, warnings, role_lines = [], [], [], []
for arch, fn in keys:
    r = res.get((arch, fn))
    s = sass.get((arch, fn))
    problems = []
    if r is None:
        problems.append("no ptxas report")
        r = dict(regs=-1, smem=-1, stack=-1, spill_st=-1, spill_ld=-1, barriers=-1)
    if s is None:
        problems.append("no SASS")
        s = dict.fromkeys(OPS, -1)
    if from_objects and r["spill_st"] > 0:
        problems.append(f"local memory {r['spill_st']} B per thread (spills or local arrays)")
    elif r["spill_st"] > 0 or r["spill_ld"] > 0:
        problems.append(f"spills {r['spill_st']}/{r['spill_ld']} B")
    if s["LDL"] > 0 or s["STL"] > 0:
        problems.append(f"local memory LDL {s['LDL']} STL {s['STL']}")
    tc = s["HMMA"] + s["HGMMA"]
    hopper = "attention_fwd_sm90" in demangled.get(fn, fn)
    if hopper and arch != "sm_90a":
        pass  # a trap: only the sm_90a pass has the kernel
    elif family(fn) == "attention_fwd" and tc <= 0:
        problems.append("no tensor-core MMA")
    if hopper and arch == "sm_90a":
        if s["HGMMA"] <= 0:
            problems.append("no HGMMA")
        if s["UTMALDG"] <= 0:
            problems.append("no TMA load (UTMALDG)")
        if wgmma_notes.get((arch, fn)):
            problems.append("ptxas serialised wgmma (" +
                            ", ".join(sorted(set(wgmma_notes[(arch, fn)]))) + ")")
        budgets = setmaxnreg.get((arch, fn), set())
        roles = ", ".join(f"{'producer' if kind == 'dealloc' else 'consumers'} {n}"
                          for kind, n in sorted(budgets, reverse=True))
        role_lines.append(f"  {short(fn)}: registers at entry {r['regs']}; setmaxnreg: "
                          f"{roles or 'none found'}")
        if not budgets:
            problems.append("no setmaxnreg")
        else:
            # One producer and two consumer warpgroups: setmaxnreg.inc waits until the
            # block's pool (its registers at entry) has what it asks, so more than the
            # pool would hang every block.
            lo = min(n for kind, n in budgets if kind == "dealloc") if any(
                kind == "dealloc" for kind, _ in budgets) else r["regs"]
            hi = max(n for kind, n in budgets if kind == "alloc") if any(
                kind == "alloc" for kind, _ in budgets) else r["regs"]
            if 128 * lo + 256 * hi > 384 * r["regs"]:
                problems.append(f"setmaxnreg asks 128 x {lo} + 256 x {hi} registers, more "
                                f"than the {384 * r['regs']} the block starts with")
    rows.append((origin.get(fn, "?"), short(fn), arch, r, s, problems))
    failures += [f"{short(fn)} [{arch}]: {p}" for p in problems]
for key, codes in wgmma_notes.items():
    if key not in keys:  # a note ptxas did not tie to a kernel listed above
        failures.append(f"ptxas wgmma note(s) {', '.join(sorted(set(codes)))} for "
                        f"{short(key[1])} [{key[0]}]")
for arch, fn, st, ld in devfn_spills:
    failures.append(f"device function {short(fn)} [{arch}]: spills {st}/{ld} B")

name_w = max([len("kernel")] + [len(r[1]) for r in rows])
tu_w = max([len("translation unit")] + [len(r[0]) for r in rows])
hdr = (f"{'translation unit':<{tu_w}}  {'kernel':<{name_w}}  {'arch':<6} {'regs':>4} "
       f"{'smem':>6} {'stack':>5} {'spill st/ld':>11} {'HMMA':>5} {'HGMMA':>5} {'TMA':>4} {'LDL/STL':>7} "
       f"{'ld/st128':>8}  check")
print()
print("fastattn CUDA kernels (static smem in bytes; dynamic smem is set at launch; "
      "spill and stack in bytes per thread" +
      ("; from the build's objects: 'spill' is cuobjdump's LOCAL bytes, ptxas's wgmma notes "
       "are not checked)" if from_objects else ")"))
print(hdr)
print("-" * len(hdr))
for tu, name, arch, r, s, problems in rows:
    print(f"{tu:<{tu_w}}  {name:<{name_w}}  {arch:<6} {r['regs']:>4} {r['smem']:>6} "
          f"{r['stack']:>5} {str(r['spill_st']) + '/' + str(r['spill_ld']):>11} "
          f"{s['HMMA']:>5} {s['HGMMA']:>5} {s['UTMALDG']:>4} {str(s['LDL']) + '/' + str(s['STL']):>7} "
          f"{str(s['LDG128']) + '/' + str(s['STG128']):>8}  "
          f"{'ok' if not problems else 'FAIL: ' + '; '.join(problems)}")
print("-" * len(hdr))

if role_lines:
    print("sm_90a attention kernels, register budget per warpgroup role:")
    print("\n".join(role_lines))
n_kernels = len({fn for _, fn in keys})
print(f"{n_kernels} kernels x {len(archs)} archs ({' '.join(archs)}) from {len(sources)} "
      f"translation units")
def trap(arch, fn):  # a Hopper kernel's pass for another architecture
    return "attention_fwd_sm90" in demangled.get(fn, fn) and arch != "sm_90a"


for fam in ("attention_fwd", "paged_decode", "other"):
    ks = [(a, fn) for a, fn in keys if family(fn) == fam and not trap(a, fn)]
    if not ks:
        if fam != "other":
            print(f"tensor cores, {fam}: no such kernel yet")
        continue
    with_tc = [k for k in ks if sass.get(k, {}).get("HMMA", 0) + sass.get(k, {}).get("HGMMA", 0) > 0]
    need = " (required)" if fam == "attention_fwd" else ""
    print(f"tensor cores, {fam}: {len(with_tc)} of {len(ks)} kernel/arch pairs use HMMA/HGMMA{need}"
          + (" (sm_90a kernels' traps for other architectures not counted)"
             if fam == "attention_fwd" and any(trap(a, fn) for a, fn in keys) else ""))

# ---- cross-check with the shipped module -----------------------------------------------------
def listed(path, section, item):
    """(section, item) pairs of a cuobjdump listing: each `item` line's first group with the
    first group of the last `section` line above it."""
    found, current = set(), None
    for line in open(path, errors="replace"):
        m = re.match(section, line)
        if m:
            current = m.group(1)
        m = re.match(item, line)
        if m and current:
            found.add((current, m.group(1)))
    return found


res_path = os.path.join(work, "_C.res")
if so and os.path.exists(res_path):
    shipped = listed(res_path, r"\s*arch = (sm_\w+)", r"\s*Function (\S+):")
    ours = set(keys)
    missing = sorted(shipped - ours)
    extra = sorted(ours - shipped)
    if missing:
        warnings.append(f"{len(missing)} kernel(s) in {os.path.basename(so)} not in csrc/cuda/*.cu "
                        "any more (stale build?): " + ", ".join(f"{short(f)} [{a}]" for a, f in missing[:5]))
    if extra:
        warnings.append(f"{len(extra)} kernel(s) not yet in {os.path.basename(so)} (rebuild with "
                        "`make build`): " + ", ".join(f"{short(f)} [{a}]" for a, f in extra[:5]))
    if not missing and not extra:
        print(f"fastattn._C ({so}): the same {len(shipped)} kernel/arch pairs")
elif so:
    warnings.append(f"could not read the kernels of {so}")
else:
    print("fastattn._C: not importable (or --no-so); kernel list not cross-checked")

# ---- PTX in the shipped module: what GPUs newer than the SASS targets run ------------------
ptx_path = os.path.join(work, "_C.ptx")
if so and ptx_archs and os.path.exists(ptx_path):
    entries = listed(ptx_path, r"\s*\.target (sm_\w+)", r"\s*\.(?:visible\s+)?\.entry (\S+?)\(")
    for arch in ptx_archs:
        kernels = sorted(fn for a, fn in keys if a == arch)
        missing = [fn for fn in kernels if (arch, fn) not in entries]
        if missing:
            failures += [f"{short(fn)}: no {arch} PTX in {os.path.basename(so)}" for fn in missing]
        else:
            print(f"PTX for {arch}: all {len(kernels)} kernels are in {os.path.basename(so)}")
elif so and ptx_archs:
    failures.append(f"could not read the PTX of {so} (TORCH_CUDA_ARCH_LIST asks for "
                    f"{' '.join(ptx_archs)} PTX)")

for w in warnings:
    print("WARNING: " + w)
if failures:
    print(f"FAILED: {len(failures)} problem(s)")
    for f in failures:
        print("  " + f)
    sys.exit(1)
print("OK: no spills, no local memory, tensor cores in every attention_fwd kernel, "
      "HGMMA and TMA in the sm_90a ones"
      + (f", PTX for {' '.join(ptx_archs)}" if so and ptx_archs else ""))
EOF
