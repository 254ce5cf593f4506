"""Attention over a sequence spread across processes, on ``torch.distributed``.

Context parallelism: when one device cannot hold a sequence's context, each rank of a
process group holds a shard of it and the ranks combine their partial attentions through
lse merging (the partial results of disjoint key sets, as ``merge_attention_states``
combines them). Backends: gloo (or MPI) for CPU tensors, NCCL for CUDA tensors. Each partial
result comes out of the single-device ops in q's dtype and is merged in fp32, so a row that
merges m partials is rounded m + 1 times (once per partial, once at the end), not once.

``ring_attention(q, k, v, *, group=None, causal=True, ...)``
    Context-parallel prefill. q, k, v are this rank's shard ``[B, S_local, H, D]`` of one
    sequence per batch row (self-attention: q, k and v cover the same positions). The K/V
    shards travel around the ring of ranks, one step per rank: at every step each rank sends
    the block it holds to the next rank and receives the previous rank's with
    ``batch_isend_irecv``, posted *before* it computes on the block it holds, so the transfer
    overlaps the attention. Blocks that no query of the rank can see (above the causal
    diagonal, outside a window) are skipped, not masked. Returns this rank's out (and lse):
    exactly the rows of single-process attention over the whole sequence.

    Layouts (``layout=``): ``"zigzag"`` (default): the sequence is cut into 2W chunks
    (``torch.tensor_split``: the first ``S % 2W`` chunks one token longer) and rank r holds
    chunks r and 2W-1-r, in that order: under a causal mask every rank then has the same
    work (an early chunk with little to see, a late one with much). ``"contiguous"``: rank r
    holds the r-th of W consecutive slices. Ranks may hold different lengths (uneven S).
    ``zigzag_shard`` / ``zigzag_unshard`` convert.

    Communication: W - 1 steps, each sending and receiving one rank's K and V
    (``2 * B * S_local * Hk * D`` elements), plus one all-gather of 15 numbers per rank
    that checks the ranks' arguments agree and tells every rank the others' lengths (the
    varlen form also all-gathers its B lengths).

``ring_attention_varlen(q, k, v, cu_seqlens, *, group=None, causal=True, ...)``
    The same over packed sequences: q, k, v ``[T_local, H, D]`` hold this rank's shard of
    every sequence (its zigzag or contiguous part of sequence b at rows
    ``cu_seqlens[b]:cu_seqlens[b+1]``, cu_seqlens int32 [B + 1] being this rank's own).
    ``zigzag_shard_varlen`` builds the shards and their cu_seqlens.

``sharded_paged_attention(q, k_cache, v_cache, block_table, seq_lens, *, group=None, ...)``
    Decode (and extend) over a paged KV cache whose pages are spread across ranks: every
    rank holds some of each sequence's keys, in its own cache with its own block table and
    lengths (``seq_lens``: the keys this rank holds; 0 where it holds none), and every rank
    passes the same queries. Each rank computes its partial (out, lse) with
    ``paged_attention``; one all-gather of them (``W * Tq * Hq * (D + 1)`` fp32 values) and a
    merge give every rank the full result. Extend also all-gathers holds_tail with the
    argument check (exactly one rank must hold each sequence's tail) and reads cu_seqlens_q
    and this rank's other lengths on the host.

    Positions: a rank's keys of a sequence are a contiguous run of its positions. Decode
    (``cu_seqlens_q=None``): the query is the sequence's last position, so every key is
    visible to it and the positions need not be given. Extend (``cu_seqlens_q``): the query
    tokens are the sequence's last ``q_len`` positions, and ``holds_tail`` (bool [B], this
    rank's) says which sequences' last ``seq_lens[b]`` positions this rank holds: those
    keys include the query tokens' own (append them there first) and are masked causally
    as by ``paged_attention``; the other sequences' keys all precede the query tokens and
    are all visible. Sliding windows need each rank's absolute positions and are not
    supported (NotImplementedError) beyond one rank.

Validation: the single-device rules for every tensor, and one all-gather checks that every
rank passed the same batch, heads, head dim, dtype, device type and options (a mismatch
raises ValueError on every rank, naming what differs). A rank whose own arguments fail their
checks raises its error and the others raise ValueError naming it: no rank is left waiting in
a collective.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from . import _checks as C
from ._api import Out, _check_options, _check_qkv, _result, attention_varlen, paged_attention

__all__ = [
    "ring_attention",
    "ring_attention_varlen",
    "sharded_paged_attention",
    "zigzag_shard",
    "zigzag_unshard",
    "zigzag_shard_varlen",
]

_ops = torch.ops.fastattn
_LAYOUTS = ("zigzag", "contiguous")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Test hook: when a list, ring_attention appends ("post", step), ("compute", step) and
# ("wait", step) as it posts a transfer, computes on a block and waits for the transfer.
_trace: Optional[list] = None


# ---------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------

def _split_sizes(total: int, parts: int) -> List[int]:
    """Chunk lengths of torch.tensor_split(x, parts) along a dim of `total` elements."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _segments(total: int, world: int, rank: int, layout: str) -> List[Tuple[int, int]]:
    """(global start, length) of the runs of positions `rank` holds, in local order."""
    parts = 2 * world if layout == "zigzag" else world
    sizes = _split_sizes(total, parts)
    starts = [sum(sizes[:i]) for i in range(parts)]
    chunks = [rank, 2 * world - 1 - rank] if layout == "zigzag" else [rank]
    return [(starts[c], sizes[c]) for c in chunks]


def _check_layout(layout: str) -> str:
    if layout not in _LAYOUTS:
        raise ValueError(f"layout: expected one of {_LAYOUTS}, got {layout!r}")
    return layout


def _world_and_rank(world_size, rank, group) -> Tuple[int, int]:
    if world_size is None:
        world_size = dist.get_world_size(group)
    if rank is None:
        rank = dist.get_rank(group)
    C.non_negative_int("rank", rank)
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size: expected a positive int, got {world_size!r}")
    if rank >= world_size:
        raise ValueError(f"rank: expected a value in [0, world_size = {world_size}), got {rank}")
    return world_size, rank


def zigzag_shard(x: torch.Tensor, world_size: Optional[int] = None, rank: Optional[int] = None,
                 *, dim: int = 1, group=None) -> torch.Tensor:
    """This rank's zigzag shard of x along `dim` (the sequence): chunks rank and
    2W-1-rank of ``torch.tensor_split(x, 2W, dim)``, concatenated. world_size and rank
    default to the group's."""
    world_size, rank = _world_and_rank(world_size, rank, group)
    chunks = torch.tensor_split(x, 2 * world_size, dim=dim)
    return torch.cat([chunks[rank], chunks[2 * world_size - 1 - rank]], dim=dim)


def zigzag_unshard(shards: Sequence[torch.Tensor], *, dim: int = 1) -> torch.Tensor:
    """The whole sequence from every rank's zigzag shard (``shards[r]`` is rank r's, e.g.
    from ``dist.all_gather``): the inverse of ``zigzag_shard``."""
    world = len(shards)
    if world == 0:
        raise ValueError("shards: expected one tensor per rank, got none")
    total = sum(s.shape[dim] for s in shards)
    sizes = _split_sizes(total, 2 * world)
    chunks: List[Optional[torch.Tensor]] = [None] * (2 * world)
    for r, s in enumerate(shards):
        first, second = sizes[r], sizes[2 * world - 1 - r]
        if s.shape[dim] != first + second:
            raise ValueError(f"shards[{r}]: expected {first + second} positions along dim {dim} "
                             f"(chunks {r} and {2 * world - 1 - r} of {total}), got {s.shape[dim]}")
        chunks[r], chunks[2 * world - 1 - r] = torch.split(s, [first, second], dim=dim)
    return torch.cat(chunks, dim=dim)


def zigzag_shard_varlen(x: torch.Tensor, cu_seqlens: torch.Tensor,
                        world_size: Optional[int] = None, rank: Optional[int] = None, *,
                        group=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """This rank's zigzag shard of every packed sequence of x [T, ...] (cu_seqlens int32
    [B + 1], the whole sequences'), and the shard's own cu_seqlens."""
    world_size, rank = _world_and_rank(world_size, rank, group)
    bounds = cu_seqlens.tolist()
    pieces, lengths = [], []
    for b in range(len(bounds) - 1):
        piece = zigzag_shard(x[bounds[b]:bounds[b + 1]], world_size, rank, dim=0)
        pieces.append(piece)
        lengths.append(piece.shape[0])
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32)
    out = torch.cat(pieces) if pieces else x[:0]
    return out, cu.to(cu_seqlens.device)


# ---------------------------------------------------------------------------------------
# Blocks with global positions
# ---------------------------------------------------------------------------------------

def _block_calls(sq: int, sk: int, q0: int, k0: int, causal: bool, wl: int, wr: int):
    """The dense attention calls that compute queries at global positions [q0, q0 + sq)
    against keys at [k0, k0 + sk): tuples (qs, qe, ke, causal, window_left) meaning queries
    [qs, qe) against keys [0, ke) with that mask (window_right -1). Query i sees keys
    [max(0, i + A), min(sk, i + B)) with A = q0 - k0 - wl and B = q0 - k0 + 1 (causal) or
    q0 - k0 + wr + 1 (window right); the single-device ops align their masks bottom-right,
    so a query slice and a key prefix place the diagonal anywhere. Queries that see no key
    get no call (their lse stays -inf)."""
    if sq == 0 or sk == 0:
        return []
    d = q0 - k0
    lo_off = d - wl if wl >= 0 else None
    hi_offs = ([d + 1] if causal else []) + ([d + wr + 1] if wr >= 0 else [])
    hi_off = min(hi_offs) if hi_offs else None
    start = max(0, 1 - hi_off) if hi_off is not None else 0
    end = min(sq, sk - lo_off) if lo_off is not None else sq
    if start >= end:
        return []
    calls = []
    # Queries whose upper bound lies inside the block: a diagonal, as a causal call.
    split = max(start, min(end, sk - hi_off + 1)) if hi_off is not None else start
    if split > start:
        ke = split - 1 + hi_off
        left = hi_off - 1 - lo_off if lo_off is not None else -1
        calls.append((start, split, ke, True, left))
    # Queries that see up to the block's last key: no upper bound.
    if end > split:
        left = sk - end - lo_off if lo_off is not None else -1
        calls.append((split, end, sk, False, left))
    return calls


def _merge_into(acc: torch.Tensor, acc_lse: torch.Tensor, out: torch.Tensor,
                lse: torch.Tensor) -> None:
    """acc/acc_lse (fp32, in place) := the merge of themselves and (out, lse), rows with
    lse -inf contributing nothing."""
    new = torch.logaddexp(acc_lse, lse)
    base = torch.where(torch.isneginf(new), torch.zeros_like(new), new)
    wa = torch.exp(acc_lse - base).unsqueeze(-1)
    wb = torch.exp(lse - base).unsqueeze(-1)
    acc.mul_(wa).add_(out.float() * wb)
    acc_lse.copy_(new)


# ---------------------------------------------------------------------------------------
# Cross-rank checks
# ---------------------------------------------------------------------------------------

_META_FIELDS = ("batch", "query heads", "key/value heads", "head dim", "dtype", "device type",
                "causal", "window_size[0]", "window_size[1]", "softmax_scale", "softcap",
                "layout", "extra")


def _dtype_code(dtype: torch.dtype) -> int:
    return _DTYPES.index(dtype) if dtype in _DTYPES else 99


def _check_backend(group, device: torch.device) -> None:
    backend = str(dist.get_backend(group)).lower()
    ok = ("nccl" in backend) if device.type == "cuda" else ("gloo" in backend or "mpi" in backend)
    if not ok:
        raise ValueError(f"group: its backend {backend!r} does not run the collectives on "
                         f"{device.type} tensors (gloo for CPU tensors, nccl for CUDA tensors)")


def _collective_device(group) -> torch.device:
    """Where the group's collectives take tensors: the current GPU for NCCL, else the CPU."""
    if "nccl" in str(dist.get_backend(group)).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree(group, check, extra: Optional[Sequence[float]] = None) -> List[List[float]]:
    """Runs this rank's checks (and whatever local work must succeed before any rank goes
    on), check() -> (local length, meta), then one all-gather of every rank's (failed?, local
    length, *meta, *extra) on the backend's device. A rank whose check raised (any
    exception) re-raises it after the gather and every other rank raises ValueError naming
    it, so that no rank is left waiting in a collective; a meta field that differs raises
    ValueError on every rank. Returns every rank's [local length, *extra] (extra: a fixed
    number of values the caller checks itself, e.g. holds_tail)."""
    world = dist.get_world_size(group)
    error: Optional[BaseException] = None
    local, meta = 0, [0.0] * len(_META_FIELDS)
    extra_values = [0.0] * (len(extra) if extra is not None else 0)
    try:
        local, meta = check()
        meta = list(meta) + [0.0] * (len(_META_FIELDS) - len(meta))
        if extra is not None:
            extra_values = [float(x) for x in extra]
    except Exception as e:  # re-raised below, once every rank knows
        error = e
    mine = torch.tensor([float(error is not None), float(local), *[float(m) for m in meta],
                         *extra_values], dtype=torch.float64, device=_collective_device(group))
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    rows = [e.tolist() for e in every]
    if error is not None:
        raise error
    failed = [r for r, row in enumerate(rows) if row[0]]
    if failed:
        raise ValueError(f"the arguments of rank(s) {failed} failed their checks (see the error "
                         f"raised there); no result was produced")
    for f, name in enumerate(_META_FIELDS):
        values = [row[2 + f] for row in rows]
        if any(v != values[0] and not (math.isnan(v) and math.isnan(values[0])) for v in values):
            raise ValueError(f"ranks disagree on {name}: {values} (rank order); every rank must "
                             f"pass the same shapes and options")
    return [[row[1], *row[2 + len(_META_FIELDS):]] for row in rows]


# ---------------------------------------------------------------------------------------
# ring_attention
# ---------------------------------------------------------------------------------------

def _ring(kv: torch.Tensor, shape_of, group, compute) -> None:
    """The ring loop of the dense and varlen forms. kv: this rank's K and V stacked [2, ...];
    shape_of(src): the shape of rank src's K (or V); compute(kv, src) merges rank src's block
    into the accumulators. Every rank's block passes through every rank once."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    # P2POp takes global ranks.
    peer = lambda r: dist.get_global_rank(group, r) if group is not None else r
    nxt, prv = peer((rank + 1) % world), peer((rank - 1) % world)
    cur = kv.contiguous()
    for step in range(world):
        src = (rank - step) % world
        reqs = []
        if step + 1 < world:
            buf = torch.empty((2, *shape_of((src - 1) % world)), dtype=cur.dtype,
                              device=cur.device)
            reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, cur, nxt, group),
                                           dist.P2POp(dist.irecv, buf, prv, group)])
            if _trace is not None:
                _trace.append(("post", step))
        if _trace is not None:
            _trace.append(("compute", step))
        compute(cur, src)
        for req in reqs:
            req.wait()
        if reqs:
            if _trace is not None:
                _trace.append(("wait", step))
            cur = buf


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group=None,
                   causal: bool = True, softmax_scale: Optional[float] = None,
                   window_size=(-1, -1), softcap: float = 0.0, layout: str = "zigzag",
                   return_lse: bool = False) -> Out:
    """Context-parallel self-attention over a sequence sharded across the ranks of `group`
    (default: the world). q [B, S_local, Hq, D]; k, v [B, S_local, Hk, D]: this rank's
    shard (``layout``: "zigzag" or "contiguous", see the module docstring). Returns this
    rank's rows of the full attention: out [B, S_local, Hq, D] (and lse [B, S_local, Hq])."""
    opts = {}

    def check():
        _check_qkv(q, k, v, "[B, S_local, Hq, D]", "[B, S_local, Hk, D]", 4)
        B, S, Hq, D = q.shape
        Hk = k.shape[2]
        C.shape("k", k, (B, S, Hk, D), "[B, S_local, Hk, D] (S_local of q: the same positions)")
        C.shape("v", v, (B, S, Hk, D), "[B, S_local, Hk, D] (the shape of k)")
        C.gqa("q", Hq, "k", Hk)
        opts["scale"], (opts["wl"], opts["wr"]), opts["cap"] = _check_options(
            causal, softmax_scale, window_size, softcap, return_lse, D)
        _check_layout(layout)
        _check_backend(group, q.device)
        return S, (B, Hq, Hk, D, _dtype_code(q.dtype), q.device.type == "cuda", causal,
                   opts["wl"], opts["wr"], opts["scale"], opts["cap"], _LAYOUTS.index(layout))

    lengths = [int(row[0]) for row in _agree(group, check)]
    B, S, Hq, D = q.shape
    Hk = k.shape[2]
    scale, wl, wr, cap = opts["scale"], opts["wl"], opts["wr"], opts["cap"]
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    total = sum(lengths)
    for r, n in enumerate(lengths):
        want = sum(length for _, length in _segments(total, world, r, layout))
        if n != want:
            raise ValueError(f"q: rank {r} holds {n} positions, but the {layout} layout of "
                             f"{total} positions over {world} ranks gives it {want}")
    q_segs = _segments(total, world, rank, layout)
    acc = torch.zeros(B, S, Hq, D, dtype=torch.float32, device=q.device)
    acc_lse = torch.full((B, S, Hq), float("-inf"), dtype=torch.float32, device=q.device)

    def compute(kv: torch.Tensor, src: int) -> None:
        q_off = 0
        for q0, qn in q_segs:
            k_off = 0
            for k0, kn in _segments(total, world, src, layout):
                for qs, qe, ke, blk_causal, left in _block_calls(qn, kn, q0, k0, causal, wl, wr):
                    a, b = q_off + qs, q_off + qe
                    out, lse = _ops.attention(q[:, a:b], kv[0][:, k_off:k_off + ke],
                                              kv[1][:, k_off:k_off + ke], None, scale,
                                              blk_causal, left, -1, cap)
                    _merge_into(acc[:, a:b], acc_lse[:, a:b], out, lse)
                k_off += kn
            q_off += qn

    _ring(torch.stack([k, v]), lambda src: (B, lengths[src], Hk, D), group, compute)
    return _result(acc.to(q.dtype), acc_lse, return_lse)


def ring_attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          cu_seqlens: torch.Tensor, *, group=None, causal: bool = True,
                          softmax_scale: Optional[float] = None, window_size=(-1, -1),
                          softcap: float = 0.0, layout: str = "zigzag",
                          return_lse: bool = False) -> Out:
    """ring_attention over packed sequences: q [T_local, Hq, D]; k, v [T_local, Hk, D];
    cu_seqlens int32 [B + 1] (this rank's: its shard of sequence b is rows
    cu_seqlens[b]:cu_seqlens[b+1]). Reads cu_seqlens on the host, and all-gathers every rank's
    lengths after the argument check. Returns out
    [T_local, Hq, D] (and lse [T_local, Hq])."""
    opts = {}

    def check():
        _check_qkv(q, k, v, "[T_local, Hq, D]", "[T_local, Hk, D]", 3)
        T, Hq, D = q.shape
        Hk = k.shape[1]
        C.shape("k", k, (T, Hk, D), "[T_local, Hk, D] (T_local of q: the same positions)")
        C.shape("v", v, (T, Hk, D), "[T_local, Hk, D] (the shape of k)")
        C.gqa("q", Hq, "k", Hk)
        C.tensor("cu_seqlens", cu_seqlens, 1, "[B + 1]")
        if cu_seqlens.dtype != torch.int32:
            raise TypeError(f"cu_seqlens: expected dtype int32, got "
                            f"{C.dtype_str(cu_seqlens.dtype)}")
        opts["scale"], (opts["wl"], opts["wr"]), opts["cap"] = _check_options(
            causal, softmax_scale, window_size, softcap, return_lse, D)
        _check_layout(layout)
        _check_backend(group, q.device)
        bounds = cu_seqlens.tolist()
        if len(bounds) < 1 or bounds[0] != 0 or bounds[-1] != T or any(
                b1 < b0 for b0, b1 in zip(bounds, bounds[1:])):
            raise ValueError(f"cu_seqlens: expected non-decreasing values from 0 to T_local = "
                             f"{T}, got {bounds}")
        opts["bounds"] = bounds
        return T, (len(bounds) - 1, Hq, Hk, D, _dtype_code(q.dtype), q.device.type == "cuda",
                   causal, opts["wl"], opts["wr"], opts["scale"], opts["cap"],
                   _LAYOUTS.index(layout))

    _agree(group, check)
    T, Hq, D = q.shape
    Hk = k.shape[1]
    scale, wl, wr, cap, bounds = (opts[n] for n in ("scale", "wl", "wr", "cap", "bounds"))
    nseq = len(bounds) - 1
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    local = torch.tensor([b1 - b0 for b0, b1 in zip(bounds, bounds[1:])], dtype=torch.float64,
                         device=_collective_device(group))
    every = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(every, local, group=group)
    lens = [[int(x) for x in e.tolist()] for e in every]  # lens[r][b]
    totals = [sum(lens[r][b] for r in range(world)) for b in range(nseq)]
    offsets = [[0] * (nseq + 1) for _ in range(world)]
    for r in range(world):
        for b in range(nseq):
            offsets[r][b + 1] = offsets[r][b] + lens[r][b]
        for b in range(nseq):
            want = sum(n for _, n in _segments(totals[b], world, r, layout))
            if lens[r][b] != want:
                raise ValueError(f"cu_seqlens: rank {r} holds {lens[r][b]} positions of sequence "
                                 f"{b}, but the {layout} layout of {totals[b]} positions over "
                                 f"{world} ranks gives it {want}")
    acc = torch.zeros(T, Hq, D, dtype=torch.float32, device=q.device)
    acc_lse = torch.full((T, Hq), float("-inf"), dtype=torch.float32, device=q.device)

    def compute(kv: torch.Tensor, src: int) -> None:
        # Sequence by sequence, block pair by block pair; each call is the dense op on one
        # sequence's rows (a batch of one).
        for b in range(nseq):
            q_off = bounds[b]
            for q0, qn in _segments(totals[b], world, rank, layout):
                k_off = offsets[src][b]
                for k0, kn in _segments(totals[b], world, src, layout):
                    for qs, qe, ke, blk_causal, left in _block_calls(qn, kn, q0, k0, causal,
                                                                     wl, wr):
                        a, e = q_off + qs, q_off + qe
                        out, lse = _ops.attention(q[None, a:e], kv[0][None, k_off:k_off + ke],
                                                  kv[1][None, k_off:k_off + ke], None, scale,
                                                  blk_causal, left, -1, cap)
                        _merge_into(acc[a:e], acc_lse[a:e], out[0], lse[0])
                    k_off += kn
                q_off += qn

    _ring(torch.stack([k, v]), lambda src: (offsets[src][-1], Hk, D), group, compute)
    return _result(acc.to(q.dtype), acc_lse, return_lse)


# ---------------------------------------------------------------------------------------
# sharded_paged_attention
# ---------------------------------------------------------------------------------------

def _early_keys(q, k_cache, v_cache, block_table, seq_lens, holds_tail, cu_seqlens_q,
                max_seqlen_q, softmax_scale, softcap):
    """(out, lse) of the query tokens against this rank's keys of the sequences whose tail
    another rank holds: they all precede the query tokens, so all are visible. Their lengths
    and block-table entries are checked here (the paged op saw them as 0)."""
    early = torch.where(holds_tail, 0, seq_lens)
    P, page_size = k_cache.shape[:2]
    width = block_table.shape[1] * page_size
    lens = early.tolist()
    for b, n in enumerate(lens):
        if not 0 <= n <= width:
            raise ValueError(f"seq_lens: seq_lens[{b}] = {n} is outside [0, max_pages * page_size "
                             f"= {width}]")
        pages = block_table[b, :(n + page_size - 1) // page_size]
        bad = ((pages < 0) | (pages >= P)).nonzero()
        if bad.numel():
            col = int(bad[0, 0])
            raise ValueError(f"block_table: block_table[{b}, {col}] = {int(pages[col])} is "
                             f"outside [0, num_pages = {P}) and is used by seq_lens[{b}] = {n}")
    total = sum(lens)
    if total == 0:
        return (torch.zeros(q.shape, dtype=q.dtype, device=q.device),
                torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device))
    if k_cache.dtype in C.FP8_DTYPES:
        raise NotImplementedError("k_cache: fp8 caches in sharded extend are supported only on "
                                  "the rank holding a sequence's tail so far (sharded decode "
                                  "takes them everywhere)")
    cu_k = torch.zeros(early.shape[0] + 1, dtype=torch.int32, device=q.device)
    cu_k[1:] = early.cumsum(0)
    k = _gather_pages(k_cache, block_table, early, total)
    v = _gather_pages(v_cache, block_table, early, total)
    max_q = q.shape[0] if max_seqlen_q is None else max_seqlen_q
    return attention_varlen(q, k, v, cu_seqlens_q, cu_k, max_q, max(lens), causal=False,
                            softmax_scale=softmax_scale, softcap=softcap, return_lse=True)


def _gather_pages(cache: torch.Tensor, block_table: torch.Tensor, lens: torch.Tensor,
                  total: int) -> torch.Tensor:
    """The first lens[b] keys of each sequence, packed [total, Hk, D] (total = lens.sum())."""
    P, page_size = cache.shape[:2]
    width = block_table.shape[1] * page_size
    pos = torch.arange(width, device=cache.device)
    keep = pos[None, :] < lens[:, None].to(pos.dtype)
    pages = block_table.long()[:, pos // page_size]
    slots = (pages * page_size + pos % page_size)[keep]
    return cache.reshape(P * page_size, *cache.shape[2:]).index_select(0, slots[:total])


def sharded_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_table: torch.Tensor, seq_lens: torch.Tensor, *, group=None,
                            cu_seqlens_q: Optional[torch.Tensor] = None,
                            max_seqlen_q: Optional[int] = None,
                            holds_tail: Optional[torch.Tensor] = None, causal: bool = True,
                            softmax_scale: Optional[float] = None, window_size=(-1, -1),
                            softcap: float = 0.0, return_lse: bool = False,
                            k_scale=None, v_scale=None) -> Out:
    """paged_attention over a cache whose keys are spread across the ranks of `group`: this
    rank's caches, block table and seq_lens (the keys it holds of each sequence), the same
    q on every rank. Decode without cu_seqlens_q; extend with cu_seqlens_q and holds_tail
    (bool [B]: which sequences' last positions, the query tokens' own keys among them, this
    rank holds). Every rank returns the full result. See the module docstring."""
    world = dist.get_world_size(group)
    extend = cu_seqlens_q is not None
    split = extend and causal  # tail sequences masked causally, the others all visible
    partial = {}

    def check():
        if tuple(window_size) != (-1, -1) and world > 1:
            raise NotImplementedError("window_size: a sliding window needs each rank's absolute "
                                      "key positions, which sharded_paged_attention does not "
                                      "take; use (-1, -1)")
        lens = seq_lens
        if split:
            if holds_tail is None:
                raise ValueError("holds_tail: extend (cu_seqlens_q given) with causal=True needs "
                                 "holds_tail, bool [B]: which sequences' last positions this "
                                 "rank holds")
            C.tensor("block_table", block_table, 2, "[B, max_pages]")
            C.index_tensor("holds_tail", holds_tail, torch.bool, (block_table.shape[0],),
                           "[B] (B = block_table.shape[0])", q)
            lens = torch.where(holds_tail, seq_lens, 0)
        # The single-device op checks every tensor and computes this rank's partial; the
        # whole local computation runs here, before the agreement gather, so that an error
        # in it reaches every rank.
        out, lse = paged_attention(
            q, k_cache, v_cache, block_table, lens, cu_seqlens_q=cu_seqlens_q,
            max_seqlen_q=max_seqlen_q, causal=causal, softmax_scale=softmax_scale,
            window_size=window_size, softcap=softcap, return_lse=True, k_scale=k_scale,
            v_scale=v_scale)
        acc, acc_lse = out.float(), lse.clone()
        if split:
            _merge_into(acc, acc_lse, *_early_keys(q, k_cache, v_cache, block_table, seq_lens,
                                                   holds_tail, cu_seqlens_q, max_seqlen_q,
                                                   softmax_scale, softcap))
        partial["acc"], partial["lse"] = acc, acc_lse
        _check_backend(group, q.device)
        scale = C.softmax_scale(softmax_scale, q.shape[-1])
        return 0, (block_table.shape[0], q.shape[-2], k_cache.shape[2], q.shape[-1],
                   _dtype_code(q.dtype), q.device.type == "cuda", causal, -1, -1, scale,
                   float(softcap), 0, q.shape[0])

    # holds_tail travels with the agreement gather: exactly one rank must hold the tail of
    # each sequence that has query tokens (none, or two, would mask the query tokens' own
    # keys wrongly, silently). Its length is B everywhere or the shapes disagree anyway.
    tails = None
    if split:
        B = block_table.shape[0] if isinstance(block_table, torch.Tensor) else 0
        ok = isinstance(holds_tail, torch.Tensor) and tuple(holds_tail.shape) == (B,)
        tails = holds_tail.tolist() if ok else [0] * B
    rows = _agree(group, check, tails)
    if split:
        bounds = cu_seqlens_q.tolist()
        q_lens = [e - a for a, e in zip(bounds, bounds[1:])]
        owners = [sum(int(row[1 + b]) for row in rows) for b in range(len(q_lens))]
        wrong = [b for b, n in enumerate(q_lens) if n > 0 and owners[b] != 1]
        if wrong:
            raise ValueError(f"holds_tail: sequence(s) {wrong} have query tokens but "
                             f"{[owners[b] for b in wrong]} ranks hold their tails; exactly one "
                             f"rank must (the one holding the query tokens' own keys)")
    acc, acc_lse = partial["acc"], partial["lse"]
    # Every rank's partial (out widened to fp32, and lse) in one all-gather, merged in fp32.
    mine = torch.cat([acc, acc_lse.unsqueeze(-1)], dim=-1)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    res = torch.zeros_like(acc)
    res_lse = torch.full_like(acc_lse, float("-inf"))
    for part in every:
        _merge_into(res, res_lse, part[..., :-1], part[..., -1])
    return _result(res.to(q.dtype), res_lse, return_lse)
