"""The losses of MoE, one paper each. All are differentiable and unweighted (the layers
multiply by their coefficients). The per-token losses are means over tokens; the
importance and load losses are CV^2 of per-expert sums, which does not depend on the
number of tokens either.

How papers and libraries scale the load-balancing loss (ours equals 1 at perfect balance):

| source                               | formula                                     | at perfect balance |
|--------------------------------------|---------------------------------------------|--------------------|
| tinymoe ``load_balancing_loss``      | E * sum_i f_i P_i                           | 1                  |
| Switch Transformer (paper and code)  | alpha * E * sum_i f_i P_i  (k = 1)          | alpha              |
| GShard code                          | E * sum_e (c_e / S) m_e, c_e first choices  | 1                  |
| GShard paper's printed formula       | mean_e (c_e / S) m_e                        | 1 / E^2            |
| DeepSeekMoE expert-level             | sum_i f'_i P_i, f'_i = E/(kT) count_i       | 1 (same as ours)   |
| Mixtral (Hugging Face helper)        | E * sum_i (count_i / N) P_i, k counts/token | k                  |

(f_i: share of the N*k assignments that went to expert i; P_i: mean router probability.)

At the edges: a mean over no tokens (an empty batch) is 0, not 0/0, so every loss of an
empty batch is exactly 0 with zero gradients; and a loss whose value is finite has a finite
gradient (a gate of exactly 0, a noise scale of exactly 0, sigmoid scores that underflow).
"""

from tinymoe import functional as F
from tinymoe.backend import array_module, xp_of
from tinymoe.nn.checks import divisor
from tinymoe.tensor import Tensor
from tinymoe.validate import integer


def _mean_over_tokens(x) -> Tensor:
    """The mean over the first (token) axis, and 0 when there are no tokens: an empty batch
    adds no loss (a plain mean would be 0/0 = NaN, and NaN + any other loss is NaN)."""
    return F.sum(x, axis=0) / max(x.shape[0], 1)


# --------------------------------------------------------------------- 1991: Jacobs et al.


def cooperative_loss(target, expert_outputs, gates) -> Tensor:
    """Jacobs et al. (1991), eq. 1: E = ||d - sum_i p_i o_i||^2, mean over tokens.

    target (N, o), expert_outputs (N, E, o), gates (N, E). The experts cooperate: the
    gradient for o_i is -2 p_i (d - y_bar), so each one learns what the others leave over.
    """
    mixture = F.sum(F.unsqueeze(gates, -1) * expert_outputs, axis=1)
    diff = target - mixture
    return _mean_over_tokens(F.sum(diff * diff, axis=-1))


def _log_mixture(gates, fit):
    """m = log sum_i p_i exp(fit_i) per token, (N, 1), as plain numbers (no gradient): the
    shift of the log-sum-exp trick, taken over the gates p_i > 0 (log 0 = -inf, unwarned)."""
    p = gates.data if isinstance(gates, Tensor) else gates
    xp = array_module(p)
    used = p > 0
    log_terms = xp.where(used, xp.log(xp.where(used, p, 1)) + fit.data, -xp.inf)
    return F.logsumexp(Tensor(log_terms), axis=-1, keepdims=True).data.astype(fit.dtype)


def competitive_loss(target, expert_outputs, gates) -> Tensor:
    """Jacobs et al. (1991), eq. 3: E = -log sum_i p_i exp(-1/2 ||d - o_i||^2), mean over tokens.

    The experts compete: the gradient for o_i is -h_i (d - o_i), weighted by the posterior
    h_i = p_i exp(-1/2||d - o_i||^2) / sum_j (...), and the gate logit's gradient is p_i - h_i.
    """
    diff = F.unsqueeze(target, 1) - expert_outputs
    fit = -0.5 * F.sum(diff * diff, axis=-1)  # (N, E): each expert's Gaussian log-likelihood, up to a constant
    m = _log_mixture(gates, fit)  # the value of log sum_i p_i e^{fit_i}, held constant
    # E = -(m + log sum_i p_i e^{fit_i - m}): the sum is 1, so it cannot underflow, and p enters
    # linearly, not through log p, so a gate of exactly 0 keeps its gradient -e^{fit_i - m} (not 0/0)
    return -_mean_over_tokens(m[:, 0] + F.log(F.sum(gates * F.exp(fit - m), axis=-1)))


def posterior(target, expert_outputs, gates) -> Tensor:
    """h_i = p_i exp(-1/2||d - o_i||^2) / sum_j p_j exp(-1/2||d - o_j||^2): which expert the
    competitive loss holds responsible for each token (shifted by m as there, for the same reasons)."""
    diff = F.unsqueeze(target, 1) - expert_outputs
    fit = -0.5 * F.sum(diff * diff, axis=-1)
    weighted = gates * F.exp(fit - _log_mixture(gates, fit))
    return weighted / F.sum(weighted, axis=-1, keepdims=True)


# --------------------------------------------------------------- 2017: Shazeer et al.


def cv_squared(x) -> Tensor:
    """The squared coefficient of variation, Var(x) / Mean(x)^2 (population variance):
    0 when all entries are equal. A tiny epsilon keeps it finite when the mean is 0."""
    mean = F.mean(x)
    return F.var(x) / (mean * mean + 1e-10)


def importance_loss(gates) -> Tensor:
    """Shazeer et al. (2017), eq. 6-7: CV(Importance)^2, Importance_i = sum over the batch of G_i(x)."""
    return cv_squared(F.sum(gates, axis=0))


def kth_excluding(noisy_logits, k: int) -> Tensor:
    """For each token and expert i: the k-th largest noisy logit among the *other* experts.

    If i is in the top k, removing it moves the (k+1)-th largest up, so that is the
    threshold; otherwise it is the k-th largest. Differentiable through the chosen values.
    """
    k = integer("kth_excluding", "k", k, 1, noisy_logits.shape[-1] - 1)  # a (k+1)-th logit must exist
    values, _ = F.topk(noisy_logits, k + 1, axis=-1)
    kth, next_one = values[:, k - 1 : k], values[:, k : k + 1]
    in_top_k = noisy_logits.data >= kth.data  # ties at the k-th place count as in
    return F.where(in_top_k, next_one, kth)


def load_loss(clean_logits, noisy_logits, noise_std, k: int) -> Tensor:
    """Shazeer et al. (2017), Appendix A, eqs. 8-10: the smooth load estimator.

        P(x, i) = Phi(((x W_g)_i - kth_excluding(H(x), k, i)) / softplus((x W_noise)_i))
        Load_i  = sum_x P(x, i);   loss = CV(Load)^2

    P is the probability that expert i stays in the top k if only its own noise were drawn
    again. Clean logits and noisy thresholds are on the same (logit) scale.

    Where there is no noise (noise_std exactly 0, e.g. softplus underflowed) P is the limit
    of Phi(margin / std) as std -> 0: 1 above the threshold, 0 below, 1/2 on it, with zero
    gradient. (Dividing by 0 instead gives NaN on a tie, and a 0/0 = NaN gradient there.)
    """
    k = integer("load_loss", "k", k, 1, clean_logits.shape[-1] - 1)  # a (k+1)-th logit must exist
    margin = clean_logits - kth_excluding(noisy_logits, k)
    std = noise_std.data if isinstance(noise_std, Tensor) else noise_std
    no_noise = std == 0
    xp = xp_of(margin.device)
    step = (xp.sign(margin.data) + 1) / 2  # 1, 0 or 1/2
    prob = F.where(no_noise, step.astype(margin.dtype), F.normal_cdf(margin / F.where(no_noise, 1.0, noise_std)))
    return cv_squared(F.sum(prob, axis=0))


# ------------------------------------------------------------- 2020-2022: GShard, Switch


def expert_fraction(expert_index, n_experts: int):
    """f_i: the share of the N*k (token, choice) assignments that went to expert i (counted
    before any capacity drop). An array: counting has no gradient."""
    n_experts = integer("expert_fraction", "n_experts", n_experts, 1)
    xp = array_module(expert_index)
    counts = xp.bincount(expert_index.reshape(-1), minlength=n_experts)
    return counts / max(expert_index.size, 1)  # no assignments (an empty batch): all 0


def load_balancing_loss(probs, expert_index, n_experts: int) -> Tensor:
    """E * sum_i f_i P_i, with f_i = expert_fraction and P_i = mean router probability.

    Equals 1 at perfect balance (f_i = P_i = 1/E) and E when one expert takes everything.
    The gradient reaches the router through P only (f counts choices). Switch uses it with
    k = 1 and alpha = 0.01; GShard with the top-1 choices; DeepSeek's expert-level loss is the
    same quantity (f_i = E/(kT) count_i there, times P_i, summed).
    """
    f = expert_fraction(expert_index, n_experts).astype(probs.dtype)
    return n_experts * F.sum(_mean_over_tokens(probs) * f)


def z_loss(logits) -> Tensor:
    """Router z-loss (ST-MoE, Zoph et al. 2022, eq. 5): mean over tokens of logsumexp(x)^2.

    It pulls the log-partition function towards 0, keeping logits small so float32/bf16
    softmax stays accurate. Note: logsumexp squared, not the logits squared.
    """
    lse = F.logsumexp(logits, axis=-1)
    return _mean_over_tokens(lse * lse)


# ------------------------------------------------------------------------ DeepSeek


def device_balance_loss(probs, expert_index, n_experts: int, n_devices: int) -> Tensor:
    """DeepSeekMoE's device-level balance loss: experts split into D equal groups (devices);
    f'_d = mean of f_i in group d, P'_d = sum of P_i in group d; loss = sum_d f'_d P'_d,
    with f_i = E/(kT) count_i. Equals 1 at perfect balance."""
    n_experts = integer("device_balance_loss", "n_experts", n_experts, 1)
    n_devices = divisor("device_balance_loss", "n_devices", n_devices, "n_experts", n_experts)
    f = (n_experts * expert_fraction(expert_index, n_experts)).astype(probs.dtype)
    f_device = f.reshape(n_devices, -1).mean(axis=1)
    p_device = F.sum(F.reshape(_mean_over_tokens(probs), (n_devices, -1)), axis=1)
    return F.sum(p_device * f_device)


def sequence_balance_loss(scores, expert_index, n_experts: int, seq_len: int) -> Tensor:
    """DeepSeek-V3's sequence-wise balance loss (eqs. 17-20), mean over sequences:

        f_i = E / (k T) * #(tokens of the sequence that chose i)
        P_i = mean over the sequence of s'_{i,t},  s'_{i,t} = s_{i,t} / sum_j s_{j,t}
        loss = sum_i f_i P_i        (1 at perfect balance)

    scores (B*T, E) are the raw affinities (sigmoid in V3); tokens are ordered sequence by
    sequence, T = seq_len at a time. A token whose scores are all 0 (sigmoid underflow) has
    no s' to take (0/0): it counts as s' = 0. Where the logits are at hand, pass
    softmax(-softplus(-logits)) instead, the exact s' (DeepSeekMoE does).
    """
    n, k = expert_index.shape
    n_experts = integer("sequence_balance_loss", "n_experts", n_experts, 1)
    seq_len = divisor("sequence_balance_loss", "seq_len", seq_len, "n_tokens", n)
    xp = array_module(expert_index)
    b = n // seq_len
    onehot = xp.zeros((n, n_experts), scores.dtype)
    xp.put_along_axis(onehot, expert_index, 1.0, axis=-1)
    counts = onehot.reshape(b, seq_len, n_experts).sum(axis=1)  # (B, E)
    f = counts * (n_experts / (k * seq_len))
    total = F.sum(scores, axis=-1, keepdims=True)
    normalised = scores / F.where(total.data == 0, 1.0, total)
    p = F.mean(F.reshape(normalised, (b, seq_len, n_experts)), axis=1)
    return _mean_over_tokens(F.sum(p * f, axis=-1))  # the mean over sequences (0 for none)
