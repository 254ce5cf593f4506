"""The demo's correctness checks.

- `DenseReference`: every logit row the engine samples from is recomputed by the same model
  (its float32 copy for fp16/bf16 runs) one sequence at a time, with each sequence's K/V kept
  as plain dense tensors and attention by PyTorch SDPA: no pages, no block tables, no
  batching. The largest |difference| is the run's measured logit error.
- `compare_with_transformers`: each request served alone by transformers' own `generate`
  (`attn_implementation="sdpa"`, its own cache and RoPE), greedy, with its logits. Tokens
  must match; where they diverge, the divergence must be explained by round-off: the top-2
  margin of our logits at that step must not exceed twice the measured logit error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """q [n, Hq, D] at the last n positions of k, v [S, Hk, D]; causal, bottom-right."""
    n, s = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    visible = torch.arange(s, device=q.device)[None, :] <= torch.arange(
        s - n, s, device=q.device)[:, None]
    o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                       attn_mask=visible, scale=scale)
    return o.transpose(0, 1)


class DenseReference:
    """Per-request dense K/V history and a float32 replay of the same model."""

    def __init__(self, model):
        self.model = model
        self.kv: Dict[int, list] = {}     # rid -> per layer [k [S, Hk, D], v [S, Hk, D]]

    def logits(self, rid: int, tokens: List[int], start: int) -> torch.Tensor:
        """Feeds `tokens` (positions start..) to request rid; float32 logits of the last."""
        m = self.model
        history = self.kv.setdefault(rid, [[None, None] for _ in range(m.num_layers)])
        if start != (0 if history[0][0] is None else history[0][0].shape[0]):
            raise RuntimeError(f"demo bug: request {rid} fed out of order")

        def attend(layer, q, k, v):
            kv = history[layer]
            kv[0] = k if kv[0] is None else torch.cat([kv[0], k])
            kv[1] = v if kv[1] is None else torch.cat([kv[1], v])
            return dense_attention(q, kv[0], kv[1], m.softmax_scale)

        ids = torch.tensor(tokens, device=m.device)
        positions = torch.arange(start, start + len(tokens), device=m.device)
        return m.forward(ids, positions, attend, rows=[len(tokens) - 1])[0]

    def drop(self, rid: int) -> None:
        self.kv.pop(rid, None)


def top2_margin(row: torch.Tensor) -> float:
    top = row.topk(2).values
    return float(top[0] - top[1])


@dataclass
class Agreement:
    """How one request's greedy tokens compare with transformers' generate."""
    rid: int
    tokens: int                        # tokens we generated
    matched: int                       # leading tokens identical to transformers'
    diverged: bool
    margin: Optional[float] = None     # our top-2 margin at the first divergence
    hf_logit_error: float = 0.0        # max |ours - transformers'| over the compared steps

    def explained(self, logit_error: float) -> bool:
        """A divergence is round-off when our margin there is within twice the error."""
        return not self.diverged or self.margin <= 2 * logit_error


@dataclass
class CacheComparison:
    """A run on an fp8 KV cache against the same requests on a cache of the compute dtype."""
    kv_dtype: str
    tokens_per_s: float                # the fp8 run's generated tokens per second
    max_abs_diff: float                # max |logit diff| over the rows both runs share
    agreements: List[Agreement]        # per request; margin: the baseline's top-2 margin


def compare_runs(rid: int, base: List[int], base_logits: List[torch.Tensor], other: List[int],
                 other_logits: List[torch.Tensor]) -> Agreement:
    """Greedy tokens of two runs of one request; logits compared up to and including the
    first divergence (the rows where both saw the same prefix)."""
    matched = 0
    while matched < min(len(base), len(other)) and base[matched] == other[matched]:
        matched += 1
    diverged = matched < max(len(base), len(other))
    compared = min(matched + 1, len(base), len(other))
    error = max([float((base_logits[k].float() - other_logits[k].float()).abs().max())
                 for k in range(compared)], default=0.0)
    margin = None
    if diverged:
        margin = top2_margin(base_logits[matched]) if matched < len(base) else float("inf")
    return Agreement(rid, len(other), matched, diverged, margin, error)


def compare_with_transformers(hf_model, prompt: List[int], ours: List[int],
                              our_logits: List[torch.Tensor], rid: int,
                              max_new_tokens: int) -> Agreement:
    """Greedy `generate` of transformers on this request alone, compared step by step.

    our_logits[k] is the row we sampled ours[k] from (float32, on any device)."""
    device = next(hf_model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    with torch.inference_mode():
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=max_new_tokens, output_logits=True,
                                return_dict_in_generate=True, pad_token_id=0,
                                temperature=None, top_p=None, top_k=None)
    theirs = out.sequences[0, len(prompt):].tolist()
    matched = 0
    while matched < min(len(ours), len(theirs)) and ours[matched] == theirs[matched]:
        matched += 1
    diverged = matched < max(len(ours), len(theirs))
    # Up to and including the first divergence both saw the same prefix, so the logits are
    # comparable there.
    compared = min(matched + 1, len(ours), len(out.logits))
    error = 0.0
    for k in range(compared):
        diff = (our_logits[k].float().cpu() - out.logits[k][0].float().cpu()).abs().max()
        error = max(error, float(diff))
    margin = top2_margin(our_logits[matched]) if diverged and matched < len(ours) else None
    if diverged and margin is None:  # we stopped where transformers went on: no row of ours
        margin = float("inf")
    return Agreement(rid, len(ours), matched, diverged, margin, error)
