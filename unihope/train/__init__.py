"""Training and evaluation of the UniHOPE model from the Zarr shards, one module per job.

`spec` (config -> model), `batch` (a batch -> inputs and targets, its loss), `stats` (training-set
statistics), `checkpoints`, `loop` (the training loop), `evaluate`, `plots`, `data` (a split of the
shards) and `run` (the entry points the CLI and the train flow call).
"""
