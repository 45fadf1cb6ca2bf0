"""String fields as fixed-width UTF-8 code units (uint8, NUL-padded): a Zarr v3 core type every reader supports."""

from __future__ import annotations

import numpy as np

NUL = b"\x00"


def encode_utf8_fixed(values: np.ndarray | list[str], width_bytes: int, name: str) -> np.ndarray:
    """(N,) strings -> (N, width_bytes) uint8 UTF-8 code units, NUL-padded.

    Raises:
        ValueError: naming the field and the value when it is longer than `width_bytes` in UTF-8
            or holds a NUL character (NUL is the padding).
    """
    encoded = [str(value).encode("utf-8") for value in (values.tolist() if isinstance(values, np.ndarray) else values)]
    for raw in encoded:
        if len(raw) > width_bytes:
            raise ValueError(f"field {name!r}: {raw[:60].decode(errors='replace')!r}... is {len(raw)} bytes in UTF-8, "
                             f"the schema stores at most {width_bytes} (unihope.storage.schema.STRING_WIDTH_BYTES)")
        if NUL in raw:
            raise ValueError(f"field {name!r}: value {raw.decode(errors='replace')!r} contains a NUL character")
    fixed = np.array(encoded, dtype=f"S{width_bytes}") if encoded else np.zeros(0, dtype=f"S{width_bytes}")
    return np.ascontiguousarray(fixed).view(np.uint8).reshape(len(encoded), width_bytes)


def decode_utf8_fixed(codes: np.ndarray) -> np.ndarray:
    """(N, W) uint8 code units -> (N,) numpy StringDType (trailing NULs removed).

    Raises:
        ValueError: when the bytes are not UTF-8 (a damaged chunk).
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2:
        raise ValueError(f"string code units must be (N, width), got shape {codes.shape}")
    fixed = codes.view(f"S{codes.shape[1]}").reshape(codes.shape[0])
    try:
        return np.array([raw.decode("utf-8") for raw in fixed.tolist()], dtype=np.dtypes.StringDType())
    except UnicodeDecodeError as err:
        raise ValueError(f"string code units are not UTF-8 ({err})") from err
