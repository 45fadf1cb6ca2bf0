"""Datasets on disk, installed as `unihope.storage`: the record schema, shard writer, manifests, versions and reader."""
