"""The old name of :mod:`remixmatch.bench.section_runner`, kept while gpu_check imports it from here."""
from .section_runner import Outcome, run_bounded  # noqa: F401
