"""Every scale-rounding rule breccia reproduces, each named with the peers (and versions) that use it.

This is the one list: ``recipes.py`` takes the names of its E8M0 roundings (``scale_rounding=``) from
it, ``scaling.py`` computes each rule, and ``docs/recipes.md`` shows :func:`markdown_table` (a test
keeps the page equal to it). A rule is how a block's statistics become its stored scale; the
element encode that follows is the recipe's (``docs/numerics.md``). ``tests/test_scale_rules.py``
holds golden bytes for each rule, taken from the peers that use it, and checks them against every
peer of the rule that is installed.

To add a peer's rule: give it an entry here (its formula and who uses it), compute it in
``scaling.py`` (one implementation for every backend) and register it in ``scaling.RULES`` under
its recipe type and convention, and add its golden bytes to the test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "PeerUse",
    "ScaleRule",
    "SCALE_RULES",
    "E8M0_ROUNDINGS",
    "scale_rule",
    "rules_used_by",
    "markdown_table",
]


@dataclass(frozen=True)
class PeerUse:
    """One peer that computes a rule: its name, the versions (``"all"``, ``">= 0.32.2"``,
    ``"<= 0.32.1"``) and, where it matters, the device or mode (``"CPU, Metal"``, ``"RCEIL"``)."""

    peer: str
    versions: str = "all"
    where: str = ""

    def covers(self, version: str | None) -> bool:
        """True if this use holds for ``version`` (None: any version)."""
        if version is None or self.versions == "all":
            return True
        match = re.fullmatch(r"(<=|>=)\s*([\d.]+)", self.versions)
        if match is None:
            return self.versions == version
        ours, theirs = _version_tuple(match.group(2)), _version_tuple(version)
        return theirs <= ours if match.group(1) == "<=" else theirs >= ours


@dataclass(frozen=True)
class ScaleRule:
    """A scale rule: what the stored scale is, as a formula, and the breccia recipe that computes it."""

    name: str
    scale: str  # the stored scale's format: "E8M0", "fp32", "E4M3 + fp32"
    formula: str
    recipe: str
    used_by: tuple[PeerUse, ...]


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


_RULES = (
    ScaleRule(
        "floor", "E8M0", "e = floor(log2 amax) - emax_elem",
        'MXFP8BlockScaling/MXFP4BlockScaling(scale_rounding="floor")',
        (PeerUse("OCP MX v1.0"), PeerUse("torchao", "all", "MXTensor FLOOR (default)")),
    ),
    ScaleRule(
        "ceil", "E8M0", "e = ceil(log2(fl32(amax / max)))",
        'MXFP8BlockScaling/MXFP4BlockScaling(scale_rounding="ceil")',
        (PeerUse("TransformerEngine", "all", "MXFP8"), PeerUse("cuBLAS", "all", "UE8M0 block quantization"),
         PeerUse("torchao", ">= 0.18", "MXTensor RCEIL compiled on sm_100+ (cvt.rp.satfinite.ue8m0x2)"),
         PeerUse("MLX", ">= 0.32.2", "CPU, Metal"), PeerUse("MLX", "all", "CUDA")),
    ),
    ScaleRule(
        "ceil_f32_log2", "E8M0", "e = ceil(fl32(log2(fl32(amax / max)))): log2 rounded to float32 first",
        'MXFP8BlockScaling/MXFP4BlockScaling(scale_rounding="ceil_f32_log2")',
        (PeerUse("torchao", ">= 0.18", "MXTensor RCEIL eager, and on the CPU (torch.log2)"),),
    ),
    ScaleRule(
        "nearest", "E8M0", "e = round(log2(fl32(amax / max))), ties decided exactly",
        'MXFP8BlockScaling/MXFP4BlockScaling(scale_rounding="nearest")',
        (PeerUse("MLX", "<= 0.32.1", "CPU, Metal"),),
    ),
    ScaleRule(
        "even", "E8M0",
        "e = floor(log2 amax') - emax_elem, amax' = amax with its mantissa rounded to the element's "
        "(half up, carrying into the exponent)",
        'MXFP8BlockScaling/MXFP4BlockScaling(scale_rounding="even")',
        (PeerUse("torchao", "all", "MXTensor EVEN (float32 input)"),
         PeerUse("compressed-tensors", ">= 0.20", "generate_mx_scales, MXFP4 (llm-compressor's observers)")),
    ),
    ScaleRule(
        "ggml", "E8M0", "byte = floor(fl32(log2 amax)) - 2 + 127, wrapped mod 256 below 0",
        'MXFP4BlockScaling(convention="ggml")',
        (PeerUse("ggml / llama.cpp", "all", "quantize_row_mxfp4_ref"),
         PeerUse("gguf-py", ">= 0.19", "gguf.quants")),
    ),
    ScaleRule(
        "te", "fp32", "q = max / amax (capped to finite), scale = fl32(1 / q)",
        'Float8CurrentScaling(), Float8BlockScaling(convention="te"), DelayedScaling()',
        (PeerUse("TransformerEngine", "all", "current and block scaling"),),
    ),
    ScaleRule(
        "torchao", "fp32", "s = amax / max in the input dtype, floored at eps",
        'Float8CurrentScaling(convention="torchao")',
        (PeerUse("torchao", "all", "Float8Tensor"),),
    ),
    ScaleRule(
        "deepseek", "fp32", "s = max(amax, 1e-4) * fl32(1/448)",
        'Float8BlockScaling(convention="deepseek")',
        (PeerUse("DeepSeek-V3", "all", "inference/kernel.py act_quant"),),
    ),
    ScaleRule(
        "deepseek-ue8m0", "fp32 power of 2", "s = 2**ceil(fl32(log2(max(amax, 1e-4) * fl32(1/448))))",
        'Float8BlockScaling(convention="deepseek", power_2_scale=True)',
        (PeerUse("DeepSeek-V3.1", "all", 'act_quant scale_fmt="ue8m0"'),),
    ),
    ScaleRule(
        "nvfp4", "E4M3 + fp32", "g = amax_t / 2688 (a multiplier), s_b = e4m3(amax_b / 6 / g)",
        "NVFP4BlockScaling()",
        (PeerUse("TransformerEngine", "all", "NVFP4"), PeerUse("torchao", "all", "NVFP4Tensor"),
         PeerUse("NVIDIA ModelOpt", "all", "weight_scale_2")),
    ),
    ScaleRule(
        "nvfp4-divisor", "E4M3 + fp32", "g = fl32(1 / amax_t) * 2688 (a divisor), s_b = e4m3(amax_b / 6 * g)",
        'NVFP4BlockScaling(convention="compressed-tensors")',
        (PeerUse("compressed-tensors", ">= 0.20", "weight_global_scale"),),
    ),
    ScaleRule(
        "nvfp4-one-level", "E4M3", "s_b = e4m3(min(amax_b / 6, 448)), no global scale",
        'NVFP4BlockScaling(convention="mlx")',
        (PeerUse("MLX", "all", "mx.quantize nvfp4 without global_scale"),
         PeerUse("mlx-lm", "all", "nvfp4 layers")),
    ),
)

#: The rules by name.
SCALE_RULES: dict[str, ScaleRule] = {rule.name: rule for rule in _RULES}

#: The E8M0 roundings an MX recipe's ``scale_rounding`` takes (ggml's is a convention of its own).
E8M0_ROUNDINGS: tuple[str, ...] = ("floor", "ceil", "ceil_f32_log2", "nearest", "even")


def scale_rule(name: str) -> ScaleRule:
    """The rule called ``name``; an unknown name raises KeyError listing the known ones."""
    try:
        return SCALE_RULES[name]
    except KeyError:
        raise KeyError(f"no scale rule {name!r}; known: {', '.join(SCALE_RULES)}") from None


def rules_used_by(peer: str, version: str | None = None) -> list[tuple[ScaleRule, PeerUse]]:
    """The rules ``peer`` (case-insensitive, e.g. ``"MLX"``, ``"torchao"``) computes at ``version``
    (None: at any version), each with the use that names it (its device or mode)."""
    return [
        (rule, use)
        for rule in _RULES
        for use in rule.used_by
        if use.peer.lower() == peer.lower() and use.covers(version)
    ]


def markdown_table() -> str:
    """The rules as the Markdown table ``docs/recipes.md`` shows: one row per (rule, peer use)."""
    lines = [
        "| rule | scale | formula | breccia recipe | peer | versions | where |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule in _RULES:
        for use in rule.used_by:
            lines.append(
                f"| `{rule.name}` | {rule.scale} | `{rule.formula}` | `{rule.recipe}` | {use.peer} | "
                f"{use.versions} | {use.where} |"
            )
    return "\n".join(lines)
