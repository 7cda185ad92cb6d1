"""One error family per layer, all under RemixMatchError, each keeping its historical builtin base;
the exit status each kind means."""

from __future__ import annotations

import pickle

import pytest

from remixmatch.bench.aug import AugInputError
from remixmatch.bench.errors import BenchError
from remixmatch.bench.images import ImageInputError
from remixmatch.bench.errors import BenchInputError
from remixmatch.common.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_FAILED, RemixMatchError
from remixmatch.datasets_prep import PrepError, ShardError, VerifyError
from remixmatch.kernels import AugmentInputError
from remixmatch.pipeline import PipelineError
from remixmatch.trainer.checkpoint import CheckpointError
from remixmatch.trainer.config import ConfigError
from remixmatch.trainer.errors import TrainerError
from remixmatch.trainer.run import Diverged, RunError

FAMILIES = {
    PrepError: (ShardError, VerifyError),
    PipelineError: (),
    AugmentInputError: (),
    TrainerError: (ConfigError, CheckpointError, RunError, Diverged),
    BenchError: (ImageInputError, AugInputError, BenchInputError),
}
BUILTIN_BASES = {
    PipelineError: ValueError, AugmentInputError: ValueError, ConfigError: ValueError,
    CheckpointError: RuntimeError, RunError: RuntimeError, BenchError: ValueError,
}


@pytest.mark.parametrize("base", FAMILIES)
def test_every_layer_has_one_family_under_the_base(base):
    assert issubclass(base, RemixMatchError)
    for member in FAMILIES[base]:
        assert issubclass(member, base)


@pytest.mark.parametrize("cls, builtin", BUILTIN_BASES.items())
def test_historical_builtin_bases_are_kept(cls, builtin):
    with pytest.raises(builtin):
        raise cls("x")


def test_messages_are_one_line_whatever_the_caller_passed():
    for cls in (RemixMatchError, PrepError, PipelineError, ConfigError, Diverged, BenchInputError):
        error = cls("bad value\n  at  line 3\t(see log)\n")
        assert str(error) == "bad value at line 3 (see log)"
        assert str(pickle.loads(pickle.dumps(error))) == str(error), "crosses process boundaries intact"


def test_exit_codes_bad_input_unless_the_kind_says_otherwise():
    assert RemixMatchError.exit_code == PrepError.exit_code == ConfigError.exit_code == EXIT_BAD_INPUT == 2
    assert VerifyError.exit_code == EXIT_FAILED == 1
    assert Diverged.exit_code == EXIT_DIVERGED == 3
    assert RunError.exit_code == EXIT_BAD_INPUT
