"""breccia: one block-scaled low-precision tensor for numpy, JAX, MLX and PyTorch.

``import breccia`` imports no array framework; each is imported when one of its arrays arrives.
"""

from __future__ import annotations

from .checkpoints import convert, open_checkpoint
from .choices import FP8Format, RecipeConvention, ScaleFormat
from .errors import (
    BrecciaError,
    CopyError,
    DLPackError,
    DTypeError,
    FileFormatError,
    FrameworkError,
    LayoutError,
    MissingDependencyError,
    NotAnArrayError,
    RecipeError,
    ShapeError,
)
from .layouts import Layout, PerBlock2D, PerBlockK, PerRow, PerTensor
from .matmul import linear, matmul
from .quantize import cast, cast_with_history, dequantize, from_buffer, requantize
from .recipes import (
    DelayedScaling,
    Float8BlockScaling,
    Float8CurrentScaling,
    Int4Scaling,
    Int8Scaling,
    MXFP4BlockScaling,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
    Recipe,
    recipe_from_dict,
)
from .tensor import AmaxHistory, ScaledTensor

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # operations
    "cast",
    "cast_with_history",
    "dequantize",
    "from_buffer",
    "requantize",
    "matmul",
    # model directories
    "open_checkpoint",
    "convert",
    "linear",
    # types
    "ScaledTensor",
    "AmaxHistory",
    # recipes
    "Recipe",
    "Float8CurrentScaling",
    "DelayedScaling",
    "Float8BlockScaling",
    "MXFP8BlockScaling",
    "MXFP4BlockScaling",
    "NVFP4BlockScaling",
    "Int8Scaling",
    "Int4Scaling",
    "recipe_from_dict",
    "FP8Format",
    "ScaleFormat",
    "RecipeConvention",
    # layouts
    "Layout",
    "PerTensor",
    "PerRow",
    "PerBlockK",
    "PerBlock2D",
    # errors
    "BrecciaError",
    "RecipeError",
    "LayoutError",
    "ShapeError",
    "DTypeError",
    "NotAnArrayError",
    "FrameworkError",
    "CopyError",
    "DLPackError",
    "FileFormatError",
    "MissingDependencyError",
]
