"""Library-level fuzzing of what every handler calls first: the image loader (damaged and odd
files, hypothesis) and the number parsers. No server."""
from __future__ import annotations

import math
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile_inputs import assert_clear, image_files

FUZZ = {"library": 0, "library_ok": 0}


@settings(max_examples=int(os.environ.get("RELIABILITY_FUZZ_LIB", 250)), deadline=None,
          suppress_health_check=list(HealthCheck), database=None)
@given(case=image_files())
def test_fuzz_image_bytes_library(case, tmp_path_factory):
    """What every image endpoint calls (ui.inputs.model_image): a tensor or an InputError."""
    from softvq_demo.ui.inputs import InputError, model_image

    data, ext, info = case
    path = tmp_path_factory.getbasetemp() / f"fuzz{ext}"
    path.write_bytes(data)
    FUZZ["library"] += 1
    try:
        x, desc, _ = model_image(str(path), 128)
    except InputError as err:
        assert_clear(str(err))
        assert info["mutation"] != "none" or min(info["size"]) < 8, (info, err)
        return
    FUZZ["library_ok"] += 1
    assert x.shape == (1, 3, 128, 128) and torch.isfinite(x).all() and x.abs().max() <= 1
    assert min(info["size"]) >= 8, info


@settings(max_examples=300, deadline=None, database=None)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**400, 10**400),
                       st.text(max_size=30), st.none(), st.booleans()),
       lo=st.integers(-5, 5), span=st.integers(0, 10**6))
def test_fuzz_number_parsers(value, lo, span):
    """The validators every handler uses: a value in range, or a short InputError."""
    from softvq_demo.ui.inputs import InputError, parse_float, parse_int

    for parse in (parse_int, parse_float):
        try:
            v = parse(value, "field", lo, lo + span)
        except InputError as err:
            assert str(err).startswith("field") and len(str(err)) < 200, str(err)
            continue
        assert lo <= v <= lo + span and math.isfinite(v)
        if parse is parse_int:
            assert isinstance(v, int)
