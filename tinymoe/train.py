"""Training a small MoE language model: named configs, the loop, evaluation, checkpoints.

One step:  batch -> model -> cross-entropy + auxiliary losses -> backward -> clip ->
           learning-rate schedule -> AdamW step -> DeepSeek-V3 bias update -> statistics

Every named config (``CONFIGS``) is one family of the course on the same data, so their
numbers can be compared side by side. Runs are reproducible: the same seed gives the
same losses, and a run resumed from a checkpoint continues exactly as if never stopped
(the checkpoint holds the model, the optimiser, both random generators and the history).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from tinymoe import backend, data
from tinymoe.models import LSTMMoELM, TransformerLM
from tinymoe.moe import (
    DeepSeekMoE,
    ExpertChoiceMoE,
    GShardMoE,
    MHMoE,
    NoisyTopKMoE,
    SwitchMoE,
    TopKMoE,
)
from tinymoe.ops.nn import NonFiniteError
from tinymoe.optim import AdamW, clip_grad_norm, warmup_cosine
from tinymoe.serialization import load, save
from tinymoe.tensor import no_grad


@dataclass
class Config:
    """Everything that defines a run. ``layer`` names the MoE family (None: dense)."""

    name: str
    layer: str | None = "topk"
    layer_args: dict = field(default_factory=dict)
    model: str = "transformer"  # or "lstm" (Shazeer et al.'s LSTM-MoE)
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_hidden: int = 128  # of each expert (and of the dense FFNs)
    n_experts: int = 8
    k: int = 2
    moe_every: int = 1
    context: int = 64
    batch_size: int = 16
    steps: int = 1000
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.0
    clip: float = 1.0
    corpus: str = "multi_domain"
    corpus_chars: int = 60_000
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 100
    seed: int = 0


CONFIGS = {
    c.name: c
    for c in [
        Config("dense", layer=None, d_hidden=256),  # as wide as two 128-wide experts (active params: lesson 04)
        Config("mixtral", layer="topk"),
        Config("noisy-topk", layer="noisy-topk", model="lstm", layer_args={"activation": "relu"}),
        Config("gshard", layer="gshard", layer_args={"capacity_factor": 1.0}),
        Config("switch", layer="switch", k=1, layer_args={"capacity_factor": 1.25}),
        Config("glam", layer="gshard", n_layers=4, moe_every=2, layer_args={"capacity_factor": 2.0}),
        Config("st-moe", layer="switch", k=1, layer_args={"capacity_factor": 1.25, "z_weight": 1e-3}),
        Config("deepseek-v1", layer="deepseek", k=1, d_hidden=128, layer_args=dict(
            score="softmax", segments=2, n_shared=1, normalize=False, bias_update=0.0, seq_aux_weight=0.0,
            aux_weight=0.01)),
        Config("deepseek-v2", layer="deepseek", k=1, layer_args=dict(
            score="softmax", segments=2, n_shared=1, normalize=False, n_group=4, topk_group=2, bias_update=0.0,
            seq_aux_weight=0.0, aux_weight=0.01, device_aux_weight=0.01)),
        Config("deepseek-v3", layer="deepseek", k=1, layer_args=dict(
            score="sigmoid", segments=2, n_shared=1, normalize=True, n_group=4, topk_group=2, bias_update=1e-3,
            seq_aux_weight=1e-4)),
        Config("expert-choice", layer="expert-choice", layer_args={"capacity_factor": 2.0}),
        Config("mh-moe", layer="mh-moe", layer_args={"n_heads": 4}),
        Config("xmoe", layer="topk", layer_args={"router": "cosine"}),
    ]
}

DESCRIPTIONS = {
    "dense": "no MoE: one gelu FFN of width 256, as wide as two 128-wide experts together",
    "mixtral": "top-2 of 8 SwiGLU experts, renormalised (Mixtral), balance loss 0.01",
    "noisy-topk": "LSTM -> noisy top-2 MoE -> LSTM (Shazeer et al. 2017), importance + load losses",
    "gshard": "top-2, capacity factor 1.0, random second expert (GShard)",
    "switch": "top-1, capacity factor 1.25, balance loss 0.01 (Switch Transformer)",
    "glam": "GShard gating in every other block of a 4-block decoder (GLaM)",
    "st-moe": "Switch routing plus the router z-loss 1e-3 (ST-MoE)",
    "deepseek-v1": "fine-grained (m=2) + 1 shared expert, softmax, expert-level loss (DeepSeekMoE)",
    "deepseek-v2": "v1 + device-limited routing over 4 groups, device-level loss (DeepSeek-V2)",
    "deepseek-v3": "sigmoid scores, bias balancing (no aux loss), tiny sequence loss (DeepSeek-V3)",
    "expert-choice": "each expert takes its top C tokens, capacity factor 2 (Zhou et al. 2022)",
    "mh-moe": "4 sub-tokens per token through a top-2 MoE (MH-MoE)",
    "xmoe": "top-2 with cosine routing and a learned temperature (X-MoE)",
}


def get_config(name: str, **overrides) -> Config:
    """A named config, optionally with some fields replaced (e.g. steps=50)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; valid names: {', '.join(CONFIGS)}")
    return dataclasses.replace(CONFIGS[name], **overrides)


# ----------------------------------------------------------------------------- building


def make_layer(config: Config, d_model: int | None = None):
    """The MoE layer of a config, for width d_model (default: the model's)."""
    d, f, e, k, args = d_model or config.d_model, config.d_hidden, config.n_experts, config.k, config.layer_args
    if config.layer == "topk":
        return TopKMoE(d, f, e, k, **args)
    if config.layer == "noisy-topk":
        return NoisyTopKMoE(d, f, e, k, **args)
    if config.layer == "gshard":
        return GShardMoE(d, f, e, **args)
    if config.layer == "switch":
        return SwitchMoE(d, f, e, **args)
    if config.layer == "deepseek":
        return DeepSeekMoE(d, f, e, k, **args)
    if config.layer == "expert-choice":
        return ExpertChoiceMoE(d, f, e, **args)
    if config.layer == "mh-moe":
        heads, inner_args = args["n_heads"], {name: v for name, v in args.items() if name != "n_heads"}
        return MHMoE(d, heads, TopKMoE(d // heads, f // heads, e, k, **inner_args))  # the rest: the inner layer's
    raise ValueError(f"unknown layer family {config.layer!r}")


def make_model(config: Config, vocab_size: int):
    backend.manual_seed(config.seed)
    moe = (lambda: make_layer(config)) if config.layer else None
    if config.model == "lstm":
        return LSTMMoELM(vocab_size, config.d_model, moe)
    return TransformerLM(vocab_size, config.context, config.d_model, config.n_heads, config.n_layers,
                         config.d_hidden, moe, config.moe_every)


# --------------------------------------------------------------------------- statistics


def routing_stats(layer) -> dict:
    """Per-layer numbers for one batch: expert load (share of kept assignments), drop rate,
    router entropy (nats, mean over tokens), mean squared logsumexp (what z-loss penalises),
    and DeepSeek-V3's bias."""
    r = layer.last_routing
    kept = r.expert_index[~r.dropped]
    load = np.bincount(backend.to_numpy(kept), minlength=r.probs.shape[-1]).astype(float)
    probs = backend.to_numpy(r.probs.data).astype(np.float64)
    p = probs / np.maximum(probs.sum(axis=-1, keepdims=True), 1e-12)
    logits = backend.to_numpy(r.logits.data).astype(np.float64)
    m = logits.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[:, 0]
    stats = {
        "load": (load / max(load.sum(), 1)).tolist(),
        "drop_rate": float(r.dropped.mean()) if r.dropped.size else 0.0,
        "entropy": float(-(p * np.log(np.maximum(p, 1e-12))).sum(axis=-1).mean()),
        "z": float((lse**2).mean()),
    }
    bias = getattr(layer.router, "bias", None) if hasattr(layer, "router") else None
    if bias is not None and getattr(layer.router, "bias_update", 0):
        stats["bias"] = backend.to_numpy(bias.data).tolist()
    return stats


def load_cv(load) -> float:
    """Coefficient of variation of expert loads: 0 when perfectly balanced."""
    load = np.asarray(load, dtype=float)
    return float(load.std() / load.mean()) if load.mean() > 0 else 0.0


# ------------------------------------------------------------------------------ training


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _rng_state_json(data_rng) -> str:
    return json.dumps({"library": backend.get_rng_state(), "data": data_rng.bit_generator.state})


def _restore_rng(text: str, data_rng) -> None:
    state = json.loads(text)
    backend.set_rng_state(state["library"])
    data_rng.bit_generator.state = state["data"]


@dataclass
class Run:
    config: Config
    model: object
    corpus: data.TextCorpus
    history: list = field(default_factory=list)  # one dict per step
    evals: list = field(default_factory=list)  # one dict per evaluation


def evaluate(model, corpus, config: Config, batches: int | None = None) -> dict:
    """Validation loss and perplexity on fixed windows, plus which experts were ever used."""
    model.eval()
    rng = np.random.default_rng(12345)  # the same windows at every evaluation
    losses, used = [], {}
    with no_grad():
        for _ in range(batches or config.eval_batches):
            x, y = data.random_windows(corpus.val_ids, config.batch_size, config.context, rng)
            loss, _ = model.loss(x, y)
            losses.append(loss.item())
            for i, layer in enumerate(model.moe_layers()):
                r = layer.last_routing
                used.setdefault(i, set()).update(backend.to_numpy(r.expert_index[~r.dropped]).ravel().tolist())
    model.train()
    val = float(np.mean(losses))
    dead = [layer.n_experts - len(used.get(i, ())) for i, layer in enumerate(model.moe_layers())]
    return {"val_loss": val, "perplexity": math.exp(val), "dead_experts": dead}


def train(config: Config, out_dir=None, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> Run:
    """Train ``config``; with ``out_dir``, checkpoint to out_dir/checkpoint.npz every
    ``checkpoint_every`` steps (and resume from it when ``resume``). ``stop_after`` ends
    the run early, as an interruption would (the schedule still spans ``config.steps``)."""
    corpus = data.load_corpus(config.corpus, config.corpus_chars, seed=config.seed)
    model = make_model(config, corpus.vocab_size)
    optimizer = AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    data_rng = np.random.default_rng(config.seed)
    run = Run(config, model, corpus)
    path = os.path.join(out_dir, "checkpoint.npz") if out_dir else None
    start = 0
    if resume:
        start = _resume(path, config, model, optimizer, data_rng, run)
    bar = tqdm(range(start, config.steps), desc=config.name, unit="step", disable=not progress,
               initial=start, total=config.steps)
    for step in bar:
        if stop_after is not None and step >= stop_after:
            break
        tick = time.perf_counter()
        x, y = data.random_windows(corpus.train_ids, config.batch_size, config.context, data_rng)
        try:
            loss, aux = model.loss(x, y)
            total = sum(aux.values(), loss)
            if not math.isfinite(total.item()):
                raise NonFiniteError(f"the loss is {total.item()}")
        except NonFiniteError as error:
            kept = f"; the last good checkpoint ({path}) is kept" if path and os.path.exists(path) else ""
            raise TrainingDiverged(f"{config.name}: training diverged at step {step} ({error}){kept}") from error
        optimizer.zero_grad()
        total.backward()
        clip_grad_norm(model.parameters(), config.clip)
        optimizer.lr = warmup_cosine(step, config.lr, config.warmup, config.steps, min_lr=config.lr / 10)
        optimizer.step()
        for layer in model.moe_layers():
            if hasattr(layer, "update_bias"):
                layer.update_bias()  # DeepSeek-V3: after the optimiser step
        record = {"step": step, "loss": loss.item(), "aux": {k: v.item() for k, v in aux.items()},
                  "layers": [routing_stats(layer) for layer in model.moe_layers()],
                  "tokens_per_s": x.size / (time.perf_counter() - tick)}
        run.history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", aux=f"{sum(record['aux'].values()):.4f}",
                        tok_s=f"{record['tokens_per_s']:.0f}")
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            run.evals.append({"step": step + 1, **evaluate(model, corpus, config)})
        if path and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
            os.makedirs(out_dir, exist_ok=True)
            save({"config": json.dumps(dataclasses.asdict(config)), "step": step + 1, "model": model,
                  "optimizer": optimizer, "rng": _rng_state_json(data_rng),
                  "history": json.dumps({"history": run.history, "evals": run.evals})}, path)
    bar.close()
    return run


def _resume(path, config, model, optimizer, data_rng, run) -> int:
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(f"resume: no checkpoint at {path}")
    state = load(path)
    saved = json.loads(str(state["config"]))
    current = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples -> lists, as saved
    if {k: v for k, v in saved.items() if k != "steps"} != {k: v for k, v in current.items() if k != "steps"}:
        raise ValueError(f"resume: {path} was saved by config {saved['name']!r} with other settings; "
                         f"it cannot continue {config.name!r} (only 'steps' may change)")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    _restore_rng(str(state["rng"]), data_rng)
    past = json.loads(str(state["history"]))
    run.history, run.evals = past["history"], past["evals"]
    return int(state["step"])


def expert_by_domain(run: Run, layer: int = 0, max_windows: int = 32) -> np.ndarray | None:
    """(domains, experts): the share of each domain's validation characters whose first
    choice in MoE layer ``layer`` was each expert (None for a corpus without domains).
    For MH-MoE, each character counts once per sub-token."""
    corpus, config, model = run.corpus, run.config, run.model
    if corpus.val_domains is None or not model.moe_layers():
        return None
    n_domains, moe = len(corpus.domain_names), model.moe_layers()[layer]
    table = np.zeros((n_domains, moe.n_experts))
    inputs, _ = data.sequential_windows(corpus.val_ids, config.context)
    domains, _ = data.sequential_windows(corpus.val_domains, config.context)
    model.eval()
    with no_grad():
        for start in range(0, min(len(inputs), max_windows), config.batch_size):
            model(inputs[start : start + config.batch_size])
            first = backend.to_numpy(moe.last_routing.expert_index[:, 0])
            d = domains[start : start + config.batch_size].reshape(-1)
            np.add.at(table, (np.repeat(d, len(first) // len(d)), first), 1)
    model.train()
    return table / np.maximum(table.sum(axis=1, keepdims=True), 1)


def summary_table(run: Run) -> str:
    """The end-of-run table: validation loss/perplexity, expert load balance, drops."""
    last = run.evals[-1] if run.evals else evaluate(run.model, run.corpus, run.config)
    recent = run.history[-20:]
    lines = [f"{'config':<14}{'val loss':>9}{'ppl':>8}{'load CV':>9}{'dropped':>9}{'dead':>6}",
             f"{run.config.name:<14}{last['val_loss']:>9.3f}{last['perplexity']:>8.2f}"]
    if recent and recent[0]["layers"]:
        cv = np.mean([load_cv(layer["load"]) for r in recent for layer in r["layers"]])
        drop = np.mean([layer["drop_rate"] for r in recent for layer in r["layers"]])
        lines[-1] += f"{cv:>9.3f}{drop:>9.1%}{sum(last['dead_experts']):>6d}"
    else:
        lines[-1] += f"{'-':>9}{'-':>9}{'-':>6}"
    return "\n".join(lines)
