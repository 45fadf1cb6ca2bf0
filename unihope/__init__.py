"""UniHOPE data generation: sources, grasp labels, rendered occlusion, de-occlusion, packing, training."""

__version__ = "0.1.0"

# The public Python API (unihope.api), imported on first use: `import unihope` stays cheap and changes
# nothing (no torch, no Prefect) for the CLI and the worker processes that import submodules only.
_PUBLIC_API = ("load_dataset", "open_xarray", "Dataset")
__all__ = ["__version__", *_PUBLIC_API]


def __getattr__(name: str):
    if name in _PUBLIC_API:
        from unihope import api

        return getattr(api, name)
    raise AttributeError(f"module 'unihope' has no attribute {name!r}")
