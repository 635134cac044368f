"""``python -m tinymoe``: train a small MoE language model and look at its routing.

    python -m tinymoe                       # the default: a Mixtral-style top-2 MoE, ~1-2 min
    python -m tinymoe --config switch       # any named config (listed by --help)
    python -m tinymoe --config gshard --steps 200 --out runs/g --resume

Prints a progress bar and a summary table (validation loss and perplexity, expert load
balance, dropped tokens, dead experts) and writes plots and a checkpoint to the run folder.

Bad arguments are refused before training: ``--steps`` must be >= 1 and ``--seed`` >= 0,
and the run folder must be a folder we can write that no other training is using (it is
locked for the whole job). ``--resume --steps N`` with N larger than the saved run keeps
the run's learning-rate schedule: the extra steps run at its final rate (see ``train``).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from tinymoe import viz
from tinymoe.tensor import no_grad
from tinymoe.train import (
    CONFIGS,
    DESCRIPTIONS,
    CheckpointError,
    RunFolderBusy,
    RunFolderLock,
    RunFolderUnusable,
    TrainingDiverged,
    expert_by_domain,
    get_config,
    main_expert,
    summary_table,
    train,
)


def routing_map_figure(run, n_chars: int = 256):
    """The first validation characters, each coloured by the expert that got the largest
    weight for it in layer 0 (grey: no expert processed it)."""
    ids = run.corpus.val_ids[: min(n_chars, run.config.context)]
    moe = run.model.moe_layers()[0]
    run.model.eval()
    with no_grad():
        run.model(ids[None, :])
    run.model.train()
    return viz.routing_map(run.corpus.vocab.decode(ids), main_expert(moe.last_routing, len(ids)), moe.n_experts,
                           width=32, title=f"{run.config.name}: the expert with the largest weight per character "
                                           "(layer 0)")


def integer_at_least(low: int):
    """An argparse type: an integer >= ``low`` (argparse puts the option's name in front of
    the message, e.g. "argument --steps: must be an integer >= 1, got '0'")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


def main(argv=None) -> None:
    names = "\n".join(f"  {name:<14} {DESCRIPTIONS[name]}" for name in CONFIGS)
    parser = argparse.ArgumentParser(
        prog="python -m tinymoe", description="Train a small MoE language model on the multi-domain corpus.",
        epilog=f"named configs:\n{names}", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="mixtral", help="a named config (default: mixtral)")
    parser.add_argument("--steps", type=integer_at_least(1), help="training steps, >= 1 (default: the config's)")
    parser.add_argument("--seed", type=integer_at_least(0), default=0, help="random seed, >= 0 (default: 0)")
    parser.add_argument("--corpus", choices=["multi_domain", "stdlib"], help="default: the config's (multi_domain)")
    parser.add_argument("--out", help="run folder for plots and the checkpoint (default: runs/<config>)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    args = parser.parse_args(argv)
    if args.config not in CONFIGS:
        parser.error(f"unknown config {args.config!r}; valid names: {', '.join(CONFIGS)}")

    overrides = {"seed": args.seed}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.corpus:
        overrides["corpus"] = args.corpus
    config = get_config(args.config, **overrides)
    out = args.out or os.path.join("runs", config.name)
    try:
        lock = RunFolderLock(out)  # checks --out and keeps other trainings out of it until we are done
    except (RunFolderUnusable, RunFolderBusy) as error:
        parser.error(f"--out: {error}")
    with lock:
        print(f"tinymoe: training {config.name!r} ({DESCRIPTIONS[config.name]}) for {config.steps} steps")
        try:
            run = train(config, out_dir=out, resume=args.resume)
        except (TrainingDiverged, CheckpointError) as error:
            sys.exit(f"{parser.prog}: {error}")  # the message says it all: no traceback, exit status 1
        write_results(run, out)


def write_results(run, out: str) -> None:
    """The summary table on stdout, and the plots in the run folder."""
    config = run.config
    print()
    print(summary_table(run))
    figures = {"loss.png": viz.loss_curves(run)}
    if run.model.moe_layers():
        figures["expert_load.png"] = viz.expert_load_heatmap(run)
        figures["load_histogram.png"] = viz.load_histogram(
            np.mean([h["layers"][0]["load"] for h in run.history[-20:]], axis=0), f"{config.name}: expert load")
        table = expert_by_domain(run)
        if table is not None:
            figures["expert_by_domain.png"] = viz.expert_domain_heatmap(table, run.corpus.domain_names)
        figures["routing_map.png"] = routing_map_figure(run)
    for name, figure in figures.items():
        figure.savefig(os.path.join(out, name), dpi=120)
    print(f"\nplots and checkpoint in {out}/: {', '.join(figures)}, checkpoint.npz")


if __name__ == "__main__":
    main()
