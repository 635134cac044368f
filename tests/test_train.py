"""The training job on tiny configs: every family learns, runs are reproducible and resume
exactly, a balance loss balances, and bad input fails clearly without losing saved data."""

import dataclasses
import shutil

import numpy as np
import pytest

import tinymoe as tm
from tinymoe import data
from tinymoe import train as training
from tinymoe.__main__ import routing_map_figure
from tinymoe.tensor import no_grad
from tinymoe.train import CONFIGS, Run, TrainingDiverged, get_config, load_cv, train

TINY = dict(d_model=32, d_hidden=32, n_heads=2, context=24, batch_size=8, corpus_chars=8000,
            eval_every=1000, eval_batches=1, checkpoint_every=1000)


def tiny(name, **overrides):
    config = get_config(name, **{**TINY, **overrides})
    if config.layer == "mh-moe":  # 4 heads of width 8
        config = dataclasses.replace(config, d_model=32)
    return config


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_named_config_learns(name):
    run = train(tiny(name, steps=40, warmup=5), progress=False)
    losses = [h["loss"] for h in run.history]
    assert np.mean(losses[-5:]) < losses[0] - 0.5, f"{name}: {losses[0]:.3f} -> {np.mean(losses[-5:]):.3f}"


def test_same_seed_same_losses():
    a = train(tiny("switch", steps=12), progress=False)
    b = train(tiny("switch", steps=12), progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    c = train(tiny("switch", steps=12, seed=1), progress=False)
    assert [h["loss"] for h in a.history] != [h["loss"] for h in c.history]


@pytest.mark.parametrize("name", ["noisy-topk", "deepseek-v3"])  # router noise; the V3 bias buffer
def test_resume_equals_uninterrupted_training_bit_for_bit(name, tmp_path):
    config = tiny(name, steps=12, checkpoint_every=6)
    whole = train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "parts", progress=False, stop_after=6)
    resumed = train(config, tmp_path / "parts", resume=True, progress=False)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    for (name_a, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert np.array_equal(a, b), name_a


def test_a_balance_loss_lowers_the_load_variation():
    def final_cv(weight):
        config = tiny("mixtral", steps=150, corpus_chars=20000, context=32)
        config = dataclasses.replace(config, layer_args={**config.layer_args, "aux_weight": weight})
        run = train(config, progress=False)
        return np.mean([load_cv(layer["load"]) for h in run.history[-30:] for layer in h["layers"]])

    without, with_loss = final_cv(0.0), final_cv(0.1)
    assert with_loss < 0.75 * without, (without, with_loss)


def test_deepseek_v3_bias_moves_during_training():
    run = train(tiny("deepseek-v3", steps=10), progress=False)
    biases = [np.array(h["layers"][0]["bias"]) for h in run.history]
    assert np.abs(biases[-1]).max() > 0  # updated after every step by +-gamma
    np.testing.assert_allclose(np.abs(biases[0]), 1e-3)  # one step: every expert moved by gamma


def test_statistics_and_summary():
    run = train(tiny("gshard", steps=6, eval_every=6), progress=False)
    layer = run.history[-1]["layers"][0]
    assert len(layer["load"]) == 8 and abs(sum(layer["load"]) - 1) < 1e-9
    assert 0 <= layer["drop_rate"] <= 1 and layer["entropy"] > 0 and layer["z"] > 0
    table = training.summary_table(run)
    assert "val loss" in table and "gshard" in table
    by_domain = training.expert_by_domain(run)
    assert by_domain.shape == (4, 8)
    np.testing.assert_allclose(by_domain.sum(axis=1), 1.0)


# ------------------------------------------------- plots of what each token really got


def untrained_run(name, **overrides):
    """A Run with a freshly built model: routing plots need no training."""
    config = tiny(name, batch_size=16, **overrides)
    corpus = data.load_corpus(config.corpus, config.corpus_chars, seed=config.seed)
    return Run(config, training.make_model(config, corpus.vocab_size), corpus)


def first_windows(run, n_windows):
    """The windows expert_by_domain reads, run through the model: (layer-0 routing, domains)."""
    inputs, _ = data.sequential_windows(run.corpus.val_ids, run.config.context)
    domains, _ = data.sequential_windows(run.corpus.val_domains, run.config.context)
    run.model.eval()
    with no_grad():
        run.model(inputs[:n_windows])
    return run.model.moe_layers()[0].last_routing, domains[:n_windows].reshape(-1)


def test_expert_by_domain_under_expert_choice_counts_what_each_expert_took():
    # Before: every token's "first choice" was expert_index[:, 0], which is 0 under expert
    # choice, so the table said expert 0 served 100% of every domain.
    run = untrained_run("expert-choice")
    table = training.expert_by_domain(run, max_windows=16)  # one batch of 16 windows
    routing, domains = first_windows(run, 16)
    chosen = ~routing.dropped  # (tokens, experts): expert e picked token n
    counts = np.stack([chosen[domains == d].sum(axis=0) for d in range(len(run.corpus.domain_names))])
    np.testing.assert_allclose(table, counts / counts.sum(axis=1, keepdims=True))
    assert (table[:, 0] < 0.5).all()  # nothing like "expert 0 takes every domain"
    # weighted by each domain's assignments, the rows give the real load: C tokens per expert
    capacity = routing.capacity
    np.testing.assert_array_equal(counts.sum(axis=0), np.full(8, capacity))
    np.testing.assert_allclose(counts.sum(axis=1) @ table / counts.sum(), training.routing_stats(
        run.model.moe_layers()[0])["load"])


def test_expert_by_domain_counts_each_sub_token_under_mh_moe():
    run = untrained_run("mh-moe")
    table = training.expert_by_domain(run, max_windows=16)
    routing, domains = first_windows(run, 16)
    heads = len(routing.expert_index) // len(domains)  # 4 sub-tokens per character
    kept = np.where(routing.dropped, -1, routing.expert_index)
    counts = np.stack([np.bincount(kept[np.repeat(domains, heads) == d].ravel() + 1, minlength=9)[1:]
                       for d in range(len(run.corpus.domain_names))])
    np.testing.assert_allclose(table, counts / counts.sum(axis=1, keepdims=True))


def test_the_routing_map_shows_the_expert_with_the_largest_weight_or_none():
    # capacity factor 0.5: 8 experts take ceil(0.5 * 24 / 8) = 2 characters each, so at
    # least 8 of the 24 characters get no expert
    run = untrained_run("expert-choice", layer_args={"capacity_factor": 0.5})
    figure = routing_map_figure(run)
    n_chars = run.config.context
    shown = np.asarray(figure.axes[0].images[0].get_array()).ravel()[:n_chars]
    routing = run.model.moe_layers()[0].last_routing  # the routing of that one window
    weight = np.where(routing.dropped, -np.inf, routing.weight.data)  # (chars, experts): 0 unless picked
    expected = np.where(routing.dropped.all(axis=1), -1, weight.argmax(axis=1))
    np.testing.assert_array_equal(shown, expected)
    assert len(set(expected.tolist()) - {-1}) > 1  # before: expert 0 everywhere
    assert (expected == -1).sum() >= 8
    assert "no expert" in [t.get_text() for t in figure.axes[0].get_legend().get_texts()]


def test_token_assignments_for_token_choice_with_drops():
    class Routing:  # two tokens, top-2; token 1's second slot was dropped
        expert_index = np.array([[2, 0], [1, 2]])
        dropped = np.array([[False, False], [False, True]])
        weight = tm.tensor(np.array([[0.6, 0.4], [0.7, 0.0]]))
        probs = tm.tensor(np.zeros((2, 3)))

    counts, weights = training.token_assignments(Routing, 2)
    np.testing.assert_array_equal(counts, [[1, 0, 1], [0, 1, 0]])
    np.testing.assert_allclose(weights, [[0.4, 0, 0.6], [0, 0.7, 0]])
    np.testing.assert_array_equal(training.main_expert(Routing, 2), [2, 1])


# ----------------------------------------------------------------------- bad input


def test_unknown_config_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown config 'mixtrall'; valid names: dense, mixtral, noisy-topk"):
        get_config("mixtrall")


def test_a_checkpoint_from_another_config_is_refused(tmp_path):
    train(tiny("switch", steps=2, checkpoint_every=2), tmp_path, progress=False)
    with pytest.raises(ValueError, match="saved by config 'switch'.*cannot continue 'gshard'"):
        train(tiny("gshard", steps=4), tmp_path, resume=True, progress=False)


def test_a_corrupt_checkpoint_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable tinymoe checkpoint"):
        train(tiny("switch", steps=4), tmp_path, resume=True, progress=False)
    assert path.read_bytes() == b"not a checkpoint"


def test_a_sequence_longer_than_the_context_is_refused():
    model = training.make_model(tiny("mixtral"), vocab_size=10)
    with pytest.raises(ValueError, match="sequence length 25 is longer than the model's context 24"):
        model(np.zeros((1, 25), dtype=np.int64))


def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny("mixtral", steps=10, checkpoint_every=4)
    calls = {"n": 0}
    real_clip = training.clip_grad_norm

    def clip_then_poison(params, max_norm):  # fault injection: a weight turns NaN at step 6
        params = list(params)
        calls["n"] += 1
        if calls["n"] == 7:
            params[0].data[...] = np.nan
        return real_clip(params, max_norm)

    monkeypatch.setattr(training, "clip_grad_norm", clip_then_poison)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 7 .*last good checkpoint .* is kept"):
        train(config, tmp_path, progress=False)
    saved = tm.load(tmp_path / "checkpoint.npz")
    assert int(saved["step"]) == 4  # the checkpoint from before the NaN, untouched
    assert all(np.isfinite(v).all() for v in saved["model"].values())


def test_the_main_job_runs_and_writes_plots(tmp_path, capsys):
    from tinymoe.__main__ import main

    shutil.rmtree(tmp_path, ignore_errors=True)
    main(["--config", "switch", "--steps", "3", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "val loss" in out and "switch" in out
    for name in ["loss.png", "expert_load.png", "load_histogram.png", "expert_by_domain.png", "routing_map.png",
                 "checkpoint.npz"]:
        assert (tmp_path / name).exists(), name


def test_mh_moe_passes_its_other_layer_args_to_the_inner_layer():
    config = tiny("mh-moe", layer_args={"n_heads": 4, "aux_weight": 0.0, "router": "cosine"})
    layer = training.make_layer(config)
    assert layer.inner.aux_weight == 0.0 and type(layer.inner.router).__name__ == "CosineRouter"
