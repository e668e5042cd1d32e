"""Streaming data for many nodes: ``ssal.data.shards`` under the name configs and checkpoints
have always used (``ssal.shards.ShardDataModule``)."""

from ssal.data.shards import ShardDataModule, convert_to_shards, read_meta

__all__ = ["ShardDataModule", "convert_to_shards", "read_meta"]
