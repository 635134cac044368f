"""tinymoe: a from-scratch Mixture-of-Experts library and course on a small autograd engine.

    import tinymoe as tm
    x = tm.tensor([[1.0, 2.0]], requires_grad=True)
    y = tm.F.softmax(x).sum()
    y.backward()
"""

from tinymoe import functional as F
from tinymoe import moe, nn, optim
from tinymoe.backend import cuda_available, manual_seed
from tinymoe.gradcheck import gradcheck
from tinymoe.serialization import load, save
from tinymoe.tensor import Tensor, no_grad, tensor

__version__ = "0.1.0"

__all__ = [
    "F", "Tensor", "cuda_available", "gradcheck", "load", "manual_seed", "moe", "nn", "no_grad",
    "optim", "save", "tensor",
]  # fmt: skip
