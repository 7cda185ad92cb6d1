"""The training forward of ``--bn-mode``: one concatenated forward (``joint``), or the reference's
interleaved chunks (``reference``).

The reference (``remixmatch_no_cta.py``) runs the mixed batch - labeled, weak, strong views 1..K,
B rows each - through the model as K + 2 chunks of B rows, built by its ``interleave``: each block is
cut into K + 2 groups of consecutive rows (B // (K + 2) each, the last groups one row longer when B
does not divide), and group c of the labeled block changes places with group c of block c. Chunk c is
then block c with its group c taken from the labeled block (chunk 0: group p of every block p). Each
chunk is normalised by its own batch statistics; the logits are put back in the mixed batch's row
order by the same exchange. Strong view 1 and its rotations go through forwards of their own, and
the running statistics take only the last chunk's batch statistics (the reference keeps the update
ops of the last chunk's call alone: ``post_ops``).

All of it happens inside one call of the model (``WideResNet.forward(..., chunks=...)``), so that
DistributedDataParallel sees one forward per step. On several ranks each rank holds a contiguous
slice of every block (trainer/step.py) and runs its slice of every chunk: the rows of chunk c at the
row positions it holds. Each rank then normalises its K + 2 chunks of B / world rows by its own
statistics, as the reference's per-GPU batches are; with synchronised BN the statistics are those of
the whole chunk, and the ranks compute what one process computes.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

BN_MODES = ("joint", "reference")


def interleave_offsets(batch: int, parts: int) -> list[int]:
    """Where the reference's ``interleave`` cuts a block of ``batch`` rows into ``parts`` groups."""
    groups = [batch // parts] * parts
    for extra in range(batch - sum(groups)):
        groups[-extra - 1] += 1
    return [0, *np.cumsum(groups).tolist()]


def chunk_sources(batch: int, parts: int) -> np.ndarray:
    """(parts, batch) int: the block (0 labeled, 1 weak, 1 + i strong view i) whose row j chunk c
    holds at its row j, for a global batch of ``batch`` rows per block."""
    offsets = interleave_offsets(batch, parts)
    group = np.zeros(batch, np.int64)
    for p in range(parts):
        group[offsets[p]:offsets[p + 1]] = p
    sources = np.empty((parts, batch), np.int64)
    for c in range(parts):
        # Chunk c is block c, but where group c sits it holds the labeled block's rows; chunk 0
        # (the labeled block) received group p of block p in exchange.
        sources[c] = np.where(group == c, 0, c) if c > 0 else group
    return sources


def chunk_rows(b: int, parts: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """(parts, b) int64: the rows of this rank's local mixed batch (``parts`` blocks of ``b`` rows,
    block-major) that form its slice of each chunk, in order."""
    positions = rank * b + np.arange(b)
    sources = chunk_sources(b * world, parts)[:, positions]
    return sources * b + np.arange(b)[None, :]


def forward_chunks(model, x: torch.Tensor, sizes, update_chunk: int, with_embeds: bool):
    """``model`` on consecutive chunks of ``x`` (``sizes`` rows each), each normalised by its own
    batch statistics; only chunk ``update_chunk`` updates the running statistics."""
    from .step import frozen_bn_statistics

    logits, embeds = [], []
    for index, part in enumerate(torch.split(x, list(sizes))):
        frozen = contextlib.nullcontext() if index == update_chunk else frozen_bn_statistics(model)
        with frozen:
            out_logits, out_embeds = model(part, with_embeds=True)
        logits.append(out_logits)
        embeds.append(out_embeds)
    logits, embeds = torch.cat(logits), torch.cat(embeds)
    return (logits, embeds) if with_embeds else logits


def training_forward(model, mixed: torch.Tensor, extra: list, b: int, k: int, bn_mode: str,
                     rank: int = 0, world: int = 1):
    """(logits, embeds) of ``cat([mixed, *extra])`` in that row order: ``mixed`` is this rank's
    mixed batch (K + 2 blocks of ``b`` rows), ``extra`` strong view 1 and its rotations."""
    if bn_mode == "joint":
        return model(torch.cat([mixed, *extra]), with_embeds=True)
    if bn_mode != "reference":
        raise ValueError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
    parts = k + 2
    if mixed.shape[0] != parts * b:
        raise ValueError(f"--bn-mode reference needs K + 2 blocks of {b} rows (unlabeled batch = labeled "
                         f"batch), got {mixed.shape[0]} mixed rows")
    order = torch.as_tensor(chunk_rows(b, parts, rank, world).reshape(-1), device=mixed.device)
    sizes = [b] * parts + [e.shape[0] for e in extra]
    logits, embeds = model(torch.cat([mixed[order], *extra]), with_embeds=True, chunks=sizes,
                           update_chunk=parts - 1)
    n = mixed.shape[0]
    back = torch.empty_like(order)
    back[order] = torch.arange(n, device=order.device)
    return torch.cat([logits[:n][back], logits[n:]]), torch.cat([embeds[:n][back], embeds[n:]])
