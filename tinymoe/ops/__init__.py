"""Differentiable ops: one ``Function`` per op, its forward and backward side by side.

- ``elementwise``: arithmetic, exp/log, activations (relu, gelu, silu, softplus, erf...)
- ``reduce``: sum, mean, max, var
- ``shape``: matmul, reshape, transpose, expand, concat/stack/split, indexing
- ``index``: take, gather, scatter_add, index_add, embedding lookup
- ``nn``: softmax, log_softmax, logsumexp, cross_entropy, topk, layer/rms norm, dropout
"""

from tinymoe.ops.elementwise import (
    abs,
    add,
    astype,
    clip,
    div,
    erf,
    exp,
    gelu,
    log,
    maximum,
    mul,
    neg,
    normal_cdf,
    pow,
    relu,
    sigmoid,
    silu,
    softplus,
    sqrt,
    sub,
    tanh,
    where,
)
from tinymoe.ops.index import embedding, gather, index_add, scatter_add, take
from tinymoe.ops.nn import (
    cross_entropy,
    dropout,
    layer_norm,
    log_softmax,
    logsumexp,
    rms_norm,
    softmax,
    topk,
)
from tinymoe.ops.reduce import max, mean, sum, var
from tinymoe.ops.shape import (
    concat,
    expand,
    getitem,
    matmul,
    reshape,
    split,
    squeeze,
    stack,
    swapaxes,
    transpose,
    unsqueeze,
)

__all__ = [
    "abs", "add", "astype", "clip", "concat", "cross_entropy", "div", "dropout", "embedding",
    "erf", "exp", "expand", "gather", "gelu", "getitem", "index_add", "layer_norm", "log",
    "log_softmax", "logsumexp", "matmul", "max", "maximum", "mean", "mul", "neg", "normal_cdf",
    "pow", "relu", "reshape", "rms_norm", "scatter_add", "sigmoid", "silu", "softmax",
    "softplus", "split", "sqrt", "squeeze", "stack", "sub", "sum", "swapaxes", "take", "tanh",
    "topk", "transpose", "unsqueeze", "var", "where",
]  # fmt: skip
