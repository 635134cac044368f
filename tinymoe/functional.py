"""``tm.F``: the functions a model is written with.

Everything in ``tinymoe.ops`` is re-exported here, plus a few compositions that are not
ops of their own because their gradient follows from the ops they are made of.
"""

from tinymoe.ops import *  # noqa: F403 - tm.F is the ops' public face
from tinymoe.ops import __all__ as _ops_all
from tinymoe.ops import matmul, mean


def linear(x, weight, bias=None):
    """y = x W + b with W of shape (d_in, d_out): the row-vector convention of this library."""
    y = matmul(x, weight)
    return y + bias if bias is not None else y


def mse_loss(prediction, target):
    """Mean squared error, mean over every element."""
    diff = prediction - target
    return mean(diff * diff)


__all__ = [*_ops_all, "linear", "mse_loss"]
