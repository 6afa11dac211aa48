"""The shared parameter checks: one wording, the parameter named, what was expected and got."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vstain_dask._validate import check_bool, check_float, check_int, check_int_fields, int_field
from vstain_dask.errors import InputError


def test_check_int_accepts_python_and_numpy_integers():
    assert check_int(np.int64(3), "n", 1) == 3 and type(check_int(np.int64(3), "n", 1)) is int
    assert check_int(-5, "seed") == -5
    assert check_int(8, "depth", 2, 12) == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, "tile", 1), "tile must be an integer >= 1, got 0"),
        ((np.int64(0), "tile", 1), "tile must be an integer >= 1, got 0"),
        ((13, "depth", 2, 12), r"depth must be an integer in 2\.\.12, got 13"),
        ((8.0, "tile", 1), "tile must be an integer >= 1, got 8.0"),
        ((True, "n"), "n must be an integer, got True"),
        (("3", "n", 0), "n must be an integer >= 0, got '3'"),
    ],
)
def test_check_int_messages(args, message):
    with pytest.raises(InputError, match=f"^{message}$"):
        check_int(*args)


def test_check_int_hint():
    with pytest.raises(InputError, match=r"^step must be an integer in 1\.\.8, got 9 \(gaps\)$"):
        check_int(9, "step", 1, 8, hint="gaps")


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (
            0,
            {"positive": True, "unit": "µm"},
            r"voxel_size must be a positive number \(µm\), got 0",
        ),
        (float("nan"), {"positive": True}, "voxel_size must be a positive number, got nan"),
        (-1, {"minimum": 0}, "voxel_size must be a number >= 0, got -1"),
        (1.5, {"minimum": 0, "maximum": 1}, r"voxel_size must be a number in \[0, 1\], got 1.5"),
        (float("inf"), {}, "voxel_size must be a finite number, got inf"),
        ("1", {}, "voxel_size must be a finite number, got '1'"),
        (True, {}, "voxel_size must be a finite number, got True"),
    ],
)
def test_check_float_messages(value, kwargs, message):
    with pytest.raises(InputError, match=f"^{message}$"):
        check_float(value, "voxel_size", **kwargs)


def test_check_float_and_bool_accept():
    assert check_float(np.float32(0.5), "f", minimum=0, maximum=1) == 0.5
    assert check_float(2, "f", positive=True) == 2.0
    assert check_bool(False, "flag") is False
    with pytest.raises(InputError, match="^flag must be true or false, got 1$"):
        check_bool(1, "flag")


def test_int_fields_state_their_range_once():
    @dataclasses.dataclass(frozen=True)
    class Config:
        n: int = int_field(2, 1)
        depth: int | None = int_field(None, 2, 12)

        def __post_init__(self):
            check_int_fields(self)

    assert Config(n=np.int64(3)).n == 3 and type(Config(n=np.int64(3)).n) is int
    assert Config().depth is None
    assert dataclasses.fields(Config)[1].metadata == {"min": 2, "max": 12}
    with pytest.raises(InputError, match=r"^depth must be an integer in 2\.\.12, got 1$"):
        Config(depth=1)
    with pytest.raises(InputError, match="^n must be an integer >= 1, got 0$"):
        Config(n=0)


def test_unknown_keywords_are_refused_in_pythons_words_by_every_options_function(tmp_path):
    import numpy as np

    from vstain_dask import ngff
    from vstain_dask.pairs import write_pair
    from vstain_dask.tiling import predict_plane

    calls = {
        "create_volume": lambda: ngff.create_volume(
            tmp_path / "v.zarr", shape=(4, 4, 4), chunks=(4, 4, 4), dtype="uint16", bogus=1
        ),  # fmt: skip
        "write_pair": lambda: write_pair(
            tmp_path / "p.zarr",
            "a",
            ct=np.zeros((4, 4), np.uint16),
            histology=np.zeros((4, 4, 3), np.uint8),
            mask=np.ones((4, 4), bool),
            material="mg",
            sample="s",
            voxel_size=5.0,
            bogus=1,
        ),  # fmt: skip
        "predict_plane": lambda: predict_plane(None, np.zeros((8, 8), np.float32), bogus=1),
    }
    for name, call in calls.items():
        with pytest.raises(
            TypeError, match=rf"^{name}\(\) got an unexpected keyword argument 'bogus'$"
        ):
            call()
    assert not (tmp_path / "v.zarr").exists() and not (tmp_path / "p.zarr").exists()
