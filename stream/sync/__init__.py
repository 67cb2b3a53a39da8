"""One model across shards: item-state deltas, their format, merge rules and dedupe.

User state stays with the user's shard (partition of the events topic); item state
(popularity counts, co-occurrence rows and norms, item factors, biases, global mean) is
shared: each shard collects what it changed (:func:`ShardSync.collect_one`, the models'
``item_delta``) every ``STREAM_MODEL_SYNC_EVENTS`` events and every other shard adds it
(:func:`ShardSync.apply_one`, the models' ``apply_item_delta``), dropping a delta it already
applied (same source partition, source offsets not past the last one applied). The offline
sharded evaluation (``stream evaluate --partitions``) drives this same code.
"""

from stream.sync.delta import DeltaError, ShardDelta
from stream.sync.shard import ShardSync, SyncState, shared_models

__all__ = ["DeltaError", "ShardDelta", "ShardSync", "SyncState", "shared_models"]
