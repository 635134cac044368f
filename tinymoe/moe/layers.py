"""MoE layers, 1991 to 2024. Each is a router, experts and its paper's auxiliary losses.

Every layer: ``y, aux = layer(x)`` with x of shape (..., d_model) and y the same shape.
``aux`` maps names to already-weighted scalar losses (empty when there are none).
The layer returns only the experts' contribution (plus shared experts where the design
has them); the residual connection belongs to the block around it, so a dropped token
passes through that block unchanged. ``layer.last_routing`` keeps the last ``Routing``.

The sparse layers share one pipeline (``SparseMoE.forward``):

    tokens (N, d) -> router -> Routing -> make_plan -> permute -> experts -> unpermute -> y

Inputs follow the rule of every layer (``nn.checks.as_input``): floats of shape (..., d_model)
(a single token (d_model,) too), as a Tensor, array or list; integer or boolean tokens are
refused with a TypeError. An empty batch (0 tokens) gives an empty y and auxiliary losses of
exactly 0, whose gradients are zeros.
"""

from __future__ import annotations

import math

import numpy as np

from tinymoe import functional as F
from tinymoe.moe import losses
from tinymoe.moe.dispatch import make_plan, permute, unpermute
from tinymoe.moe.experts import Experts
from tinymoe.moe.routers import (
    CosineRouter,
    DeepSeekRouter,
    ExpertChoiceRouter,
    GShardRouter,
    NoisyTopKRouter,
    Routing,
    SoftmaxGate,
    SwitchRouter,
    TopKRouter,
)
from tinymoe.nn.checks import as_input, divisor
from tinymoe.nn.feedforward import FeedForward
from tinymoe.nn.layers import Linear, uniform
from tinymoe.nn.module import Module, Parameter
from tinymoe.validate import ArgumentTypeError, choice, integer, real


def loss_weight(owner: str, name: str, value) -> float:
    """An auxiliary loss's coefficient: finite and >= 0 (a negative one would reward imbalance)."""
    return real(owner, name, value, 0)


def mean_aux_over_layers(aux_dicts) -> dict:
    """Average each auxiliary loss over the layers that report it (DESIGN section 4).

    Balance losses are per layer: a model whose layers are each balanced scores 1 per layer,
    while pooling the tokens of all layers first would hide one layer's collapse behind
    another's opposite imbalance."""
    by_name: dict = {}
    for aux in aux_dicts:
        for name, value in aux.items():
            by_name.setdefault(name, []).append(value)
    return {name: sum(values[1:], values[0]) / len(values) for name, values in by_name.items()}


class SparseMoE(Module):
    """The token-choice pipeline every sparse layer below runs (subclasses add their losses).

    router:  any router returning a Routing over ``experts.n_experts`` experts
    experts: an ``Experts`` bank
    shared:  optional module applied to every token and added (DeepSeekMoE's shared experts)
    """

    def __init__(self, router: Module, experts: Experts, shared: Module | None = None):
        self.router, self.experts, self.shared = router, experts, shared
        self.d_model, self.n_experts = experts.d_model, experts.n_experts
        self.last_routing: Routing | None = None

    def forward(self, x, noise=None, uniform=None):
        x = as_input(self, x, "..., d_model", self.d_model)
        tokens = F.reshape(x, (-1, self.d_model))
        routing = self.router(tokens, noise=noise, uniform=uniform)
        self.last_routing = routing
        plan = make_plan(routing.expert_index, self.n_experts, routing.capacity, routing.dropped)
        ys = self.experts(permute(tokens, plan), plan)
        weight = routing.weight if routing.weight.dtype == x.dtype else F.astype(routing.weight, x.dtype)
        y = unpermute(ys, plan, weight)
        if self.shared is not None:
            y = y + self.shared(tokens)
        return F.reshape(y, x.shape), self.aux_losses(routing, x)

    def aux_losses(self, routing: Routing, x) -> dict:
        return {}


class NoisyTopKMoE(SparseMoE):
    """Shazeer et al. (2017): noisy top-k gating with the importance and load losses
    (w = 0.1 each in their LM experiments). Experts: relu FFNs."""

    def __init__(self, d_model: int, d_hidden: int, n_experts: int, k: int, w_importance: float = 0.1,
                 w_load: float = 0.1, activation: str = "relu"):
        super().__init__(NoisyTopKRouter(d_model, n_experts, k), Experts(n_experts, d_model, d_hidden, activation))
        self.k = self.router.k
        self.w_importance = loss_weight("NoisyTopKMoE", "w_importance", w_importance)
        self.w_load = loss_weight("NoisyTopKMoE", "w_load", w_load)

    def aux_losses(self, routing, x):
        aux = {}
        if self.w_importance:
            aux["importance"] = self.w_importance * losses.importance_loss(routing.probs)
        if self.w_load and "noisy_logits" in routing.extras and self.k < self.n_experts:
            e = routing.extras
            aux["load"] = self.w_load * losses.load_loss(e["clean_logits"], e["noisy_logits"], e["noise_std"], self.k)
        return aux


class GShardMoE(SparseMoE):
    """GShard (Lepikhin et al. 2020): top-2, capacity, random routing, and the aux loss
    E * sum_e (c_e / S) m_e with c_e the *first-choice* counts."""

    def __init__(self, d_model: int, d_hidden: int, n_experts: int, capacity_factor: float | None = 1.0,
                 second_policy: str = "random", aux_weight: float = 0.01, activation: str = "gelu"):
        router = GShardRouter(d_model, n_experts, capacity_factor, second_policy)
        super().__init__(router, Experts(n_experts, d_model, d_hidden, activation))
        self.aux_weight = loss_weight("GShardMoE", "aux_weight", aux_weight)

    def aux_losses(self, routing, x):
        if not self.aux_weight:
            return {}
        first = routing.expert_index[:, :1]
        return {"balance": self.aux_weight * losses.load_balancing_loss(routing.probs, first, self.n_experts)}


def _balance_and_z(routing: Routing, n_experts: int, aux_weight: float, z_weight: float) -> dict:
    """Switch's balance loss (alpha E sum f_i P_i) and ST-MoE's router z-loss, each if weighted."""
    aux = {}
    if aux_weight:
        aux["balance"] = aux_weight * losses.load_balancing_loss(routing.probs, routing.expert_index, n_experts)
    if z_weight:
        aux["z"] = z_weight * losses.z_loss(routing.logits)
    return aux


class SwitchMoE(SparseMoE):
    """Switch Transformer (Fedus et al. 2022): top-1, weight p_i, capacity factor, balance
    loss alpha = 0.01; with z_weight > 0 also ST-MoE's router z-loss (they use 1e-3)."""

    def __init__(self, d_model: int, d_hidden: int, n_experts: int, capacity_factor: float | None = 1.25,
                 aux_weight: float = 0.01, z_weight: float = 0.0, jitter: float = 0.0, activation: str = "relu"):
        router = SwitchRouter(d_model, n_experts, capacity_factor, jitter)
        super().__init__(router, Experts(n_experts, d_model, d_hidden, activation))
        self.aux_weight = loss_weight("SwitchMoE", "aux_weight", aux_weight)
        self.z_weight = loss_weight("SwitchMoE", "z_weight", z_weight)

    def aux_losses(self, routing, x):
        return _balance_and_z(routing, self.n_experts, self.aux_weight, self.z_weight)


class TopKMoE(SparseMoE):
    """Mixtral-style top-k: softmax, the k best, renormalised (``normalize``), SwiGLU experts.

    router="cosine" swaps in X-MoE's cosine router (Chi et al. 2022)."""

    def __init__(self, d_model: int, d_hidden: int, n_experts: int, k: int, normalize: bool = True,
                 activation: str = "swiglu", aux_weight: float = 0.01, z_weight: float = 0.0, router: str = "softmax"):
        kind = TopKRouter if choice("TopKMoE", "router", router, ("softmax", "cosine")) == "softmax" else CosineRouter
        experts = Experts(n_experts, d_model, d_hidden, activation)
        super().__init__(kind(d_model, n_experts, k, normalize=normalize), experts)
        self.aux_weight = loss_weight("TopKMoE", "aux_weight", aux_weight)
        self.z_weight = loss_weight("TopKMoE", "z_weight", z_weight)

    def aux_losses(self, routing, x):
        return _balance_and_z(routing, self.n_experts, self.aux_weight, self.z_weight)


class DeepSeekMoE(SparseMoE):
    """DeepSeekMoE / V2 / V3 (Dai et al. 2024; DeepSeek-AI 2024a, 2024b).

    - fine-grained experts: ``segments`` = m splits each of the n_routed experts into m
      experts of d_hidden / m, and routes to m * k of them (same compute, more combinations);
    - shared experts: ``n_shared`` experts of that size that every token uses, held as one
      dense FFN of hidden size n_shared * d_hidden / m (the sum of FFNs is one wider FFN);
    - routing: ``DeepSeekRouter`` (V1: score="softmax"; V2: + n_group/topk_group device
      limits; V3: score="sigmoid", the selection bias, normalise, routed_scale);
    - balance: V3's bias, changed by ``update_bias()`` after each optimiser step, plus the
      sequence-wise loss (seq_aux_weight); V1/V2's expert- and device-level losses
      (aux_weight, device_aux_weight; n_group groups are the "devices").
    """

    def __init__(self, d_model: int, d_hidden: int, n_routed: int, k: int, n_shared: int = 1, score: str = "sigmoid",
                 n_group: int = 1, topk_group: int = 1, routed_scale: float = 1.0, normalize: bool = True,
                 bias_update: float = 1e-3, seq_aux_weight: float = 1e-4, aux_weight: float = 0.0,
                 device_aux_weight: float = 0.0, segments: int = 1, activation: str = "swiglu"):
        owner = "DeepSeekMoE"
        # checked here, by these names, before they are combined (n_routed * segments experts,
        # k * segments active, d_hidden / segments wide): the router would see only the products
        d_hidden = integer(owner, "d_hidden", d_hidden, 1)
        n_routed = integer(owner, "n_routed", n_routed, 1)
        k = integer(owner, "k", k, 1, n_routed)
        n_shared = integer(owner, "n_shared", n_shared, 0)
        segments = divisor(owner, "segments", segments, "d_hidden", d_hidden)
        n_experts, k_active, width = n_routed * segments, k * segments, d_hidden // segments
        router = DeepSeekRouter(d_model, n_experts, k_active, score, n_group, topk_group, routed_scale, normalize,
                                bias_update)
        shared = FeedForward(d_model, n_shared * width, activation, bias=False) if n_shared else None
        super().__init__(router, Experts(n_experts, d_model, width, activation), shared)
        self.seq_aux_weight = loss_weight(owner, "seq_aux_weight", seq_aux_weight)
        self.aux_weight = loss_weight(owner, "aux_weight", aux_weight)
        self.device_aux_weight = loss_weight(owner, "device_aux_weight", device_aux_weight)

    def aux_losses(self, routing, x):
        aux, index, probs = {}, routing.expert_index, routing.probs
        if self.router.score == "sigmoid":
            # sigmoid scores do not sum to 1: normalise them per token, as V3 does (eq. 19), or
            # sum_i f_i P_i falls by shrinking every score towards 0 instead of by balancing.
            # s_i / sum_j s_j is softmax(log s), and log sigmoid(z) = -softplus(-z) stays exact
            # where sigmoid underflows to 0 (logits below -88 in float32), so no 0/0 here
            probs = F.softmax(-F.softplus(-routing.logits), axis=-1)
        if self.seq_aux_weight:
            # (B, T, d): T tokens a sequence; at least 1, so that an empty batch is 0 sequences
            seq_len = max(x.shape[-2] if x.ndim >= 3 else index.shape[0], 1)
            aux["sequence"] = self.seq_aux_weight * losses.sequence_balance_loss(probs, index, self.n_experts, seq_len)
        if self.aux_weight:
            aux["balance"] = self.aux_weight * losses.load_balancing_loss(probs, index, self.n_experts)
        if self.device_aux_weight:
            aux["device"] = self.device_aux_weight * losses.device_balance_loss(
                probs, index, self.n_experts, self.router.n_group)
        return aux

    def update_bias(self) -> None:
        """V3's aux-loss-free balancing: call after each optimiser step (uses the last batch)."""
        if self.last_routing is not None and self.router.bias_update:
            self.router.update_bias(self.last_routing.expert_index)


class ExpertChoiceMoE(SparseMoE):
    """Expert choice (Zhou et al. 2022): each expert takes its top C = N c / E tokens, so
    every expert is exactly full; no auxiliary loss. Runs in capacity mode (E, C, d)."""

    def __init__(self, d_model: int, d_hidden: int, n_experts: int, capacity_factor: float = 2.0,
                 activation: str = "gelu"):
        super().__init__(ExpertChoiceRouter(d_model, n_experts, capacity_factor),
                         Experts(n_experts, d_model, d_hidden, activation))


class MHMoE(Module):
    """Multi-head MoE (Wu et al. 2024, arXiv 2404.15045).

        X' = X W_head (d x d);  split each token into h sub-tokens of d/h (contiguous slices);
        route every sub-token through ``inner_moe`` (built for d_model // n_heads);
        merge the sub-tokens back (the inverse reshape);  Y = merged W_merge (d x d).

    We follow the authors' released code, not the paper's figure: there is *no* residual
    connection per sub-token inside the layer (the block's residual is outside it).

    ``inner_moe`` is any sparse layer of this module (a ``SparseMoE``: NoisyTopKMoE, GShardMoE,
    SwitchMoE, TopKMoE, DeepSeekMoE, ExpertChoiceMoE) or another MHMoE, built for
    d_model // n_heads. Anything else is refused here, at construction: the 1991
    ``MixtureOfLocalExperts`` and dense layers have no router to take ``noise``/``uniform``.
    (A DeepSeekMoE inside sees the sub-tokens of the whole batch as one sequence.)
    """

    def __init__(self, d_model: int, n_heads: int, inner_moe: Module):
        d_model = integer("MHMoE", "d_model", d_model, 1)
        n_heads = divisor("MHMoE", "n_heads", n_heads, "d_model", d_model)
        if not isinstance(inner_moe, (SparseMoE, MHMoE)):
            given = repr(inner_moe) if isinstance(inner_moe, type) else type(inner_moe).__name__  # a class: say so
            raise ArgumentTypeError(
                f"MHMoE: inner_moe must be a sparse MoE layer (a SparseMoE such as TopKMoE, or an MHMoE), got {given}"
            )
        sub = d_model // n_heads
        if inner_moe.d_model != sub:
            raise ValueError(f"MHMoE: inner_moe must be built for d_model // n_heads = {sub}, got {inner_moe.d_model}")
        self.d_model, self.n_heads = d_model, n_heads
        self.head = Linear(d_model, d_model)
        self.inner = inner_moe
        self.merge = Linear(d_model, d_model)

    @property
    def last_routing(self):
        return self.inner.last_routing

    @property
    def n_experts(self) -> int:
        return self.inner.n_experts

    def forward(self, x, noise=None, uniform=None):
        x = as_input(self, x, "..., d_model", self.d_model)
        sub_tokens = F.reshape(self.head(x), (-1, self.d_model // self.n_heads))  # (N * h, d / h)
        y, aux = self.inner(sub_tokens, noise=noise, uniform=uniform)
        return self.merge(F.reshape(y, x.shape)), aux


class MixtureOfLocalExperts(Module):
    """Adaptive mixtures of local experts (Jacobs, Jordan, Nowlan & Hinton 1991).

    E linear experts o_i = x W_i + b_i and a softmax gate p = softmax(x W_g + b_g). All
    experts see every input; ``forward`` returns the mixture y = sum_i p_i o_i, and
    ``loss(x, target)`` the paper's objective: "competitive" (eq. 3, used in their
    simulations) or "cooperative" (eq. 1).
    """

    LOSSES = ("competitive", "cooperative")

    def __init__(self, d_in: int, d_out: int, n_experts: int, loss: str = "competitive"):
        owner = "MixtureOfLocalExperts"
        self.d_in, self.d_out = integer(owner, "d_in", d_in, 1), integer(owner, "d_out", d_out, 1)
        self.n_experts = integer(owner, "n_experts", n_experts, 1)
        self.loss_kind = choice(owner, "loss", loss, self.LOSSES)
        self.gate = SoftmaxGate(d_in, n_experts)
        self.weight = uniform((n_experts, d_in, d_out), 1 / math.sqrt(d_in))
        self.bias = Parameter(np.zeros((n_experts, d_out), np.float32))
        self.last_routing: Routing | None = None

    def expert_outputs(self, x):
        """(N, d_in) -> (N, E, d_out): every expert on every input."""
        x = as_input(self, x, "N, d_in", self.d_in)
        out = F.matmul(F.unsqueeze(x, 0), self.weight) + F.unsqueeze(self.bias, 1)  # (E, N, o)
        return F.transpose(out, (1, 0, 2))

    def gates(self, x):
        self.last_routing = self.gate(x)
        return self.last_routing.probs

    def forward(self, x):
        outputs = self.expert_outputs(x)  # first: its input check names this layer
        return F.sum(F.unsqueeze(self.gates(x), -1) * outputs, axis=1), {}

    def loss(self, x, target):
        loss_fn = losses.competitive_loss if self.loss_kind == "competitive" else losses.cooperative_loss
        return loss_fn(target, self.expert_outputs(x), self.gates(x))
