"""UniHOPE data generation: sources, grasp labels, rendered occlusion, de-occlusion, packing, training."""

from pathlib import Path as _Path

__version__ = "0.1.0"

# unihope.storage, .tasks, .flows, .model and the shipped configs are symlinks to top-level folders. A
# checkout without symlink support (git's core.symlinks false, e.g. on Windows) writes each as a small
# text file, and every import below would fail later with a misleading "No module named" error; stop here.
LINKED_FOLDERS = ("configs", "flows", "model", "storage", "tasks")
_unlinked = [name for name in LINKED_FOLDERS if (_Path(__file__).parent / name).is_file()]
if _unlinked:
    raise ImportError(
        f"this checkout has no symlinks: {', '.join('unihope/' + n for n in _unlinked)} are plain files "
        f"(git core.symlinks=false), not links to the top-level folders; run `git config core.symlinks true "
        f"&& git checkout -- unihope` in the clone (or clone with `git clone -c core.symlinks=true`)"
    )

# The public Python API (unihope.api), imported on first use: `import unihope` stays cheap and changes
# nothing (no torch, no Prefect) for the CLI and the worker processes that import submodules only.
_PUBLIC_API = ("load_dataset", "open_xarray", "Dataset")
__all__ = ["__version__", *_PUBLIC_API]


def __getattr__(name: str):
    if name in _PUBLIC_API:
        from unihope import api

        return getattr(api, name)
    raise AttributeError(f"module 'unihope' has no attribute {name!r}")
