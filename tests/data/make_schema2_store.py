"""How tests/data/schema2_store was made: run with the schema-2 code (commit 9b80a38) from the repo root; kept to show the recipe."""
import sys, shutil
sys.path.insert(0, "tests")
from storage_fixtures import make_batch, make_keys, STORAGE_ATTRS
from unihope.storage.writer import write_shard, finalize
from unihope.config import StorageConfig
out = "tests/data/schema2_store"
shutil.rmtree(out, ignore_errors=True)
keys = make_keys(1, 3)
annotated, results = make_batch(keys, crop_size_px=16)
write_shard(out, 0, annotated, results, STORAGE_ATTRS, StorageConfig(shard_size=3))
finalize(out, STORAGE_ATTRS, [])
