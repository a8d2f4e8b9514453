"""Hostile and broken input (issue 20): bounded memory, regular files only, no shared writable memory,
bad scales refused, finite input decoded finite, ScaledTensor invariants, safe concurrent saves, and
only breccia's errors. The fuzz tests that check values are in ``test_fuzz_readers.py``."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading

import ml_dtypes
import numpy as np
import pytest
from conftest import assert_same_bits, numpy_copy, to_framework, to_numpy

import breccia as bc
from breccia.bridges import (
    from_deepseek_v3,
    load_deepseek_v3,
    load_plain_safetensors,
    load_safetensors,
    open_safetensors,
    save_safetensors,
)
from breccia.bridges._safetensors_format import encode_header, read_header
from breccia.errors import (
    FileAccessError,
    FileFormatError,
    FileMissingError,
    FrameworkError,
    LayoutError,
    NotAnArrayError,
    PathTypeError,
    ScaleValueError,
)
from breccia.scaling import FLT_MAX

# --- helpers ---------------------------------------------------------------------------------------


def _write(path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]], metadata=None) -> str:
    """A safetensors file of raw ``name -> (dtype, shape, bytes)`` (no validation: hostile on purpose)."""
    header, order = encode_header(((n, d, s) for n, (d, s, _) in tensors.items()), metadata)
    with open(path, "wb") as f:
        f.write(header)
        for name, _, _ in order:
            f.write(tensors[name][2])
    return str(path)


def _raw_header_file(path, header: str) -> str:
    """A file whose header is the given JSON text (and no data)."""
    body = header.encode()
    body += b" " * (-len(body) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(body)) + body)
    return str(path)


def _config(recipe, layout, shape, dtype="float32") -> str:
    return json.dumps(
        {
            "format": "breccia.ScaledTensor",
            "version": 1,
            "recipe": recipe.to_dict(),
            "layout": layout.to_dict(),
            "shape": list(shape),
            "dtype": dtype,
        }
    )


def _float8_file(path, layout, shape=(4, 8), scale=None) -> str:
    """A breccia Float8CurrentScaling tensor ``w`` with ``layout`` (trusted as written)."""
    recipe = bc.Float8CurrentScaling()
    grid = bc.layouts.scale_shape(layout, shape)
    scale = np.ones(grid, np.float32) if scale is None else np.asarray(scale, np.float32).reshape(grid)
    data = np.full(shape, 0x38, np.uint8)  # E4M3 1.0
    return _write(
        path,
        {"w.data": ("F8_E4M3", shape, data.tobytes()), "w.scale": ("F32", grid, scale.tobytes())},
        {"w.config": _config(recipe, layout, shape)},
    )


def _deepseek_dir(root, weight: np.ndarray, scale: np.ndarray, block=(128, 128)) -> str:
    root.mkdir(exist_ok=True)
    _write(
        root / "model.safetensors",
        {
            "w.weight": ("F8_E4M3", weight.shape, weight.astype(ml_dtypes.float8_e4m3fn).tobytes()),
            "w.weight_scale_inv": ("F32", scale.shape, scale.astype(np.float32).tobytes()),
        },
    )
    (root / "config.json").write_text(
        json.dumps({"quantization_config": {"quant_method": "fp8", "weight_block_size": list(block)}})
    )
    return str(root)


# --- memory bounded by the input ---------------------------------------------------------------------


def test_a_file_layout_far_larger_than_its_tensor_is_refused(tmp_path):
    path = _float8_file(tmp_path / "big.safetensors", bc.PerBlockK(2**27))
    with pytest.raises(FileFormatError, match="far larger than the tensor"):
        open_safetensors(path)


def test_a_block_past_a_short_axis_is_clamped_not_padded(tmp_path):
    # 2**16 is within the reader's overhang; dequantize pads nothing beyond the 4x8 data
    path = _float8_file(tmp_path / "ok.safetensors", bc.PerBlockK(2**16))
    st = open_safetensors(path)["w"]
    assert np.array_equal(bc.dequantize(st), np.ones((4, 8), np.float32))
    wide = bc.from_buffer(
        np.full((3, 5), 0x38, np.uint8),
        np.full((2, 1), 2.0, np.float32),
        bc.Float8BlockScaling(block_k=2**40, block_m=2),
        bc.PerBlock2D(2, 2**40),
    )
    assert np.array_equal(bc.dequantize(wide), np.full((3, 5), 2.0, np.float32))


@pytest.mark.parametrize("shape", [[2**32, 2**32, 0], [0, 2**62, 2**62], [2**40, 2**40, 2**40, 0]])
def test_empty_tensors_with_huge_dims_overflow(tmp_path, shape):
    path = _raw_header_file(
        tmp_path / "empty.safetensors",
        json.dumps({"x": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}),
    )
    with pytest.raises(FileFormatError, match="overflow computing buffer size"):
        open_safetensors(path)


def test_mlx_refuses_dims_beyond_int32(tmp_path):
    pytest.importorskip("mlx.core")
    path = _raw_header_file(
        tmp_path / "wide.safetensors",
        json.dumps({"x": {"dtype": "F32", "shape": [0, 2**31], "data_offsets": [0, 0]}}),
    )
    assert open_safetensors(path)["x"].shape == (0, 2**31)
    with pytest.raises(FileFormatError, match="MLX"):
        open_safetensors(path, "mlx")["x"]


_MEMORY_SCRIPT = r"""
import json, os, resource, sys
import numpy as np
import breccia as bc
from breccia.bridges import open_safetensors, load_deepseek_v3
from breccia.commands.inspect import describe

def vm_bytes():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))

limit = vm_bytes() + 300 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
outcomes = {}
for name, path, kind in json.loads(sys.argv[1]):
    try:
        m = load_deepseek_v3(path) if kind == "deepseek" else open_safetensors(path)
        for key in m:
            describe(key, m[key])
            bc.dequantize(m[key]) if isinstance(m[key], bc.ScaledTensor) else None
        outcomes[name] = "ok"
    except bc.BrecciaError as exc:
        outcomes[name] = type(exc).__name__
    except MemoryError:
        outcomes[name] = "MemoryError"
print(json.dumps(outcomes))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_tiny_hostile_files_fail_cleanly_under_a_memory_limit(tmp_path):
    weight = np.ones((4, 8), np.float32)
    files = [
        (
            "block 2**27",
            _float8_file(tmp_path / "a.safetensors", bc.PerBlockK(2**27)),
            "plain",
            "FileFormatError",
        ),
        (
            "block 2**30",
            _float8_file(tmp_path / "b.safetensors", bc.PerBlockK(2**30)),
            "plain",
            "FileFormatError",
        ),
        ("block 2**16", _float8_file(tmp_path / "c.safetensors", bc.PerBlock2D(2**16, 2**16)), "plain", "ok"),
        (
            "empty huge",
            _raw_header_file(
                tmp_path / "d.safetensors",
                json.dumps({"x": {"dtype": "F32", "shape": [2**32, 2**32, 0], "data_offsets": [0, 0]}}),
            ),
            "plain",
            "FileFormatError",
        ),
        (
            "deepseek 16384",
            _deepseek_dir(tmp_path / "ds1", weight, np.ones((1, 1)), (16384, 16384)),
            "deepseek",
            "ok",
        ),
        (
            "deepseek 2**70",
            _deepseek_dir(tmp_path / "ds2", weight, np.ones((1, 1)), (2**70, 2**70)),
            "deepseek",
            "FileFormatError",
        ),
    ]
    spec = json.dumps([(name, path, kind) for name, path, kind, _ in files])
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, spec], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    outcomes = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcomes == {name: expected for name, _, _, expected in files}


_CONVERT_SCRIPT = r"""
import resource, sys
from breccia.cli import main

with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 300 * 2**20, vm + 300 * 2**20))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_tiny_hostile_files_convert_cleanly_under_a_memory_limit(tmp_path):
    """``breccia convert SRC DST --to bf16`` of each tiny file above, in a directory with a config.json,
    under RLIMIT_AS of the process's size plus 300 MB: the hostile ones exit 2 with one line and leave
    nothing at (or beside) DST; the two whose blocks are legal partial edge blocks convert to ones."""
    weight, one = np.ones((4, 8), np.float32), np.ones((1, 1))

    def plain(name, write):
        root = tmp_path / "src" / name
        root.mkdir(parents=True)
        write(root / "model.safetensors")
        (root / "config.json").write_text("{}")
        return root

    def empty(shape):
        header = json.dumps({"x": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}})
        return lambda path: _raw_header_file(path, header)

    (tmp_path / "src").mkdir()
    cases = [  # (source, what the one error line must say, or None: converts)
        (plain("block 2**27", lambda p: _float8_file(p, bc.PerBlockK(2**27))), "far larger than the tensor"),
        (plain("block 2**30", lambda p: _float8_file(p, bc.PerBlockK(2**30))), "far larger than the tensor"),
        (plain("block 2**16", lambda p: _float8_file(p, bc.PerBlock2D(2**16, 2**16))), None),
        (plain("empty 2**32", empty([2**32, 2**32, 0])), "overflow computing buffer size"),
        (plain("empty 2**62", empty([0, 2**62, 2**62])), "overflow computing buffer size"),
        (_deepseek_dir(tmp_path / "src" / "ds 16384", weight, one, (16384,) * 2), None),
        (_deepseek_dir(tmp_path / "src" / "ds 2**70", weight, one, (2**70,) * 2), "far larger than"),
    ]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    for src, error in cases:
        out = tmp_path / "out" / os.path.basename(src) / "dst"
        out.parent.mkdir(parents=True)
        argv = ["convert", str(src), str(out), "--to", "bf16", "--no-progress"]
        command = [sys.executable, "-c", _CONVERT_SCRIPT, *argv]
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        if error is None:
            assert run.returncode == 0, run.stderr[-3000:]
            values = load_plain_safetensors(out / "model.safetensors")
            assert [np.asarray(v, np.float32).tolist() for v in values.values()] == [weight.tolist()], src
            continue
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1, (src, run.returncode, run.stderr[-3000:])
        assert lines[0].startswith("breccia convert: error: ") and error in lines[0], lines[0]
        assert not os.listdir(out.parent), os.listdir(out.parent)  # no DST, no temporary beside it


# --- regular files only --------------------------------------------------------------------------------


def _fails_fast(fn, error):
    """``fn()`` raises ``error`` within 20 s (run in a daemon thread, so a blocking open fails the test)."""
    box: dict = {}

    def target():
        try:
            fn()
        except BaseException as exc:
            box["exc"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the call blocked"
    assert isinstance(box.get("exc"), error), box.get("exc")
    return box["exc"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_are_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "w.safetensors")
    exc = _fails_fast(lambda: open_safetensors(tmp_path / "w.safetensors"), FileAccessError)
    assert "FIFO" in str(exc)
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    os.mkfifo(index_dir / "model.safetensors.index.json")
    _fails_fast(lambda: open_safetensors(index_dir / "model.safetensors.index.json"), FileAccessError)
    _fails_fast(lambda: read_header(tmp_path / "w.safetensors"), FileAccessError)
    root = _deepseek_dir(tmp_path / "ds", np.ones((4, 8), np.float32), np.ones((1, 1)))
    os.remove(tmp_path / "ds" / "config.json")
    os.mkfifo(tmp_path / "ds" / "config.json")
    _fails_fast(lambda: load_deepseek_v3(root), FileAccessError)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs unix sockets")
def test_sockets_devices_and_directories_are_refused(tmp_path):
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "s.safetensors"))
        _fails_fast(lambda: open_safetensors(tmp_path / "s.safetensors"), FileAccessError)
    finally:
        sock.close()
    if os.path.exists("/dev/zero"):
        _fails_fast(lambda: read_header("/dev/zero"), FileAccessError)
    _fails_fast(lambda: read_header(tmp_path), FileAccessError)


def test_symlink_loops_missing_paths_and_non_paths(tmp_path):
    os.symlink(tmp_path / "b.safetensors", tmp_path / "a.safetensors")
    os.symlink(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    with pytest.raises(FileAccessError, match="symlink loop"):
        open_safetensors(tmp_path / "a.safetensors")
    with pytest.raises(FileMissingError) as missing:
        open_safetensors(tmp_path / "nowhere.safetensors")
    assert isinstance(missing.value, FileNotFoundError)
    with pytest.raises(FileMissingError):
        read_header(tmp_path / "nowhere.safetensors")
    with pytest.raises(PathTypeError):
        open_safetensors(None)
    with pytest.raises(PathTypeError):
        load_deepseek_v3(3.5)


@pytest.mark.parametrize("where", ["header", "index", "config", "config.json"])
def test_deeply_nested_json_is_a_file_format_error(tmp_path, where):
    deep = "[" * 100_000 + "]" * 100_000
    if where == "config.json":
        root = _deepseek_dir(tmp_path / "ds", np.ones((4, 8), np.float32), np.ones((1, 1)))
        (tmp_path / "ds" / "config.json").write_text('{"quantization_config": ' + deep + "}")
        with pytest.raises(FileFormatError, match="nested too deeply"):
            load_deepseek_v3(root)
        return
    if where == "header":
        path = _raw_header_file(tmp_path / "deep.safetensors", '{"x": ' + deep + "}")
    elif where == "index":
        _write(tmp_path / "a.safetensors", {"x": ("F32", (1,), b"\0\0\0\0")})
        path = tmp_path / "model.safetensors.index.json"
        path.write_text('{"weight_map": {"x": "a.safetensors"}, "metadata": ' + deep + "}")
    else:
        path = _write(
            tmp_path / "c.safetensors",
            {"w.data": ("F8_E4M3", (1,), b"\0"), "w.scale": ("F32", (1,), b"\0" * 4)},
            {"w.config": deep},
        )
    with pytest.raises(FileFormatError, match="nested too deeply"):
        open_safetensors(path)


# --- no shared writable memory ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [4, 40_000])  # torch: a copy below 64 KiB, a private map above
def test_lazy_mappings_never_hand_out_shared_writable_memory(tmp_path, n):
    path = tmp_path / "m.safetensors"
    x = np.arange(n, dtype=np.float32) + 1
    st = bc.cast(np.tile(x, (2, 1)), bc.Float8BlockScaling())
    save_safetensors({"x": x, "w": st}, path)
    m = open_safetensors(path)
    a = m["x"]
    with pytest.raises(ValueError, match="read-only"):
        a *= 0
    with pytest.raises(ValueError, match="read-only"):
        m["w"].scale[...] = 0
    torch = pytest.importorskip("torch")
    mt = open_safetensors(path, "torch")
    t = mt["x"]
    t *= 0
    w = mt["w"]
    w.scale.zero_()
    w.data.view(torch.uint8).zero_()
    assert np.array_equal(mt["x"].numpy(), x)
    assert np.array_equal(m["x"], x)
    assert np.array_equal(to_numpy(bc.dequantize(mt["w"])), bc.dequantize(st))
    assert np.array_equal(mt.read_tensor("w.scale").numpy(), st.scale)


def test_deepseek_mappings_never_hand_out_shared_writable_memory(tmp_path):
    weight = np.full((4, 8), 2.0, np.float32)
    root = _deepseek_dir(tmp_path / "ds", weight, np.full((1, 1), 0.5))
    m = load_deepseek_v3(root)
    st = m["w.weight"]
    with pytest.raises(ValueError, match="read-only"):
        st.scale[...] = 0
    pytest.importorskip("torch")
    mt = load_deepseek_v3(root, "torch")
    st = mt["w.weight"]
    st.scale.zero_()
    assert np.array_equal(to_numpy(bc.dequantize(mt["w.weight"])), np.ones((4, 8), np.float32))


# --- scales read from files --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 0.0, -1.0])
def test_bad_f32_scales_are_refused_with_name_and_block(tmp_path, bad):
    scale = np.ones((4, 2), np.float32)
    scale[2, 1] = bad
    path = _float8_file(tmp_path / "s.safetensors", bc.PerBlockK(4), scale=scale)
    m = open_safetensors(path)
    with pytest.raises(ScaleValueError, match=r"'w'.*block \(2, 1\)"):
        m["w"]
    kept = open_safetensors(path, check_scales=False)["w"]
    assert np.array_equal(kept.scale, scale, equal_nan=True)
    with pytest.raises(ScaleValueError):
        load_safetensors(path)


def test_bad_encoded_scales_are_refused(tmp_path):
    x = np.linspace(-3, 3, 64, dtype=np.float32).reshape(2, 32)
    for recipe, bad_code in [
        (bc.MXFP8BlockScaling(), 0xFF),
        (bc.NVFP4BlockScaling(), 0x7F),
        (bc.NVFP4BlockScaling(), 0x00),
        (bc.NVFP4BlockScaling(), 0xB8),
    ]:
        st = bc.cast(x, recipe)
        codes = np.array(st.scale).view(np.uint8).copy()
        codes[1, 0] = bad_code
        broken = st.replace_arrays(st.data, codes.view(st.scale.dtype), st.global_scale, st.zero_point)
        path = tmp_path / "e.safetensors"
        save_safetensors({"w": broken}, path)
        with pytest.raises(ScaleValueError, match=r"block \(1, 0\)"):
            open_safetensors(path)["w"]
    st = bc.cast(x, bc.NVFP4BlockScaling())
    save_safetensors({"w": st.replace_arrays(st.data, st.scale, np.float32(np.nan).reshape(()))}, path)
    with pytest.raises(ScaleValueError, match="global scale"):
        open_safetensors(path)["w"]


def test_nan_input_round_trips_only_with_check_scales_off(tmp_path):
    x = np.ones((2, 32), np.float32)
    x[1, 3] = np.nan
    st = bc.cast(x, bc.MXFP8BlockScaling())
    save_safetensors({"w": st}, tmp_path / "n.safetensors")
    with pytest.raises(ScaleValueError, match="NaN"):
        load_safetensors(tmp_path / "n.safetensors")
    back = load_safetensors(tmp_path / "n.safetensors", check_scales=False)["w"]
    assert np.array_equal(bc.dequantize(back), bc.dequantize(st), equal_nan=True)


def test_mlx_affine_negative_scales_are_legitimate(tmp_path):
    x = np.linspace(-1, 3, 128, dtype=np.float32).reshape(2, 64)
    st = bc.cast(x, bc.Int4Scaling(group_size=32, symmetric=False, convention="mlx"))
    assert (np.asarray(st.scale) < 0).any()
    save_safetensors({"w": st}, tmp_path / "a.safetensors")
    assert np.array_equal(bc.dequantize(load_safetensors(tmp_path / "a.safetensors")["w"]), bc.dequantize(st))


@pytest.mark.parametrize("bad", [np.nan, 0.0, -2.0])
def test_bad_deepseek_scales_are_refused(tmp_path, bad):
    scale = np.ones((1, 2), np.float32)
    scale[0, 1] = bad
    root = _deepseek_dir(tmp_path / "ds", np.ones((4, 200), np.float32), scale)
    with pytest.raises(ScaleValueError, match=r"weight_scale_inv.*block \(0, 1\)"):
        load_deepseek_v3(root)["w.weight"]
    kept = load_deepseek_v3(root, check_scales=False)["w.weight"]
    assert np.array_equal(kept.scale, scale, equal_nan=True)


# --- numerics at the edges of float32 ---------------------------------------------------------------

RECIPES = [
    bc.Float8CurrentScaling(),
    bc.Float8BlockScaling(block_k=32),
    bc.Float8BlockScaling(block_k=32, convention="deepseek"),
    bc.MXFP8BlockScaling(),
    bc.MXFP8BlockScaling(scale_rounding="ceil"),
    bc.MXFP8BlockScaling(fp8_format="E5M2", scale_rounding="ceil"),
    bc.MXFP4BlockScaling(),
    bc.MXFP4BlockScaling(scale_rounding="ceil"),
    bc.NVFP4BlockScaling(),
    bc.Int8Scaling(),
    bc.Int8Scaling(group_size=32, convention="torchao"),
    bc.Int8Scaling(group_size=32, symmetric=False),
    bc.Int8Scaling(group_size=32, symmetric=False, convention="torchao"),
    bc.Int4Scaling(group_size=32),
    bc.Int4Scaling(group_size=32, convention="torchao"),
    bc.Int4Scaling(group_size=32, symmetric=False),
    bc.Int4Scaling(group_size=32, symmetric=False, convention="mlx"),
]


def _edge_blocks() -> np.ndarray:
    rows = np.zeros((5, 32), np.float32)
    rows[0] = FLT_MAX
    rows[1] = -FLT_MAX
    rows[2, :2] = FLT_MAX, -FLT_MAX
    rows[3, :2] = -FLT_MAX, 1.0
    rows[4] = np.linspace(FLT_MAX / 2, FLT_MAX, 32, dtype=np.float32)
    return rows


@pytest.mark.parametrize("recipe", RECIPES, ids=repr)
def test_finite_input_decodes_finite_at_float32s_limit(recipe):
    x = _edge_blocks()
    y = bc.dequantize(bc.cast(x, recipe))
    assert np.isfinite(y).all()
    assert (np.sign(y[0]) >= 0).all() and (np.sign(y[1]) <= 0).all()


@pytest.mark.parametrize("recipe", RECIPES, ids=repr)
def test_inf_decodes_to_its_blocks_extreme_value(recipe):
    """The Inf rule: +Inf decodes to the largest value its block decodes to, -Inf to the smallest."""
    x = np.tile(np.linspace(-2, 3, 32, dtype=np.float32), (4, 1))
    x[0, 5], x[1, 7] = np.inf, -np.inf
    x[2, :] = np.inf
    x[3, :] = -np.inf
    st = bc.cast(x, recipe)
    y = bc.dequantize(st, "float32")
    m, k = (min(b, n) for b, n in zip(st.layout.block_shape(x.shape), x.shape))

    def block(r: int, c: int) -> np.ndarray:
        return y[r // m * m : (r // m + 1) * m, c // k * k : (c // k + 1) * k]

    assert y[0, 5] == block(0, 5).max() and y[1, 7] == block(1, 7).min()
    assert np.isfinite(y).all()
    all_pos, all_neg = bc.cast(x[2:3], recipe), bc.cast(x[3:4], recipe)
    assert bc.dequantize(all_pos)[0, 0] >= bc.dequantize(all_neg)[0, 0]


@pytest.mark.parametrize("framework", ["jax", "mlx", "torch"])
@pytest.mark.parametrize("recipe", RECIPES, ids=repr)
def test_edge_bits_agree_across_backends(recipe, framework):
    pytest.importorskip({"jax": "jax", "mlx": "mlx.core", "torch": "torch"}[framework])
    x = _edge_blocks()
    assert_same_bits(numpy_copy(bc.cast(to_framework(framework, x), recipe)), bc.cast(x, recipe))


def test_float64_beyond_float32_is_refused_and_within_is_scaled():
    with pytest.raises(bc.errors.DTypeError, match="beyond float32's range"):
        bc.cast(np.array([[1e39, 2e39]]), bc.Float8CurrentScaling())
    x = np.array([[1e38, -3e38, np.inf]])  # Inf is Inf (rule 3), not a range error
    y = bc.dequantize(bc.cast(x, bc.Float8CurrentScaling()))
    assert y.dtype == np.float64 and np.isfinite(y).all()
    assert abs(y[0, 1] / -3e38 - 1) < 0.07


# --- ScaledTensor invariants ------------------------------------------------------------------------


def _valid(recipe=None, shape=(4, 64)):
    return bc.cast(
        np.linspace(-1, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape),
        recipe or bc.MXFP8BlockScaling(),
    )


def test_scaled_tensor_checks_its_invariants():
    st = _valid()
    fields = dict(recipe=st.recipe, layout=st.layout, shape=st.shape, dtype_name="float32", framework="numpy")

    def make(data=st.data, scale=st.scale, **changes):
        kw = {**fields, **changes}
        extra = {k: kw.pop(k) for k in ("global_scale", "zero_point") if k in kw}
        return bc.ScaledTensor(data=data, scale=scale, **kw, **extra)

    make()
    with pytest.raises(bc.errors.ShapeError, match="data"):
        make(data=np.ascontiguousarray(st.data.reshape(64, 4)))
    with pytest.raises(bc.errors.ShapeError, match="scale"):
        make(scale=st.scale.reshape(-1))
    with pytest.raises(bc.errors.DTypeError):
        make(data=st.data.view(np.int8))
    with pytest.raises(bc.errors.DTypeError):
        make(scale=np.ones(st.scale.shape, np.float32))
    for name in ("int8", "object", "complex64"):
        with pytest.raises(bc.errors.DTypeError, match="logical dtype"):
            make(dtype_name=name)
    with pytest.raises(bc.errors.RecipeError):
        make(recipe="MXFP8")
    with pytest.raises(LayoutError):
        make(layout=bc.PerTensor())
    with pytest.raises(FrameworkError):
        make(framework="tensorflow")
    with pytest.raises(bc.errors.RecipeError, match="no global scale"):
        make(global_scale=np.float32(1.0))
    nv = _valid(bc.NVFP4BlockScaling())
    with pytest.raises(bc.errors.RecipeError, match="global_scale"):
        nv.replace(global_scale=None)
    asym = _valid(bc.Int8Scaling(group_size=32, symmetric=False))
    with pytest.raises(bc.errors.RecipeError, match="zero_point"):
        asym.replace(zero_point=None)


def test_invariants_leave_jax_transformations_alone():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    x = jnp.asarray(np.linspace(-1, 1, 3 * 4 * 64, dtype=np.float32).reshape(3, 4, 64))
    recipe = bc.MXFP8BlockScaling()
    batched = jax.vmap(lambda v: bc.cast(v, recipe))(x)
    assert batched.data.shape == (3, 4, 64)
    y = jax.vmap(bc.dequantize)(batched)
    assert np.array_equal(np.asarray(y[1]), np.asarray(bc.dequantize(bc.cast(x[1], recipe))))
    st = bc.cast(x[0], recipe)
    assert np.array_equal(np.asarray(jax.jit(bc.dequantize)(st)), np.asarray(bc.dequantize(st)))
    leaves, tree = jax.tree_util.tree_flatten(st)
    placeholder = jax.tree_util.tree_unflatten(tree, [object()] * len(leaves))
    assert isinstance(placeholder, bc.ScaledTensor)


# --- saving ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("other", ["w.zero_point", "w.global_scale", "w.data", "w.scale"])
def test_save_refuses_names_of_a_scaled_tensors_parts(tmp_path, other):
    tensors = {"w": _valid(), other: np.ones(3, np.float32)}
    written = other in ("w.data", "w.scale")  # parts MXFP8 writes: the duplicate-name check says it
    message = f"both be stored as '{other}'" if written else f"'{other}' is the name of ScaledTensor 'w'"
    with pytest.raises(FileFormatError, match=message):
        save_safetensors(tensors, tmp_path / "c.safetensors")
    with pytest.raises(FileFormatError):
        save_safetensors({"w": _valid(), other: _valid()}, tmp_path / "c.safetensors")
    assert not os.listdir(tmp_path)


def test_reader_names_a_stray_part_without_garbled_quotes(tmp_path):
    st = _valid(bc.Int8Scaling())
    path = _write(
        tmp_path / "z.safetensors",
        {
            "w.data": ("I8", st.shape, np.asarray(st.data).tobytes()),
            "w.scale": ("F32", st.scale.shape, np.asarray(st.scale).tobytes()),
            "w.zero_point": ("F32", st.scale.shape, np.zeros(st.scale.shape, np.float32).tobytes()),
        },
        {"w.config": _config(st.recipe, st.layout, st.shape)},
    )
    with pytest.raises(FileFormatError) as exc:
        open_safetensors(path)
    assert "'w.zero_point'" in str(exc.value) and "w.'zero_point'" not in str(exc.value)


def test_concurrent_saves_to_one_path_leave_one_whole_payload(tmp_path):
    path = tmp_path / "shared.safetensors"
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        payload = {f"t{i}": np.full((64, 64), k * 100 + i, np.float32) for i in range(4)}
        try:
            for _ in range(5):
                save_safetensors(payload, path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with open_safetensors(path) as m:
        values = {name: np.asarray(m[name]) for name in m}
    writer = int(values["t0"][0, 0]) // 100
    for i in range(4):
        assert (values[f"t{i}"] == writer * 100 + i).all()
    assert os.listdir(tmp_path) == ["shared.safetensors"]


def test_a_failed_save_leaves_no_temporary_and_the_old_file(tmp_path, monkeypatch):
    from breccia.bridges import _huggingface

    path = tmp_path / "f.safetensors"
    save_safetensors({"a": np.ones(2, np.float32)}, path)
    before = path.read_bytes()

    def boom(x):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(_huggingface, "_host_bytes", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_safetensors({"a": np.zeros(2, np.float32)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["f.safetensors"]


def test_saving_onto_a_directory_or_shards_onto_a_file(tmp_path):
    with pytest.raises(FileAccessError, match="is a directory"):
        save_safetensors({"a": np.ones(2, np.float32)}, tmp_path)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(FileAccessError, match="is a file"):
        save_safetensors({"a": np.ones(2, np.float32)}, tmp_path / "file", max_shard_size="1MB")
    with pytest.raises(FileMissingError):
        save_safetensors({"a": np.ones(2, np.float32)}, tmp_path / "no" / "such.safetensors")


# --- only breccia's errors ---------------------------------------------------------------------------


def test_cast_refuses_matrices_meta_and_sparse_tensors():
    with pytest.raises(NotAnArrayError, match=r"np\.matrix"):
        bc.cast(np.matrix([[1.0, 2.0]], np.float32), bc.Float8CurrentScaling())
    torch = pytest.importorskip("torch")
    with pytest.raises(NotAnArrayError, match="meta"):
        bc.cast(torch.ones(2, 32, device="meta"), bc.MXFP8BlockScaling())
    dense = torch.eye(32)
    for sparse in (dense.to_sparse(), dense.to_sparse_csr()):
        with pytest.raises(NotAnArrayError, match="sparse"):
            bc.cast(sparse, bc.MXFP8BlockScaling())


def test_bad_arguments_raise_breccia_errors(tmp_path):
    data = np.zeros((4, 8), ml_dtypes.float8_e4m3fn)
    with pytest.raises(LayoutError, match="block_k"):
        from_deepseek_v3(data, np.ones((1, 1), np.float32), block_k=0)
    path = tmp_path / "d.safetensors"
    save_safetensors({"a": np.ones(2, np.float32)}, path)
    pytest.importorskip("torch")
    with pytest.raises(FrameworkError, match="nope"):
        open_safetensors(path, "torch", device="nope")
    with pytest.raises(FrameworkError, match="nope"):
        load_deepseek_v3(path, "torch", device="nope")


def test_inspect_escapes_control_characters_in_names():
    from breccia.commands.inspect import describe, format_table

    rows = [describe("evil\x1b[2J\nname\u202e", np.ones(2, np.float32))]
    table = format_table(rows)
    assert "\x1b" not in table and "\u202e" not in table
    assert "evil\\x1b[2J\\nname\\u202e" in table
