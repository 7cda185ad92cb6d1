"""Index streams: which rows each rank reads at each step.

A training stream is the endless concatenation of epochs, each a fresh permutation of the rows
seeded by (seed, stream, epoch). Positions are *global*: step t's global batch is the positions
[t G, (t + 1) G) of the stream (G = the global batch), and rank r of W reads the r-th contiguous
slice of it. So the ranks of a step never overlap, together they read an epoch exactly once, and
a saved position resumes on any number of ranks (elastic resume).

A set smaller than the batch simply wraps into the next epoch within one batch, as the
reference's infinite shuffled stream does: every row then appears once or more per batch, each
epoch reshuffled.
"""

from __future__ import annotations

import numpy as np

from .errors import PipelineError

# Stream ids keep the labeled and unlabeled permutations independent for the same seed.
LABELED_STREAM = 1
UNLABELED_STREAM = 2


def rank_slice(global_size: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of a global batch; the batch must divide evenly."""
    if global_size % world_size:
        raise PipelineError(f"a global batch of {global_size} does not split over {world_size} ranks")
    local = global_size // world_size
    return slice(rank * local, (rank + 1) * local)


class TrainSampler:
    """An endless, seeded, per-epoch reshuffled stream of ``rows``, read a global batch at a time."""

    def __init__(self, rows: np.ndarray, global_batch: int, seed: int, stream: int, rank: int = 0,
                 world_size: int = 1, name: str = "rows"):
        rows = np.asarray(rows, np.int64)
        if rows.ndim != 1 or rows.size == 0:
            raise PipelineError(f"the {name} set is empty: nothing to sample")
        if global_batch < 1:
            raise PipelineError(f"the {name} batch must be at least 1, got {global_batch}")
        if not 0 <= rank < world_size:
            raise PipelineError(f"rank {rank} is outside 0..{world_size - 1}")
        self.rows = rows
        self.global_batch = int(global_batch)
        self.seed = int(seed)
        self.stream = int(stream)
        self.name = name
        self.local = rank_slice(self.global_batch, rank, world_size)
        self.position = 0  # global stream positions consumed
        self._orders: dict[int, np.ndarray] = {}

    def epoch_order(self, epoch: int) -> np.ndarray:
        order = self._orders.get(epoch)
        if order is None:
            rng = np.random.default_rng([self.seed, self.stream, epoch])
            order = self.rows[rng.permutation(self.rows.size)]
            # A batch spans at most a few epochs: keep the latest two.
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = order
        return order

    def global_rows(self, position: int, count: int) -> np.ndarray:
        """The rows at global stream positions [position, position + count)."""
        positions = np.arange(position, position + count, dtype=np.int64)
        epochs, within = np.divmod(positions, self.rows.size)
        out = np.empty(count, np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self.epoch_order(int(epoch))[within[mask]]
        return out

    def next_global(self) -> np.ndarray:
        """Every rank's rows of the next global batch; advances the position by the global batch."""
        rows = self.global_rows(self.position, self.global_batch)
        self.position += self.global_batch
        return rows

    def next(self) -> np.ndarray:
        """This rank's rows of the next global batch."""
        return self.next_global()[self.local]

    @property
    def epoch(self) -> float:
        return self.position / self.rows.size

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "stream": self.stream, "rows": self.rows.size}

    def load_state_dict(self, state: dict) -> None:
        for field, mine in (("seed", self.seed), ("stream", self.stream), ("rows", self.rows.size)):
            if state[field] != mine:
                raise PipelineError(f"{self.name} sampler state has {field}={state[field]}, this sampler {mine}")
        self.position = int(state["position"])


def eval_rows(rows: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s share of an evaluation pass: contiguous, every row on exactly one rank."""
    return np.array_split(np.asarray(rows, np.int64), world_size)[rank]
