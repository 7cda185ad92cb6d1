"""--fidelity and its choices (trainer/config.py): what the switch sets, what an explicit flag keeps,
the paper-reference preset; the reference's moving p_data; a run under --fidelity reference that
names its choices in its header, config.json and summary.json, and resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from remixmatch.pipeline import CTAugment
from remixmatch.trainer.config import ConfigError, FIDELITY_FIELDS, fidelity_choices, resolve
from remixmatch.trainer.losses import REFERENCE_P_DATA_DECAY, DistributionAlignment
from trainer_helpers import cli, latest_state, pipeline_shards, smoke_args, train, smoke_config  # noqa: F401

try:
    from test_trainer_run import assert_same_final_state
except ImportError:  # tests imported as a package
    from tests.test_trainer_run import assert_same_final_state

REFERENCE_CHOICES = {"fidelity": "reference", "cta_semantics": "reference", "bn_mode": "reference",
                     "input_scaling": "reference", "p_data": "reference", "valid": 1, "labeled_aug": "strong"}


def test_fidelity_reference_sets_every_choice_and_explicit_flags_win():
    corrected = resolve(None, [], {})
    assert fidelity_choices(corrected) == {"fidelity": "corrected", "cta_semantics": "corrected", "bn_mode": "joint",
                                           "input_scaling": "standardize", "p_data": "labeled", "valid": 5000,
                                           "labeled_aug": "strong"}
    assert fidelity_choices(resolve(None, [], {"fidelity": "reference"})) == REFERENCE_CHOICES
    assert fidelity_choices(resolve("paper-reference", [], {})) == REFERENCE_CHOICES
    # The switch overrides a preset's value (the cpu preset holds none out) ...
    assert resolve("cpu", [], {"fidelity": "reference"}).valid == 1
    # ... and an explicit flag overrides the switch.
    mixed = resolve("paper-reference", [], {"cta_semantics": "corrected", "valid": 0})
    assert (mixed.cta_semantics, mixed.valid, mixed.input_scaling) == ("corrected", 0, "reference")
    assert resolve("paper-reference", [], {"fidelity": "corrected"}).to_dict() == corrected.to_dict()
    for field, value in (("fidelity", "paper"), ("cta_semantics", "pixels"), ("input_scaling", "whiten"),
                         ("p_data", "uniform"), ("bn_mode", "chunks")):
        with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')} must be one of"):
            resolve(None, [], {field: value})
    with pytest.raises(ConfigError, match="--uratio 1"):
        resolve(None, [], {"bn_mode": "reference", "uratio": 2})


def test_moving_p_data_is_the_reference_average_and_constant_stays():
    moving = DistributionAlignment(np.full(4, 0.25), p_data_decay=REFERENCE_P_DATA_DECAY)
    constant = DistributionAlignment([0.1, 0.2, 0.3, 0.4])
    onehot = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 3]), 4).float()
    expected = np.full(4, 0.25)
    for _ in range(3):
        moving.observe_labels(onehot)
        constant.observe_labels(onehot)
        expected = 0.999 * expected + 0.001 * np.array([0.5, 0.25, 0.0, 0.25])
    np.testing.assert_allclose(moving.p_data.numpy(), expected, rtol=1e-6)
    assert constant.p_data.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    # Several ranks: the global batch's mean, as the caller's all-reduce gives it.
    halved = DistributionAlignment(np.full(4, 0.25), p_data_decay=0.5)
    halved.observe_labels(onehot, all_reduce_mean=lambda t: t * 0 + torch.tensor([1.0, 0, 0, 0]))
    assert halved.p_data.tolist() == [0.625, 0.125, 0.125, 0.125]


def test_reference_run_names_its_choices_and_resumes_exactly(pipeline_shards, tmp_path, capsys):
    straight = tmp_path / "straight"
    summary = train(smoke_config(pipeline_shards.path, fidelity="reference"), straight)
    # The smoke preset holds no image out; the switch holds one, as the published run scripts do.
    assert summary["fidelity"] == REFERENCE_CHOICES
    saved = json.loads((straight / "config.json").read_text())
    assert {k: saved[k] for k in FIDELITY_FIELDS} == REFERENCE_CHOICES
    assert json.loads((straight / "summary.json").read_text())["fidelity"] == REFERENCE_CHOICES
    assert list(summary["dataset"]["mean"]) == [0.5] * 3 and list(summary["dataset"]["std"]) == [0.5] * 3
    assert summary["labeled"]["n_valid"] == 1
    state = latest_state(straight)
    assert state["policy"]["semantics"] == "reference"
    p_data = state["distribution_alignment"]["p_data"]
    assert not torch.equal(p_data, torch.full_like(p_data, 0.1))  # moved from uniform
    assert float(p_data.sum()) == pytest.approx(1.0)

    out = tmp_path / "resumed"
    args = smoke_args(pipeline_shards.path, out, "--fidelity", "reference", quiet=False)
    rc, _, err = cli([*args, "--steps", "10"], capsys)
    assert rc == 0, err
    assert ("fidelity: fidelity reference, cta-semantics reference, bn-mode reference, input-scaling reference, "
            "p-data reference, valid 1") in err
    policy = CTAugment(semantics="reference")
    policy.load_state_dict(latest_state(out)["policy"])
    rc, _, err = cli([*args, "--steps", "20", "--resume"], capsys)
    assert rc == 0, err
    assert_same_final_state(out, straight)
    # A run of the other semantics does not resume this one.
    rc, _, err = cli([*args, "--steps", "30", "--resume", "--cta-semantics", "corrected"], capsys)
    assert rc == 2 and "cta_semantics" in err
