"""remixmatch.datasets_prep: source archives -> Arrow shard directories, and reading them back.

    from remixmatch.datasets_prep import open_shards
    ds = open_shards("shards/cifar10")
    train = ds["train"]
    x = train.images([3, 1, 4])          # (3, 32, 32, 3) uint8
    y = train.labels                     # int16, -1 = no label

See format.py for the on-disk layout, and subsets.py for labeled subsets.
"""

from .errors import PrepError, ShardError, VerifyError
from .format import FORMAT_VERSION, DatasetBuilder, DatasetInfo
from .reader import ShardSet, Split, open_shards

__all__ = [
    "FORMAT_VERSION",
    "DatasetBuilder",
    "DatasetInfo",
    "PrepError",
    "ShardError",
    "ShardSet",
    "Split",
    "VerifyError",
    "open_shards",
]
