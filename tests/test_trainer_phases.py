"""The step's phase timer: laps charged to the open phase, nothing charged without a timer."""

from __future__ import annotations

import time

import pytest

from remixmatch.trainer.phases import PHASES, StepPhases


def test_laps_are_charged_to_the_phase_that_was_open():
    syncs = []
    phases = StepPhases(lambda: syncs.append(1))
    phases.begin("forward")
    time.sleep(0.02)
    phases.begin("backward")
    time.sleep(0.01)
    phases.end()
    phases.end()  # nothing open: no charge, no sync
    assert phases.seconds["forward"] >= 0.02 and 0.01 <= phases.seconds["backward"] < phases.seconds["forward"]
    assert phases.seconds["optimiser"] == 0.0 and len(syncs) == 2
    per_step = phases.per_step(2)
    assert list(per_step) == list(PHASES) and per_step["forward"] == phases.seconds["forward"] / 2


def test_an_unknown_phase_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown step phase 'fwd'.*data_wait, forward"):
        StepPhases().begin("fwd")
