"""Routers: for every token, which experts, and with what weight. One class per paper.

Every router maps tokens x (N, d) to a ``Routing``. Conventions (DESIGN section 4):
- gradients flow through the router's probabilities and the combine weights, never
  through the choice of experts (top-k indices are plain integer arrays);
- router math runs in float32 at least, even when the model runs in float16 (Switch's
  "selective precision"): exp of float16 logits overflows at 11.1;
- randomness is an argument: ``noise`` (standard normal, (N, E)) for noisy top-k,
  ``uniform`` ((N,) in [0, 1)) for GShard's random second expert or (N, d) for Switch's
  jitter; left as None, it is drawn from the library generator (``tm.manual_seed``). A given
  array of the wrong shape, not finite or (uniform) outside [0, 1) is refused by name;
- tokens follow the rule of every layer (``nn.checks.as_input``): float (N, d_model), a
  Tensor, array or list; integer or boolean tokens are refused. N = 0 gives an empty Routing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tinymoe import backend
from tinymoe import functional as F
from tinymoe.backend import array_module
from tinymoe.moe.dispatch import capacity, capacity_drop, fused_topk
from tinymoe.nn.checks import as_input, divisor
from tinymoe.nn.layers import normal
from tinymoe.nn.module import Module, Parameter
from tinymoe.tensor import Tensor
from tinymoe.validate import ArgumentTypeError, choice, integer, real


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


def _check_capacity_factor(owner: str, capacity_factor, optional: bool = False):
    """A finite factor > 0 (any size: the routers never make more than N rows per expert),
    or None (no capacity: dropless) where ``optional``."""
    if optional and capacity_factor is None:
        return None
    return real(owner, "capacity_factor", capacity_factor, 0, low_open=True)


def _capacity(capacity_factor: float, n_tokens: int, n_experts: int, k: int) -> int:
    """``capacity()``, but at most N: an expert gets at most one slot per token, so more rows
    would only be padding (and capacity_factor=1e300 would ask for more memory than exists)."""
    return min(capacity(capacity_factor, n_tokens, n_experts, k), max(n_tokens, 1))


def _draw(router: Router, x: Tensor, name: str, given, shape):
    """The caller's random array ``noise`` (standard normal) or ``uniform`` (in [0, 1)),
    checked, or a fresh one from the library generator."""
    shape = tuple(shape)
    if given is None:
        generator = backend.rng(x.device)
        return generator.standard_normal(shape) if name == "noise" else generator.random(shape)
    owner = type(router).__name__
    given = given.data if isinstance(given, Tensor) else given
    given = backend.to_device(backend.array_module(given).asarray(given), x.device)
    if given.shape != shape:
        raise ValueError(f"{owner}: {name} must have shape {shape}, got {given.shape}")
    if given.dtype.kind not in "iuf":
        raise ArgumentTypeError(f"{owner}: {name} must hold real numbers, got dtype {given.dtype}")
    if given.size and not bool(backend.array_module(given).isfinite(given).all()):
        raise ValueError(f"{owner}: {name} must be finite, got a NaN or infinite value")
    if name == "uniform" and given.size and not (0 <= given.min() and given.max() < 1):
        raise ValueError(f"{owner}: uniform must lie in [0, 1), got values from {given.min()} to {given.max()}")
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
        owner = type(self).__name__
        d_model, n_experts = integer(owner, "d_model", d_model, 1), integer(owner, "n_experts", n_experts, 1)
        init_std = 1 / math.sqrt(d_model) if init_std is None else real(owner, "init_std", init_std, 0)
        self.d_model, self.n_experts = d_model, n_experts
        self.w_gate = normal((d_model, n_experts), init_std)
        self.b_gate = Parameter(np.zeros(n_experts, np.float32)) if bias else None

    def __call__(self, x, noise=None, uniform=None) -> Routing:
        """Route the tokens x (N, d_model), checked by the one input rule of the layers."""
        return self.forward(as_input(self, x, "N, d_model", self.d_model), noise=noise, uniform=uniform)

    def logits(self, x: Tensor) -> Tensor:
        logits = F.matmul(router_precision(x), self.w_gate)
        return logits + self.b_gate if self.b_gate is not None else logits


class SoftmaxGate(Router):
    """The dense gate of Jacobs et al. (1991): p = softmax(x W_g + b_g); every expert is used."""

    def __init__(self, d_model: int, n_experts: int, bias: bool = True):
        super().__init__(d_model, n_experts, bias=bias)

    def forward(self, x, noise=None, uniform=None):
        logits = self.logits(x)
        probs = F.softmax(logits, axis=-1)
        xp = backend.xp_of(probs.device)
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
        super().__init__(d_model, n_experts)
        self.k, self.noisy = integer(type(self).__name__, "k", k, 1, self.n_experts), noisy
        self.w_gate = Parameter(np.zeros((d_model, n_experts), np.float32))
        self.w_noise = Parameter(np.zeros((d_model, n_experts), np.float32))

    def forward(self, x, noise=None, uniform=None):
        clean = self.logits(x)
        extras = {"clean_logits": clean}
        noisy = clean
        if self.training and self.noisy:
            std = F.softplus(F.matmul(router_precision(x), self.w_noise))
            eps = _draw(self, x, "noise", noise, clean.shape).astype(clean.dtype)  # float64 draws
            noisy = clean + eps * std
            extras.update(noisy_logits=noisy, noise_std=std)
        values, index = F.topk(noisy, self.k)
        weight = F.softmax(values, axis=-1)  # softmax over the k kept logits
        zeros = Tensor(backend.xp_of(weight.device).zeros(clean.shape, weight.dtype))
        gates = F.scatter_add(zeros, index, weight, axis=-1)  # G(x): (N, E), zero outside top k
        return Routing(noisy, gates, index, weight, _no_drops(index), extras=extras)


class TopKRouter(Router):
    """Softmax then top-k (Mixtral; and Switch/GShard/DeepSeek-V1 without renormalising).

    normalize=True renormalises the k chosen probabilities to sum to 1 (Mixtral). With k=1
    that makes every weight exactly 1, so the task loss gives the router no gradient at all:
    only an auxiliary loss can train it (a known tutorial bug; see the tests).
    """

    def __init__(self, d_model: int, n_experts: int, k: int, normalize: bool = True, init_std=None):
        super().__init__(d_model, n_experts, init_std)
        self.k, self.normalize = integer(type(self).__name__, "k", k, 1, self.n_experts), normalize

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
    ``jitter`` in [0, 1] multiplies the router input by U(1 - jitter, 1 + jitter) in training
    (above 1 the factor could flip a token's sign).
    """

    def __init__(self, d_model: int, n_experts: int, capacity_factor: float | None = 1.25, jitter: float = 0.0):
        owner = type(self).__name__
        d_model = integer(owner, "d_model", d_model, 1)  # before the init scale divides by it
        super().__init__(d_model, n_experts, init_std=math.sqrt(0.1 / d_model))
        self.capacity_factor = _check_capacity_factor(owner, capacity_factor, optional=True)
        self.jitter = real(owner, "jitter", jitter, 0, 1)

    def forward(self, x, noise=None, uniform=None):
        if self.training and self.jitter > 0:
            u = _draw(self, x, "uniform", uniform, x.shape)
            x = x * (1 - self.jitter + 2 * self.jitter * u).astype(x.dtype)
        logits = self.logits(x)
        probs = F.softmax(logits, axis=-1)
        weight, index = F.topk(probs, 1)
        cap, dropped = None, _no_drops(index)
        if self.capacity_factor is not None:
            cap = _capacity(self.capacity_factor, x.shape[0], self.n_experts, 1)
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
        owner = type(self).__name__
        super().__init__(d_model, integer(owner, "n_experts", n_experts, 2))  # top-2: two experts at least
        self.capacity_factor = _check_capacity_factor(owner, capacity_factor, optional=True)
        self.second_policy = choice(owner, "second_policy", second_policy, self.POLICIES)

    def forward(self, x, noise=None, uniform=None):
        logits = self.logits(x)
        probs = F.softmax(logits, axis=-1)
        top2, index = F.topk(probs, 2)
        weight = top2 / F.sum(top2, axis=-1, keepdims=True)  # normalised before dropping
        dropped = _no_drops(index)
        if self.second_policy == "random" and self.training:
            u = _draw(self, x, "uniform", uniform, (x.shape[0],))
            dropped[:, 1] = ~(2 * weight.data[:, 1] > u)
        cap = None
        if self.capacity_factor is not None:
            cap = _capacity(self.capacity_factor, x.shape[0], self.n_experts, 2)
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
        super().__init__(d_model, n_experts)
        owner, n_experts = type(self).__name__, self.n_experts
        self.k = integer(owner, "k", k, 1, n_experts)
        self.score = choice(owner, "score", score, ("softmax", "sigmoid"))
        self.n_group = divisor(owner, "n_group", n_group, "n_experts", n_experts)
        self.topk_group = integer(owner, "topk_group", topk_group, 1, self.n_group)
        held = self.topk_group * (n_experts // self.n_group)
        if self.k > held:
            raise ValueError(f"{owner}: k must be at most the {held} experts in the topk_group={self.topk_group} "
                             f"best groups, got {self.k}")
        self.routed_scale = real(owner, "routed_scale", routed_scale, 0, low_open=True)
        self.normalize = normalize
        self.bias_update = real(owner, "bias_update", bias_update, 0)
        self.register_buffer("bias", np.zeros(n_experts, np.float32))

    def forward(self, x, noise=None, uniform=None):
        logits = self.logits(x)
        if self.n_group == 1:  # on a GPU, one fused kernel (None on the CPU)
            fused = fused_topk(logits, self.k, self.score, self.normalize, self.routed_scale, self.bias.data, 1e-20)
            if fused is not None:
                scores, index, weight = fused
                return Routing(logits, scores, index, weight, _no_drops(index))
        scores = F.softmax(logits, axis=-1) if self.score == "softmax" else F.sigmoid(logits)
        xp = backend.xp_of(scores.device)
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
        grouped = choose.reshape(n, self.n_group, self.n_experts // self.n_group)  # no -1: N may be 0
        if self.score == "sigmoid":  # V3: a group's score is the sum of its two best experts
            group_score = xp.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)
        else:  # V2: a group (device) scores as its best expert
            group_score = grouped.max(axis=-1)
        best = xp.argsort(-group_score, axis=-1, kind="stable")[:, : self.topk_group]
        keep = xp.zeros((n, self.n_group), bool)
        xp.put_along_axis(keep, best, True, axis=-1)
        return xp.where(keep[..., None], grouped, -xp.inf).reshape(choose.shape)

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
        self.capacity_factor = _check_capacity_factor(type(self).__name__, capacity_factor)

    def forward(self, x, noise=None, uniform=None):
        logits = self.logits(x)
        probs = F.softmax(logits, axis=-1)
        n = x.shape[0]
        cap = _capacity(self.capacity_factor, n, self.n_experts, 1)
        xp = backend.xp_of(probs.device)
        chosen = xp.zeros(probs.shape, bool)
        if n:  # an empty batch has no tokens to choose
            _, tokens = F.topk(probs, cap, axis=0)  # (C, E): each expert's chosen tokens, best first
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
        d_route = integer(type(self).__name__, "d_route", d_route, 1)
        temperature = real(type(self).__name__, "temperature", temperature, 0, low_open=True)
        del self.w_gate  # replaced by the projection and the expert embeddings
        self.w_proj = normal((d_model, d_route), 1 / math.sqrt(d_model))
        self.expert_embed = normal((n_experts, d_route), 1.0)
        self.temperature = Parameter(np.array(temperature, np.float32))

    def logits(self, x):
        z = F.matmul(router_precision(x), self.w_proj)
        z = z / F.sqrt(F.sum(z * z, axis=-1, keepdims=True) + 1e-12)
        e = self.expert_embed / F.sqrt(F.sum(self.expert_embed * self.expert_embed, axis=-1, keepdims=True) + 1e-12)
        return F.matmul(z, F.transpose(e)) / self.temperature
