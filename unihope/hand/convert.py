"""Read official (chumpy-based, Python 2) MANO pickles without chumpy and rewrite them as plain numpy."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

# Globals an official MANO pickle may reference; anything else is refused (pickles can run code).
# The rule is HO3D's meta unpickler's: name each (module, name) pair a MANO file needs, never a whole
# package (numpy alone holds numpy.testing's runstring and f2py/distutils helpers that run commands).
_ALLOWED_BUILTINS = {"object", "set", "frozenset", "slice", "complex", "list", "dict", "tuple", "bytearray"}
_ALLOWED_COPYREG = {"_reconstructor", "__newobj__", "__newobj_ex__"}
_NUMPY_ARRAY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 1 / numpy 2 spelling
_ALLOWED_NUMPY = {(module, name) for module in _NUMPY_ARRAY_MODULES for name in ("_reconstruct", "scalar")} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
# scipy's sparse classes, under the public path or the private module old and new pickles name
# (scipy.sparse.csc in the official Python 2 files, scipy.sparse._csc today).
_ALLOWED_SPARSE_CLASSES = {"csc_matrix", "csr_matrix", "coo_matrix"}
_SPARSE_MODULE_PATTERN = re.compile(r"scipy\.sparse(\._?(csc|csr|coo|compressed|base|data))?")
_SPARSE_ATTRS = ("data", "indices", "indptr")
CACHE_FILE_MODE = 0o644  # mkstemp creates 0600; converted models are plain readable files


class ChumpyStandIn:
    """Replaces any chumpy class while unpickling; keeps the pickled state (the array is `x`)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"unexpected chumpy object state of type {type(state).__name__}")
        self.__dict__.update(state)

    def to_numpy(self) -> np.ndarray:
        """The wrapped value as a numpy array.

        Raises:
            ValueError: if the object holds no array (a chumpy expression, not a plain Ch).
        """
        for key in ("x", "a"):
            if key in self.__dict__:
                return np.asarray(to_plain(self.__dict__[key]))
        raise ValueError(
            f"chumpy object without an array value (keys {sorted(self.__dict__)}); "
            "only plain chumpy.Ch arrays, as in the official MANO files, are supported"
        )


class _MANOUnpickler(pickle.Unpickler):
    """Maps chumpy classes to ChumpyStandIn and resolves only the numpy/scipy globals a MANO file needs.

    A chumpy class becomes a `ChumpyStandIn` that only stores its pickled state, so any chumpy
    path (chumpy.ch.Ch, chumpy.reordering.*) is safe to accept; every other global must be on
    an explicit allow-list.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module == "chumpy" or module.startswith("chumpy."):
            return ChumpyStandIn
        if module in ("copy_reg", "copyreg") and name in _ALLOWED_COPYREG:
            import copyreg

            return getattr(copyreg, name)
        if module == "_codecs" and name == "encode":  # Python 3 protocol-2 pickles wrap bytes with it
            import codecs

            return codecs.encode
        if module in ("__builtin__", "builtins") and name in _ALLOWED_BUILTINS:
            import builtins

            return getattr(builtins, name)
        if (module, name) in _ALLOWED_NUMPY:
            if module == "numpy":
                return getattr(np, name)
            from numpy._core import multiarray

            return getattr(multiarray, name)
        if name in _ALLOWED_SPARSE_CLASSES and _SPARSE_MODULE_PATTERN.fullmatch(module):
            # Old pickles name private modules (scipy.sparse.csc); the classes live on scipy.sparse.
            return getattr(scipy.sparse, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a MANO pickle: only numpy arrays, scipy sparse matrices and "
            "chumpy arrays may appear in a MANO file (a pickle naming anything else could run code)"
        )


def to_plain(value: Any) -> Any:
    """Turns chumpy stand-ins into numpy arrays and sparse matrices into fresh csc matrices."""
    if isinstance(value, ChumpyStandIn):
        return value.to_numpy()
    if scipy.sparse.issparse(value):
        # Rebuild from the raw buffers: old pickles may carry attributes current scipy no longer sets.
        state = value.__dict__
        if value.format in ("csr", "csc") and all(key in state for key in _SPARSE_ATTRS):
            shape = state.get("_shape", state.get("shape"))
            matrix_cls = scipy.sparse.csr_matrix if value.format == "csr" else scipy.sparse.csc_matrix
            value = matrix_cls((state["data"], state["indices"], state["indptr"]), shape=shape)
        return scipy.sparse.csc_matrix(value)
    if isinstance(value, np.ndarray) and value.dtype == object:
        return np.array([to_plain(item) for item in value.ravel()]).reshape(value.shape)
    return value


def load_mano_pickle(path: Path) -> dict[str, Any]:
    """Loads a MANO pickle (official chumpy-based or plain numpy) without chumpy installed.

    Args:
        path: a MANO_RIGHT.pkl / MANO_LEFT.pkl file.

    Returns:
        The pickle's dict with every chumpy array turned into a numpy array (float64 as stored).

    Raises:
        ValueError: if the file does not hold a dict with v_template, f, weights and J_regressor.
    """
    raw_bytes = Path(path).read_bytes()
    loaded = _MANOUnpickler(io.BytesIO(raw_bytes), encoding="latin1").load()
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} does not hold a MANO dict (got {type(loaded).__name__})")
    missing = [key for key in ("v_template", "f", "weights", "J_regressor") if key not in loaded]
    if missing:
        raise ValueError(f"{path} is missing MANO keys {missing}; is it a MANO_*.pkl file?")
    return {key: to_plain(value) for key, value in loaded.items()}


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (used to key converted copies in the cache)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def convert_official_mano(src: Path, dst: Path) -> Path:
    """Converts an official MANO pickle to plain numpy/scipy arrays that smplx loads without chumpy.

    Args:
        src: the official MANO_RIGHT.pkl or MANO_LEFT.pkl (Python 2 pickle with chumpy arrays).
        dst: where to write the converted pickle (written atomically: temp file, then os.replace).

    Returns:
        dst.

    Raises:
        ValueError: if src does not exist or is not a MANO pickle.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ValueError(f"MANO file {src} does not exist; pass the official MANO_RIGHT.pkl or MANO_LEFT.pkl")
    return write_mano_pickle(load_mano_pickle(src), dst)


def write_mano_pickle(arrays: dict[str, Any], path: Path) -> Path:
    """Write plain-numpy MANO arrays atomically (temp file, then os.replace): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".incomplete")
    try:
        with os.fdopen(handle, "wb") as tmp_file:
            pickle.dump(arrays, tmp_file, protocol=4)
        os.chmod(tmp_name, CACHE_FILE_MODE)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return path
