"""remixmatch.pipeline: CTAugment policy state, samplers and the loaders that turn shards into the
tensors of a ReMixMatch step.

    from remixmatch.pipeline import CTAugment, ViewConfig, StepLoader, train_data
    data = train_data(open_shards("shards/cifar10"), load_subset("labeled.json"))
    loader = StepLoader(data, CTAugment(), ViewConfig(batch=64, k=8, seed=0))
    batch = next(loader)      # StepBatch: x, x_labels, x_probe, u_weak, u_strong (K, B, H, W, 3)
"""

from .batch import StepBatch
from .errors import PipelineError
from .distributed import gather_scores, update_policy
from .loader import (
    EvalBatch, EvalLoader, HostFetcher, PlanStream, StepLoader, TrainData, make_fetcher, train_data,
)
from .plan import StepPlan, ViewConfig, WeakParams, draw_plan, kernel_call
from .policy import CTAugment, Policies, uniform_policies
from .samplers import TrainSampler, eval_rows, rank_slice

__all__ = [
    "CTAugment", "EvalBatch", "EvalLoader", "HostFetcher", "PipelineError", "Policies", "StepBatch",
    "PlanStream", "StepLoader", "StepPlan", "TrainData", "TrainSampler", "ViewConfig", "WeakParams", "draw_plan",
    "eval_rows", "gather_scores", "kernel_call", "make_fetcher", "rank_slice", "train_data", "uniform_policies",
    "update_policy",
]
