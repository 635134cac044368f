"""Routers: for every token, which experts, and with what weight. One class per paper.

Every router maps tokens x (N, d) to a ``Routing``. Conventions (DESIGN section 4):
- gradients flow through the router's probabilities and the combine weights, never
  through the choice of experts (top-k indices are plain integer arrays);
- router math runs in float32 at least, even when the model runs in float16 (Switch's
  "selective precision"): exp of float16 logits overflows at 11.1;
- randomness is an argument: ``noise`` (standard normal, (N, E)) for noisy top-k,
  ``uniform`` ((N,) in [0, 1)) for GShard's random second expert or (N, d) for Switch's
  jitter; left as None, it is drawn from the library generator (``tm.manual_seed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tinymoe import backend
from tinymoe import functional as F
from tinymoe.backend import array_module
from tinymoe.moe.dispatch import capacity, capacity_drop, fused_topk
from tinymoe.nn.layers import normal
from tinymoe.nn.module import Module, Parameter
from tinymoe.tensor import Tensor


@dataclass
class Routing:
    """What a router decided, for the layer, the losses and the plots.

    logits:       (N, E) router logits
    probs:        (N, E) the scores the balance losses use (softmax or sigmoid)
    expert_index: (N, k) int array, chosen experts, best first
    weight:       (N, k) combine weights, 0 where dropped; differentiable
    dropped:      (N, k) bool array, all False when dropless
    capacity:     rows per expert when the router enforced one, else None
    extras:       router-specific tensors (e.g. noisy top-k's clean/noisy logits, noise std)
    """

    logits: Tensor
    probs: Tensor
    expert_index: object
    weight: Tensor
    dropped: object
    capacity: int | None = None
    extras: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.expert_index.shape[1]


def router_precision(x: Tensor) -> Tensor:
    """float16/bfloat16 inputs go to float32 for the router; float32/64 stay as they are."""
    return F.astype(x, np.float32) if x.dtype.itemsize < 4 else x


def check_k(k: int, n_experts: int) -> None:
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= n_experts:
        raise ValueError(f"k must be an integer in [1, n_experts={n_experts}], got {k!r}")


def _check_tokens(name: str, x: Tensor, d_model: int) -> None:
    if x.ndim != 2 or x.shape[1] != d_model:
        raise ValueError(f"{name}: tokens must be (N, d_model={d_model}), got shape {x.shape}")


def _draw(device: str, given, shape, kind: str):
    """The caller's random array, checked, or a fresh one from the library generator."""
    if given is None:
        generator = backend.rng(device)
        return generator.standard_normal(shape) if kind == "normal" else generator.random(shape)
    given = given.data if isinstance(given, Tensor) else given
    if tuple(given.shape) != tuple(shape):
        raise ValueError(f"{kind} noise must have shape {tuple(shape)}, got {tuple(given.shape)}")
    return given


def _no_drops(expert_index):
    return array_module(expert_index).zeros(expert_index.shape, bool)


def _mask_dropped(weight: Tensor, dropped) -> Tensor:
    """weight with dropped slots set to exactly 0 (and no gradient through them)."""
    if not dropped.any():
        return weight
    return F.where(dropped, 0.0, weight)


class Router(Module):
    """A linear router: logits = x W_gate (+ b_gate), W_gate of shape (d_model, n_experts)."""

    def __init__(self, d_model: int, n_experts: int, init_std: float | None = None, bias: bool = False):
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        self.d_model, self.n_experts = d_model, n_experts
        self.w_gate = normal((d_model, n_experts), 1 / math.sqrt(d_model) if init_std is None else init_std)
        self.b_gate = Parameter(np.zeros(n_experts, np.float32)) if bias else None

    def logits(self, x: Tensor) -> Tensor:
        _check_tokens(type(self).__name__, x, self.d_model)
        logits = F.matmul(router_precision(x), self.w_gate)
        return logits + self.b_gate if self.b_gate is not None else logits


class SoftmaxGate(Router):
    """The dense gate of Jacobs et al. (1991): p = softmax(x W_g + b_g); every expert is used."""

    def __init__(self, d_model: int, n_experts: int, bias: bool = True):
        super().__init__(d_model, n_experts, bias=bias)

    def forward(self, x, noise=None, uniform=None):
        logits = self.logits(x)
        probs = F.softmax(logits, axis=-1)
        xp = array_module(probs.data)
        index = xp.broadcast_to(xp.arange(self.n_experts), probs.shape).copy()
        return Routing(logits, probs, index, probs, _no_drops(index))


class NoisyTopKRouter(Router):
    """Noisy top-k gating (Shazeer et al. 2017, eqs. 3-5).

        H(x)_i = (x W_g)_i + eps_i * softplus((x W_noise)_i),   eps ~ N(0, 1), training only
        G(x)   = softmax(KeepTopK(H(x), k))                      (-inf outside the top k)

    W_g and W_noise start at zero (the paper's init: no signal and some noise, since the
    noise scale is softplus(0) = ln 2; the choice of experts starts out random).
    ``probs`` is G (zeros outside the top k): Importance sums it over the batch.
    """

    def __init__(self, d_model: int, n_experts: int, k: int, noisy: bool = True):
        check_k(k, n_experts)
        super().__init__(d_model, n_experts)
        self.k, self.noisy = k, noisy
        self.w_gate = Parameter(np.zeros((d_model, n_experts), np.float32))
        self.w_noise = Parameter(np.zeros((d_model, n_experts), np.float32))

    def forward(self, x, noise=None, uniform=None):
        clean = self.logits(x)
        extras = {"clean_logits": clean}
        noisy = clean
        if self.training and self.noisy:
            std = F.softplus(F.matmul(router_precision(x), self.w_noise))
            eps = _draw(x.device, noise, clean.shape, "normal").astype(clean.dtype)  # float64 draws
            noisy = clean + eps * std
            extras.update(noisy_logits=noisy, noise_std=std)
        values, index = F.topk(noisy, self.k)
        weight = F.softmax(values, axis=-1)  # softmax over the k kept logits
        zeros = Tensor(array_module(weight.data).zeros(clean.shape, weight.dtype))
        gates = F.scatter_add(zeros, index, weight, axis=-1)  # G(x): (N, E), zero outside top k
        return Routing(noisy, gates, index, weight, _no_drops(index), extras=extras)


class TopKRouter(Router):
    """Softmax then top-k (Mixtral; and Switch/GShard/DeepSeek-V1 without renormalising).

    normalize=True renormalises the k chosen probabilities to sum to 1 (Mixtral). With k=1
    that makes every weight exactly 1, so the task loss gives the router no gradient at all:
    only an auxiliary loss can train it (a known tutorial bug; see the tests).
    """

    def __init__(self, d_model: int, n_experts: int, k: int, normalize: bool = True, init_std=None):
        check_k(k, n_experts)
        super().__init__(d_model, n_experts, init_std)
        self.k, self.normalize = k, normalize

    def scores(self, x):
        """(logits, probs) before top-k; the cosine router overrides this."""
        logits = self.logits(x)
        return logits, F.softmax(logits, axis=-1)

    def forward(self, x, noise=None, uniform=None):
        if type(self).scores is TopKRouter.scores:  # plain softmax scores: on a GPU, one fused kernel
            logits = self.logits(x)
            fused = fused_topk(logits, self.k, "softmax", self.normalize)  # None on the CPU
            if fused is not None:
                probs, index, weight = fused
                return Routing(logits, probs, index, weight, _no_drops(index))
            probs = F.softmax(logits, axis=-1)
        else:
            logits, probs = self.scores(x)
        weight, index = F.topk(probs, self.k)
        if self.normalize:
            weight = weight / F.sum(weight, axis=-1, keepdims=True)
        return Routing(logits, probs, index, weight, _no_drops(index))


class SwitchRouter(Router):
    """Switch Transformer (Fedus et al. 2022): top-1, weight = p_i (not renormalised),
    capacity = ceil(capacity_factor * N / E), overflow dropped (the residual carries it).

    Router weights start small: N(0, 0.1 / d_model), the paper's reduced init scale.
    ``jitter`` > 0 multiplies the router input by U(1 - jitter, 1 + jitter) in training.
    """

    def __init__(self, d_model: int, n_experts: int, capacity_factor: float | None = 1.25, jitter: float = 0.0):
        super().__init__(d_model, n_experts, init_std=math.sqrt(0.1 / d_model))
        if capacity_factor is not None:
            capacity(capacity_factor, 1, 1)  # validates > 0
        self.capacity_factor, self.jitter = capacity_factor, jitter

    def forward(self, x, noise=None, uniform=None):
        if self.training and self.jitter > 0:
            u = _draw(x.device, uniform, x.shape, "uniform")
            x = x * (1 - self.jitter + 2 * self.jitter * u).astype(x.dtype)
        logits = self.logits(x)
        probs = F.softmax(logits, axis=-1)
        weight, index = F.topk(probs, 1)
        cap, dropped = None, _no_drops(index)
        if self.capacity_factor is not None:
            cap = capacity(self.capacity_factor, x.shape[0], self.n_experts, 1)
            dropped = capacity_drop(index, self.n_experts, cap)
        return Routing(logits, probs, index, _mask_dropped(weight, dropped), dropped, cap)


class GShardRouter(Router):
    """GShard's top-2 gating (Lepikhin et al. 2020, Algorithm 1), over one group of N tokens.

    g1, g2 = the two largest softmax probabilities, normalised by g1 + g2 (before any
    dropping); the second expert is kept only if 2 * g2 > u, u ~ U(0, 1) ("random
    routing", second_policy="random"; "all" always keeps it); capacity
    C = ceil(capacity_factor * 2N / E), first choices filling it before second choices.
    """

    POLICIES = ("random", "all")

    def __init__(self, d_model: int, n_experts: int, capacity_factor: float | None = 1.0, second_policy="random"):
        if n_experts < 2:
            raise ValueError(f"GShard routes to 2 experts: n_experts must be >= 2, got {n_experts}")
        if second_policy not in self.POLICIES:
            raise ValueError(f"second_policy must be one of {self.POLICIES}, got {second_policy!r}")
        super().__init__(d_model, n_experts)
        if capacity_factor is not None:
            capacity(capacity_factor, 1, 1)
        self.capacity_factor, self.second_policy = capacity_factor, second_policy

    def forward(self, x, noise=None, uniform=None):
        logits = self.logits(x)
        probs = F.softmax(logits, axis=-1)
        top2, index = F.topk(probs, 2)
        weight = top2 / F.sum(top2, axis=-1, keepdims=True)  # normalised before dropping
        dropped = _no_drops(index)
        if self.second_policy == "random" and self.training:
            u = _draw(x.device, uniform, (x.shape[0],), "uniform")
            dropped[:, 1] = ~(2 * weight.data[:, 1] > u)
        cap = None
        if self.capacity_factor is not None:
            cap = capacity(self.capacity_factor, x.shape[0], self.n_experts, 2)
            dropped = capacity_drop(index, self.n_experts, cap, dropped)
        return Routing(logits, probs, index, _mask_dropped(weight, dropped), dropped, cap)


class DeepSeekRouter(Router):
    """DeepSeekMoE / V2 / V3 routing over ``n_experts`` routed experts.

    scores s = softmax(x W) (V1, V2) or sigmoid(x W) (V3).
    Selection uses s + bias, where ``bias`` is a buffer changed only by ``update_bias``
    (V3's auxiliary-loss-free balancing); the weights use the unbiased s.
    Group-limited selection (n_group > 1): experts form n_group equal groups; keep the
    topk_group best groups, scored by their max (V2, device-limited) or the sum of their two
    best biased scores (V3), then take the top k inside them.
    Weights: s at the chosen experts, renormalised if ``normalize``, times ``routed_scale``.
    """

    def __init__(self, d_model: int, n_experts: int, k: int, score: str = "sigmoid", n_group: int = 1,
                 topk_group: int = 1, routed_scale: float = 1.0, normalize: bool = True, bias_update: float = 0.0):
        check_k(k, n_experts)
        if score not in ("softmax", "sigmoid"):
            raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
        if n_group < 1 or n_experts % n_group:
            raise ValueError(f"n_group must be >= 1 and divide n_experts={n_experts}, got {n_group}")
        if not 1 <= topk_group <= n_group:
            raise ValueError(f"topk_group must lie in [1, n_group={n_group}], got {topk_group}")
        if k > topk_group * (n_experts // n_group):
            held = topk_group * (n_experts // n_group)
            raise ValueError(f"k={k} is more than the experts in the {topk_group} kept groups ({held})")
        super().__init__(d_model, n_experts)
        self.k, self.score, self.n_group, self.topk_group = k, score, n_group, topk_group
        self.routed_scale, self.normalize, self.bias_update = routed_scale, normalize, bias_update
        self.register_buffer("bias", np.zeros(n_experts, np.float32))

    def forward(self, x, noise=None, uniform=None):
        logits = self.logits(x)
        if self.n_group == 1:  # on a GPU, one fused kernel (None on the CPU)
            fused = fused_topk(logits, self.k, self.score, self.normalize, self.routed_scale, self.bias.data, 1e-20)
            if fused is not None:
                scores, index, weight = fused
                return Routing(logits, scores, index, weight, _no_drops(index))
        scores = F.softmax(logits, axis=-1) if self.score == "softmax" else F.sigmoid(logits)
        xp = array_module(scores.data)
        choose = scores.data + self.bias.data  # selection only: no gradient, weights stay unbiased
        if self.n_group > 1:
            choose = self._keep_best_groups(choose)
        index = xp.argsort(-choose, axis=-1, kind="stable")[:, : self.k]  # lowest index wins ties
        weight = F.gather(scores, index, axis=-1)
        if self.normalize:
            weight = weight / (F.sum(weight, axis=-1, keepdims=True) + 1e-20)
        weight = weight * self.routed_scale
        return Routing(logits, scores, index, weight, _no_drops(index))

    def _keep_best_groups(self, choose):
        """Set the scores of experts outside the topk_group best groups to -inf."""
        xp = array_module(choose)
        n = choose.shape[0]
        grouped = choose.reshape(n, self.n_group, -1)
        if self.score == "sigmoid":  # V3: a group's score is the sum of its two best experts
            group_score = xp.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)
        else:  # V2: a group (device) scores as its best expert
            group_score = grouped.max(axis=-1)
        best = xp.argsort(-group_score, axis=-1, kind="stable")[:, : self.topk_group]
        keep = xp.zeros((n, self.n_group), bool)
        xp.put_along_axis(keep, best, True, axis=-1)
        return xp.where(keep[..., None], grouped, -xp.inf).reshape(n, -1)

    def update_bias(self, expert_index) -> None:
        """V3's balancing step, after each training step: b_i += gamma * sign(mean_load - load_i).

        Overloaded experts get a lower bias (chosen less), idle ones a higher bias."""
        xp = array_module(expert_index)
        load = xp.bincount(expert_index.reshape(-1), minlength=self.n_experts).astype(np.float32)
        self.bias.data = self.bias.data + np.float32(self.bias_update) * xp.sign(load.mean() - load)


class ExpertChoiceRouter(Router):
    """Expert choice (Zhou et al. 2022): S = softmax(x W_g) over experts, then each expert
    takes its top C = ceil(capacity_factor * N / E) tokens. No balance loss is needed (every
    expert gets exactly C); a token may get several experts or none.

    In the token view of ``Routing`` every token has E slots (expert_index[n, e] = e);
    slots not chosen by their expert are ``dropped`` and have weight 0.
    """

    def __init__(self, d_model: int, n_experts: int, capacity_factor: float = 2.0):
        super().__init__(d_model, n_experts)
        capacity(capacity_factor, 1, 1)
        self.capacity_factor = capacity_factor

    def forward(self, x, noise=None, uniform=None):
        logits = self.logits(x)
        probs = F.softmax(logits, axis=-1)
        n = x.shape[0]
        cap = min(n, capacity(self.capacity_factor, n, self.n_experts, 1))
        _, tokens = F.topk(probs, cap, axis=0)  # (C, E): each expert's chosen tokens, best first
        xp = array_module(tokens)
        chosen = xp.zeros(probs.shape, bool)
        xp.put_along_axis(chosen, tokens, True, axis=0)
        index = xp.broadcast_to(xp.arange(self.n_experts), probs.shape).copy()
        weight = probs * chosen.astype(probs.dtype)
        return Routing(logits, probs, index, weight, ~chosen, cap)


class CosineRouter(TopKRouter):
    """X-MoE routing (Chi et al. 2022): project the token to a small space, compare it with
    learned expert embeddings by cosine similarity, divide by a learnable temperature:

        logits_i = cos(x W_proj, e_i) / tau,   then softmax and top-k as in TopKRouter.

    Cosine scores are bounded, so no expert can win just by growing its embedding.
    """

    def __init__(self, d_model: int, n_experts: int, k: int, d_route: int = 16, normalize: bool = True,
                 temperature: float = 0.07):
        super().__init__(d_model, n_experts, k, normalize)
        del self.w_gate  # replaced by the projection and the expert embeddings
        self.w_proj = normal((d_model, d_route), 1 / math.sqrt(d_model))
        self.expert_embed = normal((n_experts, d_route), 1.0)
        self.temperature = Parameter(np.array(temperature, np.float32))

    def logits(self, x):
        _check_tokens(type(self).__name__, x, self.d_model)
        z = F.matmul(router_precision(x), self.w_proj)
        z = z / F.sqrt(F.sum(z * z, axis=-1, keepdims=True) + 1e-12)
        e = self.expert_embed / F.sqrt(F.sum(self.expert_embed * self.expert_embed, axis=-1, keepdims=True) + 1e-12)
        return F.matmul(z, F.transpose(e)) / self.temperature
