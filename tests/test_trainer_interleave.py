"""--bn-mode reference (trainer/interleave.py): the reference's interleaved chunks, built here by hand
for B = 4, K = 2 and checked against the step's; each chunk normalised by its own statistics and
only the last one updating the running statistics; the ranks' slices of the chunks; and a 2-process
gloo run under reference BN against one process."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pipeline_helpers import spawn_ranks
from remixmatch.trainer import interleave
from remixmatch.trainer import step as step_core
from remixmatch.trainer.algorithms import remixmatch as step_module
from remixmatch.trainer.interleave import chunk_rows, interleave_offsets, training_forward
from remixmatch.trainer.model import WideResNet

try:
    from test_trainer_invariance import CONFIG, WORLD, global_batch, make_state, train
except ImportError:  # tests imported as a package
    from tests.test_trainer_invariance import CONFIG, WORLD, global_batch, make_state, train

REFERENCE_BN = CONFIG.replace(bn_mode="reference")
TIMEOUT_S = 90


def hand_chunks_b4_k2() -> list[list[int]]:
    """The reference's interleave for B = 4, K = 2, written out: blocks x (rows 0-3), weak (4-7),
    strong 1 (8-11), strong 2 (12-15), each cut into 4 groups of one row; group c of x changes
    places with group c of block c."""
    x, weak, s1, s2 = ([4 * block + j for j in range(4)] for block in range(4))
    return [
        [x[0], weak[1], s1[2], s2[3]],  # x, having received weak's group 1, s1's group 2, s2's group 3
        [weak[0], x[1], weak[2], weak[3]],
        [s1[0], s1[1], x[2], s1[3]],
        [s2[0], s2[1], s2[2], x[3]],
    ]


def test_chunk_rows_are_the_reference_interleave():
    assert chunk_rows(4, 4).tolist() == hand_chunks_b4_k2()
    # Uneven groups: the last groups take the remainder, as the reference's interleave_offsets.
    assert interleave_offsets(6, 4) == [0, 1, 2, 4, 6]
    assert chunk_rows(6, 4)[1].tolist() == [6, 1, 8, 9, 10, 11]
    for b, parts in ((4, 4), (6, 4), (7, 3), (64, 10)):
        rows = chunk_rows(b, parts)
        assert sorted(rows.ravel().tolist()) == list(range(b * parts))  # a permutation of the batch


def test_rank_slices_of_the_chunks_make_the_whole_chunks():
    whole = chunk_rows(8, 4)
    for rank in range(2):
        local = chunk_rows(4, 4, rank, 2)
        # local row (block t, row i) is global row (block t, row 4 rank + i)
        as_global = (local // 4) * 8 + 4 * rank + local % 4
        np.testing.assert_array_equal(as_global, whole[:, 4 * rank:4 * rank + 4])


def test_the_step_runs_the_hand_built_chunks(monkeypatch):
    config = CONFIG.replace(batch=4, bn_mode="reference")
    state = make_state(config)
    batch = global_batch(0)
    batch.x, batch.x_labels, batch.u_weak, batch.u_strong = (
        batch.x[:4], batch.x_labels[:4], batch.u_weak[:4], batch.u_strong[:, :4])
    seen = {}
    real_mixup, real_chunks = step_core.mixup, interleave.forward_chunks

    def spy_mixup(*args):
        seen["mixed"] = real_mixup(*args)[0].detach().clone()
        return real_mixup(*args)

    def spy_chunks(model, x, sizes, update_chunk, with_embeds):
        seen.update(x=x.detach().clone(), sizes=list(sizes), update=update_chunk)
        return real_chunks(model, x, sizes, update_chunk, with_embeds)

    monkeypatch.setattr(step_core, "mixup", spy_mixup)
    monkeypatch.setattr(interleave, "forward_chunks", spy_chunks)
    step_module.remixmatch_step(state, batch, 0)
    # 4 mixed chunks of B, then strong view 1 and its rotations on their own; the last chunk updates.
    assert seen["sizes"] == [4] * 6 and seen["update"] == 3
    hand = [row for chunk in hand_chunks_b4_k2() for row in chunk]
    torch.testing.assert_close(seen["x"][:16], seen["mixed"][hand], rtol=0, atol=0)


def test_each_chunk_has_its_own_statistics_and_only_the_last_updates():
    torch.manual_seed(0)
    model = WideResNet(4, width=8, blocks_per_stage=1, bn_momentum=0.5).train()
    b, k = 4, 2
    mixed = torch.rand((k + 2) * b, 3, 8, 8)
    extra = [torch.rand(b, 3, 8, 8), torch.rand(b, 3, 8, 8)]
    chunked = copy.deepcopy(model)
    logits, embeds = training_forward(chunked, mixed, extra, b, k, "reference")
    rows = chunk_rows(b, k + 2)
    separate = copy.deepcopy(model)
    with step_module.frozen_bn_statistics(separate):
        for c in range(k + 1):
            torch.testing.assert_close(logits[rows[c]], separate(mixed[rows[c]]), rtol=1e-6, atol=1e-6)
        for i, part in enumerate(extra):
            torch.testing.assert_close(logits[(k + 2) * b + i * b:(k + 3) * b + i * b], separate(part),
                                       rtol=1e-6, atol=1e-6)
    last = copy.deepcopy(model)
    torch.testing.assert_close(logits[rows[k + 1]], last(mixed[rows[k + 1]]), rtol=1e-6, atol=1e-6)
    for (name, got), want in zip(chunked.named_buffers(), last.buffers()):
        if "running" in name:
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    # The joint forward normalises everything together: another result.
    joint, _ = training_forward(copy.deepcopy(model), mixed, extra, b, k, "joint")
    assert (joint - logits).abs().max() > 1e-3
    assert embeds.shape == (len(logits), model.embed_dim)


# -- two ranks under reference BN ---------------------------------------------------------------------

def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        record = {"sync": train(REFERENCE_BN.replace(sync_bn=True), rank, world, ddp=True),
                  "per_rank": train(REFERENCE_BN, rank, world, ddp=True)}
        torch.save(record, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("interleave")
    spawn_ranks(worker, (WORLD, str(tmp / "store"), str(tmp)), WORLD, TIMEOUT_S)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def test_two_ranks_under_reference_bn_train_like_one_process(ranks):
    single = train(REFERENCE_BN)
    for r, record in enumerate(ranks):
        run = record["sync"]
        # The tolerance of tests/test_trainer_invariance.py, for its reason: the all-reduced gradients
        # and BN sums add in another order than one process adds them (1e-7), which Adam can turn
        # into up to ~1e-5 of a weight whose gradient is near zero.
        for part in ("model", "ema"):
            for key, value in single[part].items():
                torch.testing.assert_close(run[part][key], value, rtol=1e-4, atol=1e-4, msg=f"rank {r} {part} {key}")
        torch.testing.assert_close(run["p_model"], single["p_model"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close((ranks[0]["sync"]["losses"] + ranks[1]["sync"]["losses"]) / 2, single["losses"],
                               rtol=1e-4, atol=1e-5)
    # Per-rank statistics (each rank's half of every chunk) make another run, as the reference's
    # per-GPU batches would: the comparison above has teeth.
    per_rank = max((ranks[0]["per_rank"]["model"][k].double() - v.double()).abs().max().item()
                   for k, v in single["model"].items() if v.is_floating_point())
    assert per_rank > 1e-3
    # and reference BN is another run than joint BN
    joint = train(CONFIG)
    assert max((joint["model"][k] - v).abs().max().item() for k, v in single["model"].items()
               if v.is_floating_point()) > 1e-3
