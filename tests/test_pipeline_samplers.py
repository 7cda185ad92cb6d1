"""TrainSampler and eval_rows: seeded per-epoch permutations, ranks sharing a global batch, wrapping
sets smaller than a batch, exact and elastic resume, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from remixmatch.pipeline import PipelineError, TrainSampler, eval_rows, rank_slice

ROWS = np.arange(100, 160, dtype=np.int64)[::-1].copy()  # 60 row ids, not 0..n-1, not sorted


def take(sampler: TrainSampler, steps: int) -> list[np.ndarray]:
    return [sampler.next() for _ in range(steps)]


def test_deterministic_for_a_seed_and_seeds_differ():
    a = np.concatenate(take(TrainSampler(ROWS, 10, seed=5, stream=1), 12))
    b = np.concatenate(take(TrainSampler(ROWS, 10, seed=5, stream=1), 12))
    c = np.concatenate(take(TrainSampler(ROWS, 10, seed=6, stream=1), 12))
    d = np.concatenate(take(TrainSampler(ROWS, 10, seed=5, stream=2), 12))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, d)  # the labeled and unlabeled streams are independent


def test_epochs_are_reshuffled_permutations():
    sampler = TrainSampler(ROWS, 12, seed=0, stream=1)
    stream = np.concatenate(take(sampler, 15))  # 180 positions = 3 epochs of 60
    epochs = stream.reshape(3, 60)
    for e in epochs:
        assert sorted(e.tolist()) == sorted(ROWS.tolist())
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.sort(epochs[0])) and not np.array_equal(epochs[0], ROWS)
    assert sampler.position == 180 and sampler.epoch == 3.0


def test_batch_not_dividing_the_epoch_crosses_epochs():
    sampler = TrainSampler(ROWS, 16, seed=1, stream=1)
    stream = np.concatenate(take(sampler, 15))  # 240 positions = 4 epochs
    for e in stream.reshape(4, 60):
        assert sorted(e.tolist()) == sorted(ROWS.tolist())
    np.testing.assert_array_equal(stream, TrainSampler(ROWS, 16, 1, 1).global_rows(0, 240))


def test_two_ranks_share_each_global_batch():
    ranks = [TrainSampler(ROWS, 12, seed=3, stream=1, rank=r, world_size=2) for r in range(2)]
    single = TrainSampler(ROWS, 12, seed=3, stream=1)
    seen = []
    for _ in range(5):  # one epoch
        parts = [s.next() for s in ranks]
        assert len(parts[0]) == len(parts[1]) == 6
        assert not set(parts[0].tolist()) & set(parts[1].tolist())
        np.testing.assert_array_equal(np.concatenate(parts), single.next())
        seen += [*parts[0], *parts[1]]
    assert sorted(seen) == sorted(ROWS.tolist())


def test_four_ranks():
    ranks = [TrainSampler(ROWS, 20, seed=3, stream=1, rank=r, world_size=4) for r in range(4)]
    seen = [row for _ in range(3) for s in ranks for row in s.next()]
    assert sorted(seen) == sorted(ROWS.tolist())


def test_small_set_wraps_into_next_epochs():
    rows = np.array([7, 3, 9, 5])
    sampler = TrainSampler(rows, 10, seed=2, stream=1)
    for step in range(6):
        batch = sampler.next()
        assert len(batch) == 10
        counts = np.bincount(batch, minlength=10)[rows]
        assert set(counts.tolist()) <= {2, 3} and counts.sum() == 10
        assert set(batch.tolist()) == set(rows.tolist())
        # positions 10 step .. 10 step + 9 lie in consecutive epochs of 4, each a permutation
        start = 10 * step
        epochs = {}
        for i, row in enumerate(batch):
            epochs.setdefault((start + i) // 4, []).append(int(row))
        for e, members in epochs.items():
            assert len(set(members)) == len(members)  # no row twice within one epoch
            full = sampler.epoch_order(e)
            assert sorted(full.tolist()) == sorted(rows.tolist())
            np.testing.assert_array_equal(members, full[[(p % 4) for p in range(start, start + 10) if p // 4 == e]])
    orders = {tuple(sampler.epoch_order(e).tolist()) for e in range(15)}
    assert len(orders) > 5  # epochs are reshuffled, not one order repeated


def test_single_row_set():
    sampler = TrainSampler(np.array([42]), 3, seed=0, stream=1)
    np.testing.assert_array_equal(sampler.next(), [42, 42, 42])


@pytest.mark.parametrize("world", [1, 2])
def test_resume_mid_epoch(world):
    first = [TrainSampler(ROWS, 8, seed=4, stream=2, rank=r, world_size=world) for r in range(world)]
    for s in first:
        take(s, 3)  # 24 of 60: mid-epoch
    states = [copy.deepcopy(s.state_dict()) for s in first]
    expected = [take(s, 10) for s in first]
    for r in range(world):
        resumed = TrainSampler(ROWS, 8, seed=4, stream=2, rank=r, world_size=world)
        resumed.load_state_dict(states[r])
        for a, b in zip(take(resumed, 10), expected[r]):
            np.testing.assert_array_equal(a, b)


def test_elastic_resume_two_ranks_to_one():
    ranks = [TrainSampler(ROWS, 8, seed=4, stream=1, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        take(s, 5)  # 40 of 60 positions
    state = copy.deepcopy(ranks[0].state_dict())
    assert state == ranks[1].state_dict()  # positions are global: every rank saves the same
    one = TrainSampler(ROWS, 8, seed=4, stream=1, rank=0, world_size=1)
    one.load_state_dict(state)
    for _ in range(6):
        union = np.concatenate([s.next() for s in ranks])
        np.testing.assert_array_equal(one.next(), union)


def test_elastic_resume_one_rank_to_two():
    one = TrainSampler(ROWS, 8, seed=4, stream=1)
    take(one, 4)
    state = one.state_dict()
    ranks = [TrainSampler(ROWS, 8, seed=4, stream=1, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.load_state_dict(state)
    for _ in range(5):
        np.testing.assert_array_equal(np.concatenate([s.next() for s in ranks]), one.next())


def test_resume_refuses_another_stream():
    state = TrainSampler(ROWS, 8, seed=4, stream=1).state_dict()
    for kwargs in (dict(seed=5, stream=1), dict(seed=4, stream=2)):
        with pytest.raises(PipelineError):
            TrainSampler(ROWS, 8, **kwargs).load_state_dict(state)
    with pytest.raises(PipelineError, match="rows"):
        TrainSampler(ROWS[:30], 8, seed=4, stream=1).load_state_dict(state)


@pytest.mark.parametrize("rows, batch, rank, world, match", [
    (ROWS, 0, 0, 1, "at least 1"),
    (ROWS, -3, 0, 1, "at least 1"),
    (np.zeros(0, np.int64), 4, 0, 1, "empty"),
    (np.zeros((2, 3), np.int64), 4, 0, 1, "empty"),
    (ROWS, 9, 0, 2, "does not split"),
    (ROWS, 8, 2, 2, "rank 2"),
    (ROWS, 8, -1, 2, "rank -1"),
    (ROWS, 8, 0, 0, "rank 0"),
])
def test_bad_input(rows, batch, rank, world, match):
    with pytest.raises(PipelineError, match=match):
        TrainSampler(rows, batch, seed=0, stream=1, rank=rank, world_size=world)


def test_rank_slice():
    assert rank_slice(12, 0, 3) == slice(0, 4) and rank_slice(12, 2, 3) == slice(8, 12)
    with pytest.raises(PipelineError):
        rank_slice(10, 0, 3)


@pytest.mark.parametrize("n, world", [(23, 1), (23, 2), (23, 4), (3, 4), (24, 3)])
def test_eval_rows_cover_every_row_once(n, world):
    rows = np.arange(1000, 1000 + n)
    shares = [eval_rows(rows, r, world) for r in range(world)]
    np.testing.assert_array_equal(np.concatenate(shares), rows)  # contiguous, in order, once
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1
    assert all(s.dtype == np.int64 for s in shares)
    if n == 23 and world == 2:
        assert sizes == [12, 11]  # the last, partial share is kept
