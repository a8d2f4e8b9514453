"""breccia.models.deepseek_moe on 8 simulated CPU devices: tile-by-tile loading, the sharded FP8 block
against the same block on one device, and plans that would cut a tile.

JAX fixes its device count when it starts, so one subprocess (``XLA_FLAGS=--xla_force_host_platform_
device_count=8``) does the JAX work and writes what it saw to a JSON file; the tests below read it. The
checkpoints are the tiny DeepSeek-V3 of :func:`breccia.demo.deepseek.write_checkpoint`: one with
DeepSeek-V3's low-rank queries (``q_a_proj``, ``q_b_proj``) and an MoE intermediate size of 256 (two
tiles, so the shared expert splits over ``tp=2``), and the default one (one ``q_proj``; 192: 1.5
tiles, ragged, so the shared expert cannot split).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from breccia.demo.deepseek import TinyV3Config, write_checkpoint
from breccia.models.deepseek_moe import TENSORS

pytest.importorskip("jax")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    import breccia as bc
    from breccia.bridges import deepseek_recipe
    from breccia.checkpoints import ModelDirectory
    from breccia.models import DEFAULT_PLAN, block_config, load_sharded, moe_block

    even, ragged, out = sys.argv[1:4]
    assert jax.device_count() == 8, jax.devices()
    devices = np.array(jax.devices())
    one = Mesh(devices[:1].reshape(1, 1), ("ep", "tp"))
    mesh = Mesh(devices.reshape(4, 2), ("ep", "tp"))
    config = block_config(ModelDirectory(even).config)
    result = {}

    reads = []
    p1 = load_sharded(even, one)
    p8 = load_sharded(even, mesh, on_read=lambda name, bounds, nbytes: reads.append([name, bounds, nbytes]))
    result["reads"] = reads
    shards = {}
    for role, value in p8.items():
        scaled = isinstance(value, bc.ScaledTensor)
        for part, array in (("data", value.data), ("scale", value.scale)) if scaled else (("data", value),):
            index_map = array.sharding.devices_indices_map(array.shape)
            shards[f"{role}.{part}"] = {
                "spec": [list(e) if isinstance(e, tuple) else e for e in array.sharding.spec],
                "shape": list(array.shape),
                "bounds": sorted({tuple(tuple(s.indices(n)[:2]) for s, n in zip(index, array.shape))
                                  for index in index_map.values()}),
                "devices": len(index_map),
                "nbytes": int(array.nbytes),
            }
    result["shards"] = shards

    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, config.hidden)).astype(np.float32))
    block = jax.jit(lambda p, x: moe_block(p, x, config))
    y1, y8 = np.asarray(block(p1, x)), np.asarray(block(p8, x))
    result["block"] = {"x": np.asarray(x).tolist(), "one": y1.tolist(), "eight": y8.tolist()}

    act = deepseek_recipe("activation")
    z = jnp.asarray(np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32))

    def probe(p, z):
        zq = bc.cast(z, act)
        dq = bc.dequantize(p["q_b_proj"], "float32")
        return bc.linear(zq, p["q_b_proj"]), bc.linear(zq, p["o_proj"]), zq, dq

    probe = jax.jit(probe)
    (q1, o1, a1, w1), (q8, o8, a8, w8) = probe(p1, z), probe(p8, z)
    bits = lambda a: np.asarray(a).view(np.uint8 if a.dtype.itemsize == 1 else np.uint32).tolist()
    z_abs = np.abs(np.asarray(bc.dequantize(a1), np.float64))
    bound = lambda w: (256 * 2.0**-24 * z_abs @ np.abs(np.asarray(bc.dequantize(w), np.float64)).T).tolist()
    result["probe"] = {
        "act": [bits(a1.data) + bits(a1.scale), bits(a8.data) + bits(a8.scale)],
        "weight": [bits(w1), bits(w8)],
        "weight_spec": str(w8.sharding.spec),
        "q": [np.asarray(q1).tolist(), np.asarray(q8).tolist()],
        "q_bound": bound(p1["q_b_proj"]),
        "q_spec": str(q8.sharding.spec),
        "o": [np.asarray(o1).tolist(), np.asarray(o8).tolist()],
        "o_bound": bound(p1["o_proj"]),
    }

    bad = {
        "ragged shared expert": (ragged, (4, 2), DEFAULT_PLAN),
        "tp=8 cuts q_b_proj's tiles": (even, (1, 8), DEFAULT_PLAN),
        "4 experts on ep=8": (even, (8, 1), DEFAULT_PLAN),
        "unknown mesh axis": (even, (4, 2), {"q_b_proj": ("model", None)}),
        "too many entries": (even, (4, 2), {"o_proj": (None, "tp", None)}),
        "unknown role": (even, (4, 2), {"q_prj": ("tp", None)}),
    }
    errors = {}
    for case, (path, shape, plan) in bad.items():
        touched = []
        try:
            load_sharded(path, Mesh(devices.reshape(shape), ("ep", "tp")), plan,
                         on_read=lambda *a: touched.append(a))
        except bc.BrecciaError as exc:
            errors[case] = [type(exc).__name__, str(exc), len(touched)]
        else:
            errors[case] = ["no error", "", len(touched)]
    result["errors"] = errors
    with open(out, "w") as f:
        json.dump(result, f)
    """
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    even, ragged, out = root / "even", root / "ragged", root / "result.json"
    write_checkpoint(str(even), TinyV3Config(attention=True, moe_intermediate=256, q_lora_rank=256))
    write_checkpoint(str(ragged), TinyV3Config(attention=True))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(even), str(ragged), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


def test_shardings_follow_the_plan(run):
    shards = run["shards"]
    assert "q_proj.data" not in shards  # this checkpoint has DeepSeek-V3's q_a_proj and q_b_proj
    assert shards["q_b_proj.data"]["spec"] == ["tp", None] and shards["q_b_proj.scale"]["spec"] == [
        "tp",
        None,
    ]
    assert shards["q_b_proj.data"]["bounds"] == [[[0, 256], [0, 256]], [[256, 512], [0, 256]]]
    assert shards["q_b_proj.scale"]["bounds"] == [
        [[0, 2], [0, 2]],
        [[2, 4], [0, 2]],
    ]  # the same tiles' scales
    assert shards["q_a_proj.data"]["bounds"] == [[[0, 256], [0, 256]]]
    assert shards["o_proj.data"]["bounds"] == [[[0, 256], [0, 128]], [[0, 256], [128, 256]]]
    assert shards["experts_gate.data"]["shape"] == [4, 256, 256]
    assert shards["experts_gate.data"]["bounds"] == [[[e, e + 1], [0, 256], [0, 256]] for e in range(4)]
    assert shards["experts_gate.scale"]["bounds"] == [[[e, e + 1], [0, 2], [0, 2]] for e in range(4)]
    ragged = shards["kv_a_proj.data"]  # 576 rows: 4.5 tiles, replicated as DeepSeek does
    assert ragged["shape"] == [576, 256] and ragged["bounds"] == [[[0, 576], [0, 256]]]
    assert shards["router.data"]["bounds"] == [[[0, 4], [0, 256]]]


def test_each_device_reads_only_its_own_tiles(run):
    """Every callback read one device's index of one stored tensor, exactly that shard's bytes; a
    split tensor was read once per device (8 reads), never whole, so no host copy of it exists. (JAX
    reads a replicated tensor once and copies it to every device.)"""
    expected = {}  # stored name -> (shard info, index of the name's axes within the stored shape)
    for role, pattern in TENSORS.items():
        stacked = "{e}" in pattern
        for part, suffix in (("data", ""), ("scale", "_scale_inv")):
            info = run["shards"].get(f"{role}.{part}")
            if info is None:  # a plain array has no scale
                continue
            for e in range(4 if stacked else 1):
                name = f"model.layers.0.{pattern.format(e=e)}{suffix}"
                bounds = {
                    tuple(map(tuple, b[1:] if stacked else b))
                    for b in info["bounds"]
                    if not stacked or b[0] == [e, e + 1]
                }
                expected[name] = (info, bounds)
    reads: dict[str, list] = {}
    for name, bounds, nbytes in run["reads"]:
        info, allowed = expected[name]
        assert tuple(map(tuple, bounds)) in allowed, (name, bounds)
        assert nbytes == info["nbytes"] // len(info["bounds"]), name
        reads.setdefault(name, []).append(nbytes)
    assert set(reads) == set(expected)  # every stored tensor of the block was read, by its tiles
    split = [name for name, (info, _) in expected.items() if len(info["bounds"]) > 1]
    assert len(split) == 2 * (6 + 3 * 4)  # q_b, kv_b, o, shared gate/up/down, 4 experts x 3; data + scale
    for name in split:
        info = expected[name][0]
        assert len(reads[name]) == (2 if ".mlp.experts." in name else 8), name  # experts: 2 devices each
        assert all(n < info["nbytes"] for n in reads[name]), name


def test_codes_and_tiles_are_bit_identical_and_products_within_float32(run):
    """What breccia computes is bit for bit the one-device result: the 1x128 activation codes and
    scales, and each device's dequantized weight tiles. The products agree to float32 accumulation,
    ``|d| <= K 2**-24 (|x| @ |W|.T)``: row parallel adds per-device partial sums, and even column
    parallel (the same K terms per output) is summed by XLA's CPU dot in an order that depends on
    the output's shape and fusion."""
    probe = run["probe"]
    assert probe["act"][0] == probe["act"][1]
    assert probe["weight_spec"] in ("P('tp',)", "P('tp', None)") and probe["weight"][0] == probe["weight"][1]
    assert probe["q_spec"] == "P(None, 'tp')"  # the output columns stay split: no gather
    for name in ("q", "o"):
        one, eight, bound = (np.asarray(a) for a in (*probe[name], probe[f"{name}_bound"]))
        assert np.all(np.abs(eight - one) <= bound), name


def test_sharded_block_equals_one_device_within_the_fp8_bound(run):
    """The block output on the (ep=4, tp=2) mesh is no further from the one-device output than one
    E4M3 rounding (relative 2**-4) of what the block adds to its input."""
    x, one, eight = (np.asarray(run["block"][k], np.float64) for k in ("x", "one", "eight"))
    assert np.all(np.isfinite(eight))
    assert np.linalg.norm(eight - one) <= 2.0**-4 * np.linalg.norm(one - x)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("ragged shared expert", r"shared_experts.gate_proj.weight: axis 0 \(length 192, blocks of 128"),
        ("tp=8 cuts q_b_proj's tiles", r"q_b_proj.weight: axis 0 \(length 512.*8 whole-block shards"),
        (
            "4 experts on ep=8",
            r"experts.0.gate_proj.weight \(and the other experts, stacked\): axis 0 \(length 4",
        ),
        ("unknown mesh axis", r"names mesh axis 'model', but the mesh has axes \('ep', 'tp'\)"),
        ("too many entries", r"has 3 entries but the tensor has 2 axes"),
        ("unknown role", r"the plan names \['q_prj'\], which are not tensors of the block"),
    ],
)
def test_plans_that_cut_a_tile_are_refused_before_any_read(run, case, message):
    import re

    kind, text, reads = run["errors"][case]
    assert kind == "ShapeError" and re.search(message, text), (kind, text)
    assert reads == 0
