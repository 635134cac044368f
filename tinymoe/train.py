"""Training a small MoE language model: named configs, the loop, evaluation, checkpoints.

One step:  batch -> model -> cross-entropy + auxiliary losses -> backward -> clip ->
           learning-rate schedule -> AdamW step -> DeepSeek-V3 bias update -> statistics

Every named config (``CONFIGS``) is one family of the course on the same data, so their
numbers can be compared side by side. Runs are reproducible: the same seed gives the
same losses, and a run resumed from a checkpoint continues exactly as if never stopped
(the checkpoint holds the model, the optimiser, both random generators and the history).

Nothing is lost when something goes wrong: a diverged run stops with the step named and
the last checkpoint written from finite weights left in place; a damaged checkpoint is
refused with the field named; two trainings into one run folder cannot run at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from tinymoe import backend, data, validate
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

    def __post_init__(self):
        """Check the numbers the training loop uses itself (each layer checks its own), so a
        bad value fails here, naming the field, and not in the middle of a run."""
        owner = f"Config {self.name!r}"
        for name in ("steps", "batch_size", "context", "corpus_chars", "eval_every", "eval_batches",
                     "checkpoint_every"):
            validate.integer(owner, name, getattr(self, name), 1)
        validate.integer(owner, "warmup", self.warmup, 0)
        validate.integer(owner, "seed", self.seed, 0)
        validate.real(owner, "lr", self.lr, 0, None, low_open=True)
        validate.real(owner, "weight_decay", self.weight_decay, 0)
        validate.real(owner, "clip", self.clip, 0, None, low_open=True)
        validate.choice(owner, "model", self.model, ("transformer", "lstm"))
        validate.choice(owner, "corpus", self.corpus, data.CORPORA)


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


def token_assignments(routing, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """What each token really got, for every router: two (n_tokens, E) arrays, the number
    of its kept (not dropped) routing slots that went to each expert, and the combine
    weight those slots carry.

    Token choice gives each token k slots (expert_index[:, 0] is its first choice); expert
    choice gives each token E slots, expert_index[n, e] = e, dropped where expert e did not
    pick token n, so expert_index[:, 0] is always 0 and says nothing. Counting the kept
    slots is right for both. With MH-MoE the routing rows are sub-tokens, token n's h
    sub-tokens being rows n h ... n h + h - 1; they are added up into their token.
    """
    index = backend.to_numpy(routing.expert_index)
    kept = ~backend.to_numpy(routing.dropped)
    weight = backend.to_numpy(routing.weight.data).astype(np.float64)
    rows_per_token = len(index) // n_tokens
    token = np.repeat(np.arange(n_tokens), rows_per_token * index.shape[1]).reshape(index.shape)
    counts = np.zeros((n_tokens, routing.probs.shape[-1]))
    weights = np.zeros_like(counts)
    np.add.at(counts, (token[kept], index[kept]), 1)
    np.add.at(weights, (token[kept], index[kept]), weight[kept])
    return counts, weights


def main_expert(routing, n_tokens: int) -> np.ndarray:
    """(n_tokens,): the expert that got the largest combine weight for each token, or -1
    for a token that no expert processed (all its slots dropped, or, under expert choice,
    picked by no expert)."""
    counts, weights = token_assignments(routing, n_tokens)
    best = np.where(counts > 0, weights, -np.inf).argmax(axis=1)
    return np.where(counts.sum(axis=1) > 0, best, -1)


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
    """The loss, the gradients or the validation loss stopped being finite (or grew past
    any finite perplexity); the last checkpoint, written from finite weights, is kept."""


class CheckpointError(ValueError):
    """A file that ``tm.load`` reads but that is not a complete training checkpoint of this
    format; the message names the field."""


class RunFolderBusy(RuntimeError):
    """Another process is training into the same run folder."""


class RunFolderUnusable(ValueError):
    """The run folder is a file, or cannot be created or written."""


# exp(709.78) is the largest float64: a cross-entropy above it has no finite perplexity,
# and a model that far from a uniform guess (the log of the vocabulary size, ~4) diverged
MAX_LOSS = math.log(sys.float_info.max)

CHECKPOINT = "checkpoint.npz"
CHECKPOINT_FORMAT = 2  # 2: the optimiser's step count per parameter, and the schedule's length


class RunFolderLock:
    """An exclusive lock on a run folder, taken when created (like ``open``) and released by
    ``release()``, at the end of a ``with`` block, or when the process ends.

    The folder is created if needed and checked first: a file, a path through a file or a
    folder we cannot write raises RunFolderUnusable naming it, before any training. The
    lock is ``fcntl.flock`` on ``<folder>/train.lock``, which holds the owner's pid for the
    message; a second process gets RunFolderBusy naming the folder and that pid. The kernel
    drops a flock when its process ends, however it ends, so a crashed run leaves no stale
    lock (the file stays, and means nothing by itself). Locking a folder this process
    already holds does nothing (the CLI holds it around ``train``, which takes it too).
    """

    _held: set[str] = set()  # the folders this process holds, by real path

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        self.key = os.path.realpath(self.folder)
        self.descriptor = None  # stays None when this process held the folder already
        if self.key in RunFolderLock._held:
            return
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise RunFolderUnusable(f"the run folder {self.folder} is a file, not a folder")
        try:
            os.makedirs(self.folder, exist_ok=True)
            tempfile.TemporaryFile(dir=self.folder).close()  # can we write here? (checkpoints need it)
            descriptor = os.open(os.path.join(self.folder, "train.lock"), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise RunFolderUnusable(f"cannot use {self.folder} as a run folder: {error.strerror}") from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise RunFolderBusy(f"the run folder {self.folder} is in use by another training (pid {owner}); wait "
                                "for it to finish or choose another folder (--out)") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        self.descriptor = descriptor
        RunFolderLock._held.add(self.key)

    def release(self) -> None:
        if self.descriptor is not None:
            RunFolderLock._held.discard(self.key)
            os.close(self.descriptor)  # closing the file drops the flock
            self.descriptor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()


def _rng_state_json(data_rng) -> str:
    return json.dumps({"library": backend.get_rng_state(), "data": data_rng.bit_generator.state})


def _restore_rng(state: dict, data_rng) -> None:
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
    perplexity = math.exp(val) if val <= MAX_LOSS else math.inf  # math.exp would raise OverflowError
    return {"val_loss": val, "perplexity": perplexity, "dead_experts": dead}


def train(config: Config, out_dir=None, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> Run:
    """Train ``config``; with ``out_dir`` (the run folder), checkpoint to
    out_dir/checkpoint.npz every ``checkpoint_every`` steps and at the end, and resume from
    it when ``resume``. ``stop_after`` ends the run early, as an interruption would.

    The run folder is locked for the whole call (:class:`RunFolderLock`): a second
    training into it from another process is refused before it starts.

    The learning-rate schedule (warm-up, then cosine decay to lr / 10) spans the number of
    steps the run was first started with, which the checkpoint keeps. Resuming with a
    larger ``config.steps`` continues that same schedule, so the extra steps run at the
    final rate lr / 10 and nothing jumps at the resume step; a smaller one (not below the
    saved step) only ends the run sooner.

    Raises TrainingDiverged, naming the step, when the loss, the gradient norm or the
    validation loss is NaN or infinite, or a loss is past MAX_LOSS (no finite perplexity).
    A checkpoint is only written from finite weights and optimiser state, so the one on
    disk is always the last good one.
    """
    if stop_after is not None:
        validate.integer("train", "stop_after", stop_after, 0)
    if resume and out_dir is None:
        raise ValueError("train: resume=True needs out_dir, the run folder that holds the checkpoint")
    with RunFolderLock(out_dir) if out_dir is not None else contextlib.nullcontext():
        return _train(config, out_dir, resume, progress, stop_after)


def _train(config: Config, out_dir, resume: bool, progress: bool, stop_after: int | None) -> Run:
    corpus = data.load_corpus(config.corpus, config.corpus_chars, seed=config.seed)
    model = make_model(config, corpus.vocab_size)
    optimizer = AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    data_rng = np.random.default_rng(config.seed)
    run = Run(config, model, corpus)
    path = os.path.join(out_dir, CHECKPOINT) if out_dir is not None else None
    start, schedule_steps = _resume(path, config, model, optimizer, data_rng, run) if resume else (0, config.steps)
    saved_step = start if resume else None  # the step of the checkpoint on disk from this run

    def diverged(step: int, reason: str) -> TrainingDiverged:
        kept = f"; the last good checkpoint ({path}, from step {saved_step}) is kept" if saved_step is not None else ""
        return TrainingDiverged(f"{config.name}: training diverged at step {step} ({reason}){kept}")

    bar = tqdm(range(start, config.steps), desc=config.name, unit="step", disable=not progress,
               initial=start, total=config.steps)
    for step in bar:
        if stop_after is not None and step >= stop_after:
            break
        tick = time.perf_counter()
        x, y = data.random_windows(corpus.train_ids, config.batch_size, config.context, data_rng)
        try:
            loss, aux = model.loss(x, y)
        except NonFiniteError as error:  # cross_entropy refuses NaN/inf logits
            raise diverged(step, str(error)) from error
        total = sum(aux.values(), loss)
        if problem := _loss_problem("the loss", total.item()):
            raise diverged(step, problem)
        optimizer.zero_grad()
        total.backward()
        norm = clip_grad_norm(model.parameters(), config.clip)
        if not math.isfinite(norm):
            raise diverged(step, f"the gradient norm is {norm}")
        optimizer.lr = warmup_cosine(step, config.lr, config.warmup, schedule_steps, min_lr=config.lr / 10)
        optimizer.step()
        for layer in model.moe_layers():
            if hasattr(layer, "update_bias"):
                layer.update_bias()  # DeepSeek-V3: after the optimiser step
        record = {"step": step, "loss": loss.item(), "lr": optimizer.lr, "aux": {k: v.item() for k, v in aux.items()},
                  "layers": [routing_stats(layer) for layer in model.moe_layers()],
                  "tokens_per_s": x.size / (time.perf_counter() - tick)}
        run.history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", aux=f"{sum(record['aux'].values()):.4f}",
                        tok_s=f"{record['tokens_per_s']:.0f}")
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            try:
                result = evaluate(model, corpus, config)
            except NonFiniteError as error:
                raise diverged(step, f"evaluation after it: {error}") from error
            if problem := _loss_problem("the validation loss", result["val_loss"]):
                raise diverged(step, problem)
            run.evals.append({"step": step + 1, **result})
        if path and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
            if bad := _first_non_finite({"model": model.state_dict(), "optimizer": optimizer.state_dict()}):
                raise diverged(step, f"{bad} is not finite after the update")
            _save_checkpoint(path, config, step + 1, schedule_steps, model, optimizer, data_rng, run)
            saved_step = step + 1
    bar.close()
    return run


def _loss_problem(name: str, value: float) -> str | None:
    """Why a loss ``value`` shows that the run diverged, or None when it does not."""
    if not math.isfinite(value):
        return f"{name} is {value}"
    if value > MAX_LOSS:
        return f"{name} is {value:.4g}, so large that its perplexity exp({value:.4g}) overflows"
    return None


def _first_non_finite(states: dict) -> str | None:
    """The name ("model/experts.w1") of the first array holding a NaN or inf, or None."""
    for group, state in states.items():
        for name, value in state.items():
            if not np.isfinite(value).all():
                return f"{group}/{name}"
    return None


def _save_checkpoint(path, config, step, schedule_steps, model, optimizer, data_rng, run) -> None:
    save({"format": CHECKPOINT_FORMAT, "config": json.dumps(dataclasses.asdict(config)), "step": step,
          "schedule_steps": schedule_steps, "model": model, "optimizer": optimizer, "rng": _rng_state_json(data_rng),
          "history": json.dumps({"history": run.history, "evals": run.evals})}, path)


_KINDS = {"group": "a group of arrays", "int": "a whole number", "json": "a JSON object (a string)"}


def _describe(value) -> str:
    if isinstance(value, dict):
        return "a group of arrays"
    return f"a {value.dtype} array of shape {value.shape}"


def _resume(path, config, model, optimizer, data_rng, run) -> tuple[int, int]:
    """Restore a run from ``path``; returns (the saved step, the schedule's length).

    Every field is checked against what ``_save_checkpoint`` writes, so a damaged file
    raises one CheckpointError naming the field (missing, of the wrong kind, an array of
    the wrong shape or dtype, a negative step...): never a bare KeyError or a silent cast.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"resume: no checkpoint at {path}")
    state = load(path)

    def field(name: str, kind: str):
        """state[name] as ``kind`` ("group", "int" or "json"), or a CheckpointError naming it."""
        if name not in state:
            raise CheckpointError(f"resume: {path} has no field {name!r} (damaged, not a training checkpoint, or "
                                  "written by another version of tinymoe)")
        value = state[name]
        if kind == "group" and isinstance(value, dict):
            return value
        if isinstance(value, np.ndarray) and value.ndim == 0:
            if kind == "int" and value.dtype.kind in "iu":
                return int(value)
            if kind == "json" and value.dtype.kind == "U":
                try:
                    parsed = json.loads(str(value))
                except json.JSONDecodeError as error:
                    raise CheckpointError(f"resume: {path}: field {name!r} is not valid JSON ({error})") from error
                if isinstance(parsed, dict):
                    return parsed
        raise CheckpointError(f"resume: {path}: field {name!r} must be {_KINDS[kind]}, got {_describe(value)}")

    version = field("format", "int")
    if version != CHECKPOINT_FORMAT:
        raise CheckpointError(f"resume: {path} has checkpoint format {version}; this tinymoe reads format "
                              f"{CHECKPOINT_FORMAT}")
    saved = field("config", "json")
    current = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples -> lists, as saved
    if {k: v for k, v in saved.items() if k != "steps"} != {k: v for k, v in current.items() if k != "steps"}:
        raise ValueError(f"resume: {path} was saved by config {saved.get('name')!r} with other settings; "
                         f"it cannot continue {config.name!r} (only 'steps' may change)")
    step, schedule_steps = field("step", "int"), field("schedule_steps", "int")
    if step < 0:
        raise CheckpointError(f"resume: {path}: field 'step' must be >= 0, got {step}")
    if schedule_steps < 1:
        raise CheckpointError(f"resume: {path}: field 'schedule_steps' must be >= 1, got {schedule_steps}")
    if step > config.steps:
        raise ValueError(f"resume: {path} is at step {step}, past steps={config.steps}; "
                         f"give steps >= {step} (--steps) to continue it")
    past = field("history", "json")
    if not (isinstance(past.get("history"), list) and isinstance(past.get("evals"), list)):
        raise CheckpointError(f"resume: {path}: field 'history' must hold the lists 'history' and 'evals'")
    if len(past["history"]) != step:
        raise CheckpointError(f"resume: {path}: field 'history' has {len(past['history'])} steps, field 'step' "
                              f"says {step}")
    model_state, optimizer_state = field("model", "group"), field("optimizer", "group")
    _check_arrays(path, "model", model_state, model.state_dict())
    _check_arrays(path, "optimizer", optimizer_state, optimizer.state_dict())
    try:
        optimizer.load_state_dict(optimizer_state)  # checks the values: the lr, no negative step count
    except ValueError as error:
        raise CheckpointError(f"resume: {path}: field 'optimizer': {error}") from error
    model.load_state_dict(model_state)
    try:
        _restore_rng(field("rng", "json"), data_rng)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"resume: {path}: field 'rng' holds no valid generator state ({error!r})") from error
    run.history, run.evals = past["history"], past["evals"]
    return step, schedule_steps


def _check_arrays(path, name: str, saved: dict, expected: dict) -> None:
    """Every array of ``expected`` is in ``saved`` with its shape and dtype, and nothing else."""
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"resume: {path}: field {name!r} does not fit this model: missing {missing}, "
                              f"unexpected {unexpected}")
    for key, want in expected.items():
        want, got = np.asarray(want), saved[key]
        if not (isinstance(got, np.ndarray) and got.shape == want.shape and got.dtype == want.dtype):
            raise CheckpointError(f"resume: {path}: field '{name}/{key}' must be a {want.dtype} array of shape "
                                  f"{want.shape}, got {_describe(got)}")


def expert_by_domain(run: Run, layer: int = 0, max_windows: int = 32) -> np.ndarray | None:
    """(domains, experts): of each domain's kept (token, expert) assignments in MoE layer
    ``layer``, on its first ``max_windows`` validation windows, the share each expert got
    (None for a corpus without domains).

    Assignments are counted as in the load statistics (:func:`token_assignments`, the same
    for every router): a token sent to two experts counts once for each, a token that no
    expert processed (dropped at capacity, or picked by no expert under expert choice)
    counts for none, and with MH-MoE each sub-token's assignment counts. So each row adds
    up to 1, and the rows weighted by their domains' numbers of assignments add up to the
    layer's load on those windows.
    """
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
            batch = inputs[start : min(start + config.batch_size, max_windows)]
            model(batch)
            counts, _ = token_assignments(moe.last_routing, batch.size)
            np.add.at(table, domains[start : start + len(batch)].reshape(-1), counts)
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
