"""The largest image side cnnlab accepts, and the one line that names a configured size beyond it."""

from __future__ import annotations

# The largest image side cnnlab accepts (data.input_size, a generated set's image_size, tta_resize): 8192 px is
# beyond any CNN classification input in use (whole-slide and satellite images are tiled far smaller), and one
# 3 x 8192 x 8192 float image is already 800 MB; a typo such as 100000 would otherwise fail with a MemoryError deep
# in decoding or resizing.
MAX_SIDE = 8192


def side_problem(key: str, value, sides) -> str | None:
    """A size whose side is above MAX_SIDE, as the one line naming it (None when it fits)."""
    if any(isinstance(s, int) and s > MAX_SIDE for s in sides):
        return (f"{key}={value!r} is larger than cnnlab accepts: each side must be at most {MAX_SIDE} pixels "
                f"(an image that size is already {3 * MAX_SIDE * MAX_SIDE * 4 / 2**30:.1f} GiB as floats); "
                f"resize or tile the images")
    return None
