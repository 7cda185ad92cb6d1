"""Where a training step's time goes: seconds per phase, summed over the steps it watched.

The step and the loop mark where each phase begins (``state.begin_phase(name)``); a run leaves
``state.phases`` None and each mark does nothing. ``rmm-bench train`` attaches a :class:`StepPhases` for a few
extra steps after its timed repetitions. On a GPU the device is synchronised at every boundary so that
each phase is charged its own kernels (which serialises the step: the split is measured apart from
the throughput figures, never inside them).
"""

from __future__ import annotations

import time

# In step order. data_wait: next(loader); forward: label guess, MixUp and the forward of everything
# that trains, with the losses; backward: total.backward(); optimiser: Adam, decoupled weight decay,
# the EMA of the weights and the distribution-alignment history; cta_update: the EMA model scoring
# the probe views, the policy update with those scores, and drawing the next step's plan.
PHASES = ("data_wait", "forward", "backward", "optimiser", "cta_update")


class StepPhases:
    """A lap timer: ``begin(name)`` charges the time since the last boundary to the open phase and
    opens ``name``; ``end()`` closes the open phase."""

    def __init__(self, synchronize=None):
        self.synchronize = synchronize or (lambda: None)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._open: str | None = None
        self._since = 0.0

    def begin(self, name: str) -> None:
        if name not in self.seconds:
            raise KeyError(f"unknown step phase {name!r}; phases: {', '.join(PHASES)}")
        self.end()
        self._open, self._since = name, time.perf_counter()

    def end(self) -> None:
        if self._open is not None:
            self.synchronize()
            self.seconds[self._open] += time.perf_counter() - self._since
            self._open = None

    def per_step(self, steps: int) -> dict[str, float]:
        return {name: seconds / steps for name, seconds in self.seconds.items()}


__all__ = ["PHASES", "StepPhases"]
