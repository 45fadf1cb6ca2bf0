"""Find the MANO file to use: the user's official one (converted once) or the cached procedural hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unihope.hand.constants import SIDES
from unihope.hand.convert import convert_official_mano, file_sha256, load_mano_pickle
from unihope.hand.procedural import PROCEDURAL_MODEL_VERSION, write_procedural_mano

DEFAULT_CACHE_DIR = Path("~/.cache/unihope/mano")
OFFICIAL_HASH_CHARS = 12


def _mano_file_name(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return f"MANO_{side.upper()}.pkl"


def _cache_root(cache_dir: Path | None) -> Path:
    return (Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()


def resolve_mano_path(side: str, mano_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """Path of a plain-numpy MANO pickle for `side`, creating it in the cache on first use.

    With `mano_dir`, the official MANO_<SIDE>.pkl there is converted once (no chumpy needed) into
    `<cache>/official-<sha256[:12]>/`, keyed by the source file's hash so a new file is re-converted.
    Without it, the procedural hand is generated into `<cache>/procedural-v<N>/` (N =
    PROCEDURAL_MODEL_VERSION). Both are written atomically, so concurrent workers are safe.

    Args:
        side: "right" or "left".
        mano_dir: folder holding the official MANO_RIGHT.pkl / MANO_LEFT.pkl, or None.
        cache_dir: cache root; None -> ~/.cache/unihope/mano.

    Returns:
        Path to MANO_<SIDE>.pkl, loadable by smplx.MANO.

    Raises:
        ValueError: if side is unknown or mano_dir lacks the requested file.
    """
    file_name = _mano_file_name(side)
    root = _cache_root(cache_dir)
    if mano_dir is not None:
        src = Path(mano_dir).expanduser() / file_name
        if not src.is_file():
            raise ValueError(
                f"{src} not found: mano_dir must hold the official {file_name} "
                "(download it from https://mano.is.tue.mpg.de), or leave mano_dir unset for the procedural hand"
            )
        dst = root / f"official-{file_sha256(src)[:OFFICIAL_HASH_CHARS]}" / file_name
        if not dst.is_file():
            convert_official_mano(src, dst)
        return dst
    dst = root / f"procedural-v{PROCEDURAL_MODEL_VERSION}" / file_name
    if not dst.is_file():
        write_procedural_mano(dst, side)
    return dst


def describe_hand_model(side: str, mano_dir: Path | None = None, cache_dir: Path | None = None) -> dict[str, Any]:
    """Summary of the hand model in use, for `unihope inspect`.

    Args:
        side: "right" or "left".
        mano_dir: folder with the official files, or None for the procedural hand.
        cache_dir: cache root; None -> ~/.cache/unihope/mano.

    Returns:
        {"kind": "procedural" | "official", "path": str, "version": str, "num_vertices": int,
         "num_faces": int, "num_joints": int}.

    Raises:
        ValueError: as resolve_mano_path.
    """
    path = resolve_mano_path(side, mano_dir=mano_dir, cache_dir=cache_dir)
    arrays = load_mano_pickle(path)
    is_official = mano_dir is not None
    version = path.parent.name.removeprefix("official-") if is_official else f"v{PROCEDURAL_MODEL_VERSION}"
    return {
        "kind": "official" if is_official else "procedural",
        "path": str(path),
        "version": version,
        "num_vertices": int(arrays["v_template"].shape[0]),
        "num_faces": int(arrays["f"].shape[0]),
        "num_joints": int(arrays["weights"].shape[1]),
    }
