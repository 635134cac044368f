"""Every plot draws from real numbers, with labelled axes (the lessons rely on them)."""

import matplotlib
import numpy as np

from tinymoe import viz
from tinymoe.models.vowel import VowelMixture
from tinymoe.tensor import Tensor
from tinymoe.train import get_config, train

matplotlib.use("Agg")


def labelled(fig):
    ax = fig.axes[0]
    return ax.get_xlabel() and ax.get_ylabel()


def test_training_plots_show_the_run():
    run = train(get_config("switch", steps=4, d_model=16, d_hidden=16, n_heads=2, context=16, corpus_chars=3000,
                           eval_every=2), progress=False)
    fig = viz.loss_curves(run)
    assert labelled(fig)
    assert len(fig.axes[0].lines) == 2  # training and validation
    heat = viz.expert_load_heatmap(run)
    image = heat.axes[0].images[0].get_array()
    assert image.shape == (8, 4)  # experts x steps
    np.testing.assert_allclose(np.asarray(image).sum(axis=0), 1.0)  # each step's loads add up to 1
    assert labelled(viz.load_histogram(run.history[-1]["layers"][0]["load"]))


def test_routing_map_and_domain_heatmap_draw_their_inputs():
    fig = viz.routing_map("abcdef", [0, 1, 2, 0, 1, 2], n_experts=3, width=4)
    assert [t.get_text() for t in fig.axes[0].texts] == list("abcdef")
    table = np.array([[0.5, 0.5], [1.0, 0.0]])
    fig = viz.expert_domain_heatmap(table, ["dna", "brackets"])
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), table)


def test_routing_map_draws_tokens_without_an_expert_in_their_own_colour():
    fig = viz.routing_map("abcd", [0, -1, 1, -1], n_experts=2, width=4)
    image = fig.axes[0].images[0]
    colours = image.to_rgba(np.asarray(image.get_array()))[0]  # the 4 cells, as drawn
    np.testing.assert_array_equal(colours[1], colours[3])
    assert not any(np.array_equal(colours[1], colours[i]) for i in (0, 2))  # no expert's colour
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["expert 0", "expert 1", "no expert"]
    every_token_routed = viz.routing_map("ab", [0, 1], n_experts=2, width=2)
    assert "no expert" not in [t.get_text() for t in every_token_routed.axes[0].get_legend().get_texts()]


def test_decision_regions_for_the_vowel_task():
    model = VowelMixture(4)
    x = np.random.default_rng(0).standard_normal((40, 2)).astype(np.float32)
    labels = np.arange(40) % 4

    def predict(grid):
        return model(Tensor(grid)).data.argmax(axis=-1)

    def gate(grid):
        return model.mixture.gates(Tensor(grid)).data.argmax(axis=-1)

    fig = viz.decision_regions(predict, x, labels, ["i", "I", "a", "V"], gate=gate)
    assert len(fig.axes) >= 2 and labelled(fig)
