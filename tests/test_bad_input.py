"""Bad input, one line each: every public constructor and layer of tinymoe.nn, tinymoe.moe
and tinymoe.models refuses it with an error of the right type whose subject is the argument
("Owner: <argument> must ..."), so that the message never blames another argument. Each
line changes one argument of a valid call (``VALID`` below) and names the error."""

import re

import numpy as np
import pytest

import tinymoe as tm
from tinymoe.models import BackpropNet, LSTMMoELM, TransformerLM, VowelMixture
from tinymoe.moe import (
    CosineRouter,
    DeepSeekMoE,
    DeepSeekRouter,
    ExpertChoiceMoE,
    ExpertChoiceRouter,
    Experts,
    GShardMoE,
    GShardRouter,
    MHMoE,
    MixtureOfLocalExperts,
    NoisyTopKMoE,
    NoisyTopKRouter,
    SwitchMoE,
    SwitchRouter,
    TopKMoE,
    TopKRouter,
    capacity,
    capacity_drop,
    dense_moe,
    losses,
    make_plan,
)
from tinymoe.nn import (
    LSTM,
    CausalSelfAttention,
    Dropout,
    Embedding,
    FeedForward,
    LayerNorm,
    Linear,
    RMSNorm,
    TransformerBlock,
)
from tinymoe.validate import ArgumentTypeError

NAN, INF = float("nan"), float("inf")
TypeErr = ArgumentTypeError  # a hyper-parameter of the wrong type (a TypeError and a ValueError)


def tokens(*shape, dtype=np.float32):
    return tm.tensor(np.ones(shape, dtype))


def applied(layer_class):
    """A layer (or router, or model) of ``layer_class`` with its VALID arguments, applied to x."""
    def apply(x):
        return layer_class(**VALID[layer_class])(x)

    apply.__name__ = f"{layer_class.__name__}(...)"
    return apply


def routed(router_class):
    """A router of ``router_class`` with its VALID arguments, routing 3 valid tokens with the
    randomness (noise=, uniform=) given."""
    def route(**randomness):
        router = router_class(**VALID[router_class])
        return router(tokens(3, router.d_model), **randomness)

    route.__name__ = f"{router_class.__name__}(...)(tokens)"
    return route


PROBS, INDEX = tm.tensor(np.full((4, 4), 0.25)), np.array([[0], [1], [2], [3]])
VALID = {  # one valid call of everything below; each line of BAD changes one argument
    Linear: dict(d_in=4, d_out=3), Embedding: dict(n=5, d=4), LayerNorm: dict(d=4), RMSNorm: dict(d=4),
    Dropout: dict(p=0.1), FeedForward: dict(d_model=4, d_hidden=8), LSTM: dict(d_in=4, d_hidden=3),
    CausalSelfAttention: dict(d_model=4, n_heads=2), TransformerBlock: dict(d_model=4, n_heads=2, ffn=Linear(4, 4)),
    Experts: dict(n_experts=4, d_model=4, d_hidden=8),
    TopKRouter: dict(d_model=4, n_experts=4, k=2), NoisyTopKRouter: dict(d_model=4, n_experts=4, k=2),
    SwitchRouter: dict(d_model=4, n_experts=4, jitter=0.1), GShardRouter: dict(d_model=4, n_experts=4),
    DeepSeekRouter: dict(d_model=4, n_experts=6, k=2), ExpertChoiceRouter: dict(d_model=4, n_experts=4),
    CosineRouter: dict(d_model=4, n_experts=4, k=2),
    NoisyTopKMoE: dict(d_model=4, d_hidden=8, n_experts=4, k=2), GShardMoE: dict(d_model=4, d_hidden=8, n_experts=4),
    SwitchMoE: dict(d_model=4, d_hidden=8, n_experts=4), TopKMoE: dict(d_model=4, d_hidden=8, n_experts=4, k=2),
    DeepSeekMoE: dict(d_model=4, d_hidden=8, n_routed=4, k=2),
    ExpertChoiceMoE: dict(d_model=4, d_hidden=8, n_experts=4),
    MHMoE: dict(d_model=4, n_heads=2, inner_moe=TopKMoE(2, 4, 4, k=2)),
    MixtureOfLocalExperts: dict(d_in=4, d_out=2, n_experts=3),
    TransformerLM: dict(vocab_size=7, context=4, d_model=8, n_heads=2, n_layers=2),
    LSTMMoELM: dict(vocab_size=7, d_model=4, moe=lambda: TopKMoE(4, 8, 4, k=2)),
    VowelMixture: dict(n_experts=4, n_classes=4), BackpropNet: dict(n_hidden=6, n_classes=4),
    capacity: dict(capacity_factor=1.25, n_tokens=8, n_experts=4, k=1),
    make_plan: dict(expert_index=INDEX, n_experts=4, capacity=2),
    capacity_drop: dict(expert_index=INDEX, n_experts=4, capacity=2),
    dense_moe: dict(x=tokens(4, 2), expert_index=INDEX, weight=np.ones((4, 1)), expert_fn=lambda e, x: x, n_experts=4),
    losses.load_loss: dict(clean_logits=PROBS, noisy_logits=PROBS, noise_std=PROBS, k=2),
    losses.kth_excluding: dict(noisy_logits=PROBS, k=2),
    losses.expert_fraction: dict(expert_index=INDEX, n_experts=4),
    losses.load_balancing_loss: dict(probs=PROBS, expert_index=INDEX, n_experts=4),
    losses.device_balance_loss: dict(probs=PROBS, expert_index=INDEX, n_experts=4, n_devices=2),
    losses.sequence_balance_loss: dict(scores=PROBS, expert_index=INDEX, n_experts=4, seq_len=2),
}  # fmt: skip

BAD = [
    # called with                   the argument changed                  raises          naming
    # ------------------------------------------------------------ tinymoe.nn: constructors
    (Linear,                        dict(d_in=0),                         ValueError,     "d_in"),
    (Linear,                        dict(d_in=2.5),                       TypeErr,        "d_in"),
    (Linear,                        dict(d_out=True),                     TypeErr,        "d_out"),
    (Linear,                        dict(d_out="3"),                      TypeErr,        "d_out"),
    (Embedding,                     dict(n=0),                            ValueError,     "n"),
    (Embedding,                     dict(d=-1),                           ValueError,     "d"),
    (LayerNorm,                     dict(d=0),                            ValueError,     "d"),
    (LayerNorm,                     dict(eps=0.0),                        ValueError,     "eps"),
    (LayerNorm,                     dict(eps=NAN),                        ValueError,     "eps"),
    (RMSNorm,                       dict(eps=-1e-6),                      ValueError,     "eps"),
    (RMSNorm,                       dict(eps="1e-6"),                     TypeErr,        "eps"),
    (Dropout,                       dict(p=1.0),                          ValueError,     "p"),
    (Dropout,                       dict(p=-0.1),                         ValueError,     "p"),
    (Dropout,                       dict(p=NAN),                          ValueError,     "p"),
    (Dropout,                       dict(p=True),                         TypeErr,        "p"),
    (FeedForward,                   dict(d_hidden=0),                     ValueError,     "d_hidden"),
    (FeedForward,                   dict(d_model=4.0),                    TypeErr,        "d_model"),
    (FeedForward,                   dict(activation="tanh"),              ValueError,     "activation"),
    (LSTM,                          dict(n_layers=0),                     ValueError,     "n_layers"),
    (LSTM,                          dict(d_hidden=2.5),                   TypeErr,        "d_hidden"),
    (LSTM,                          dict(d_in=0),                         ValueError,     "d_in"),
    (CausalSelfAttention,           dict(n_heads=3),                      ValueError,     "n_heads"),
    (CausalSelfAttention,           dict(n_heads=0),                      ValueError,     "n_heads"),
    (CausalSelfAttention,           dict(d_model=0),                      ValueError,     "d_model"),
    (CausalSelfAttention,           dict(dropout=1.5),                    ValueError,     "dropout"),
    (TransformerBlock,              dict(norm="batchnorm"),               ValueError,     "norm"),
    (TransformerBlock,              dict(dropout=-1.0),                   ValueError,     "dropout"),
    (TransformerBlock,              dict(ffn=None),                       TypeErr,        "ffn"),
    (TransformerBlock,              dict(n_heads=3),                      ValueError,     "n_heads"),
    # ------------------------------------------------------------ tinymoe.nn: inputs
    (applied(Linear),               dict(x=tokens(2, 4, dtype=np.int64)), TypeError,      "x"),
    (applied(Linear),               dict(x=tokens(2, 4, dtype=bool)),     TypeError,      "x"),
    (applied(Linear),               dict(x=tokens(2, 5)),                 ValueError,     "x"),
    (applied(Linear),               dict(x=tokens()),                     ValueError,     "x"),
    (applied(Linear),               dict(x="1 2 3 4"),                    TypeErr,        "x"),
    (applied(LayerNorm),            dict(x=tokens(2, 4, dtype=np.int32)), TypeError,      "x"),
    (applied(FeedForward),          dict(x=tokens(2, 4, dtype=np.uint8)), TypeError,      "x"),
    (applied(CausalSelfAttention),  dict(x=tokens(3, 4)),                 ValueError,     "x"),
    (applied(CausalSelfAttention),  dict(x=tokens(4)),                    ValueError,     "x"),
    (applied(LSTM),                 dict(x=tokens(3, 4)),                 ValueError,     "x"),
    (applied(TransformerBlock),     dict(x=tokens(3, 4)),                 ValueError,     "x"),
    (applied(Embedding),            dict(x=np.array([1.0, 2.0])),         TypeError,      "ids"),
    (applied(Embedding),            dict(x=np.array([True, False])),      TypeError,      "ids"),
    # ------------------------------------------------------------ tinymoe.moe: routers and experts
    (TopKRouter,                    dict(k=0),                            ValueError,     "k"),
    (TopKRouter,                    dict(k=5),                            ValueError,     "k"),
    (TopKRouter,                    dict(k=2.0),                          TypeErr,        "k"),
    (TopKRouter,                    dict(k=True),                         TypeErr,        "k"),
    (TopKRouter,                    dict(n_experts=0),                    ValueError,     "n_experts"),
    (TopKRouter,                    dict(n_experts=4.5),                  TypeErr,        "n_experts"),
    (TopKRouter,                    dict(d_model=0),                      ValueError,     "d_model"),
    (TopKRouter,                    dict(init_std=-1.0),                  ValueError,     "init_std"),
    (TopKRouter,                    dict(init_std=INF),                   ValueError,     "init_std"),
    (NoisyTopKRouter,               dict(k=5),                            ValueError,     "k"),
    (SwitchRouter,                  dict(capacity_factor=0),              ValueError,     "capacity_factor"),
    (SwitchRouter,                  dict(capacity_factor=INF),            ValueError,     "capacity_factor"),
    (SwitchRouter,                  dict(capacity_factor=NAN),            ValueError,     "capacity_factor"),
    (SwitchRouter,                  dict(capacity_factor="1.25"),         TypeErr,        "capacity_factor"),
    (SwitchRouter,                  dict(jitter=-0.1),                    ValueError,     "jitter"),
    (SwitchRouter,                  dict(jitter=1.5),                     ValueError,     "jitter"),
    (SwitchRouter,                  dict(d_model=0),                      ValueError,     "d_model"),
    (GShardRouter,                  dict(n_experts=1),                    ValueError,     "n_experts"),
    (GShardRouter,                  dict(second_policy="sometimes"),      ValueError,     "second_policy"),
    (GShardRouter,                  dict(capacity_factor=-1.0),           ValueError,     "capacity_factor"),
    (DeepSeekRouter,                dict(n_group=4),                      ValueError,     "n_group"),
    (DeepSeekRouter,                dict(n_group=2.0),                    TypeErr,        "n_group"),
    (DeepSeekRouter,                dict(n_group=2, topk_group=3),        ValueError,     "topk_group"),
    (DeepSeekRouter,                dict(n_group=2, topk_group=0),        ValueError,     "topk_group"),
    (DeepSeekRouter,                dict(k=4, n_group=2, topk_group=1),   ValueError,     "k"),
    (DeepSeekRouter,                dict(score="relu"),                   ValueError,     "score"),
    (DeepSeekRouter,                dict(routed_scale=0.0),               ValueError,     "routed_scale"),
    (DeepSeekRouter,                dict(routed_scale=INF),               ValueError,     "routed_scale"),
    (DeepSeekRouter,                dict(bias_update=-1e-3),              ValueError,     "bias_update"),
    (ExpertChoiceRouter,            dict(capacity_factor=None),           TypeErr,        "capacity_factor"),
    (ExpertChoiceRouter,            dict(capacity_factor=0.0),            ValueError,     "capacity_factor"),
    (CosineRouter,                  dict(d_route=0),                      ValueError,     "d_route"),
    (CosineRouter,                  dict(temperature=0.0),                ValueError,     "temperature"),
    (CosineRouter,                  dict(temperature=-0.07),              ValueError,     "temperature"),
    (Experts,                       dict(n_experts=0),                    ValueError,     "n_experts"),
    (Experts,                       dict(d_hidden=1.5),                   TypeErr,        "d_hidden"),
    (Experts,                       dict(activation="tanh"),              ValueError,     "activation"),
    (Experts,                       dict(activation="swiglu", bias=True), ValueError,     "bias"),
    # ------------------------------------------------------------ tinymoe.moe: router inputs and randomness
    (applied(TopKRouter),            dict(x=tokens(4)),                    ValueError,     "x"),
    (applied(TopKRouter),            dict(x=tokens(2, 3)),                 ValueError,     "x"),
    (applied(TopKRouter),            dict(x=tokens(2, 4, dtype=np.int64)), TypeError,      "x"),
    (routed(NoisyTopKRouter),       dict(noise=np.zeros((4, 3))),         ValueError,     "noise"),
    (routed(NoisyTopKRouter),       dict(noise=np.full((3, 4), NAN)),     ValueError,     "noise"),
    (routed(NoisyTopKRouter),       dict(noise=np.ones((3, 4), bool)),    TypeErr,        "noise"),
    (routed(GShardRouter),          dict(uniform=np.full(4, 0.5)),        ValueError,     "uniform"),
    (routed(GShardRouter),          dict(uniform=np.full(3, 1.5)),        ValueError,     "uniform"),
    (routed(GShardRouter),          dict(uniform=np.full(3, -0.1)),       ValueError,     "uniform"),
    (routed(GShardRouter),          dict(uniform=np.full(3, NAN)),        ValueError,     "uniform"),
    (routed(SwitchRouter),          dict(uniform=np.full(3, 0.5)),        ValueError,     "uniform"),
    # ------------------------------------------------------------ tinymoe.moe: layers
    (NoisyTopKMoE,                  dict(w_importance=-0.1),              ValueError,     "w_importance"),
    (NoisyTopKMoE,                  dict(w_load=NAN),                     ValueError,     "w_load"),
    (NoisyTopKMoE,                  dict(d_hidden=0),                     ValueError,     "d_hidden"),
    (GShardMoE,                     dict(aux_weight=-0.01),               ValueError,     "aux_weight"),
    (GShardMoE,                     dict(capacity_factor=INF),            ValueError,     "capacity_factor"),
    (SwitchMoE,                     dict(z_weight=INF),                   ValueError,     "z_weight"),
    (SwitchMoE,                     dict(aux_weight="0.01"),              TypeErr,        "aux_weight"),
    (SwitchMoE,                     dict(jitter=2.0),                     ValueError,     "jitter"),
    (TopKMoE,                       dict(router="hash"),                  ValueError,     "router"),
    (TopKMoE,                       dict(k=5),                            ValueError,     "k"),
    (TopKMoE,                       dict(aux_weight=-1.0),                ValueError,     "aux_weight"),
    (DeepSeekMoE,                   dict(n_routed=4.5),                   TypeErr,        "n_routed"),
    (DeepSeekMoE,                   dict(segments=2.0),                   TypeErr,        "segments"),
    (DeepSeekMoE,                   dict(segments=3),                     ValueError,     "segments"),
    (DeepSeekMoE,                   dict(n_shared=-1),                    ValueError,     "n_shared"),
    (DeepSeekMoE,                   dict(n_shared=1.5),                   TypeErr,        "n_shared"),
    (DeepSeekMoE,                   dict(k=5),                            ValueError,     "k"),
    (DeepSeekMoE,                   dict(d_hidden=0),                     ValueError,     "d_hidden"),
    (DeepSeekMoE,                   dict(seq_aux_weight=-1e-4),           ValueError,     "seq_aux_weight"),
    (DeepSeekMoE,                   dict(device_aux_weight=-1.0),         ValueError,     "device_aux_weight"),
    (DeepSeekMoE,                   dict(bias_update=NAN),                ValueError,     "bias_update"),
    (DeepSeekMoE,                   dict(n_group=3),                      ValueError,     "n_group"),
    (ExpertChoiceMoE,               dict(capacity_factor=INF),            ValueError,     "capacity_factor"),
    (MHMoE,                         dict(n_heads=3),                      ValueError,     "n_heads"),
    (MHMoE,                         dict(n_heads=0),                      ValueError,     "n_heads"),
    (MHMoE,                         dict(inner_moe=FeedForward(2, 4)),    TypeErr,        "inner_moe"),
    (MHMoE,                         dict(inner_moe=TopKMoE),              TypeErr,        "inner_moe"),
    (MHMoE,                         dict(inner_moe=TopKMoE(4, 4, 4, 2)),  ValueError,     "inner_moe"),
    (MixtureOfLocalExperts,         dict(loss="hinge"),                   ValueError,     "loss"),
    (MixtureOfLocalExperts,         dict(d_out=0),                        ValueError,     "d_out"),
    # ------------------------------------------------------------ tinymoe.moe: layer inputs
    (applied(TopKMoE),              dict(x=tokens(2, 4, dtype=np.int64)), TypeError,      "x"),
    (applied(TopKMoE),              dict(x=tokens(2, 4, dtype=bool)),     TypeError,      "x"),
    (applied(TopKMoE),              dict(x=tokens()),                     ValueError,     "x"),
    (applied(TopKMoE),              dict(x=tokens(2, 5)),                 ValueError,     "x"),
    (applied(DeepSeekMoE),          dict(x={"tokens": 1}),                TypeErr,        "x"),
    (applied(MHMoE),                dict(x=tokens(2, 3)),                 ValueError,     "x"),
    (applied(MixtureOfLocalExperts), dict(x=tokens(2, 3, 4)),             ValueError,     "x"),
    # ------------------------------------------------------------ tinymoe.moe: losses and dispatch
    (losses.load_loss,              dict(k=0),                            ValueError,     "k"),
    (losses.load_loss,              dict(k=4),                            ValueError,     "k"),
    (losses.load_loss,              dict(k=1.5),                          TypeErr,        "k"),
    (losses.kth_excluding,          dict(k=0),                            ValueError,     "k"),
    (losses.expert_fraction,        dict(n_experts=True),                 TypeErr,        "n_experts"),
    (losses.load_balancing_loss,    dict(n_experts=0),                    ValueError,     "n_experts"),
    (losses.device_balance_loss,    dict(n_devices=3),                    ValueError,     "n_devices"),
    (losses.device_balance_loss,    dict(n_devices=0),                    ValueError,     "n_devices"),
    (losses.sequence_balance_loss,  dict(seq_len=3),                      ValueError,     "seq_len"),
    (losses.sequence_balance_loss,  dict(seq_len=2.0),                    TypeErr,        "seq_len"),
    (capacity,                      dict(capacity_factor=0),              ValueError,     "capacity_factor"),
    (capacity,                      dict(capacity_factor=NAN),            ValueError,     "capacity_factor"),
    (capacity,                      dict(capacity_factor="1"),            TypeErr,        "capacity_factor"),
    (capacity,                      dict(n_tokens=-1),                    ValueError,     "n_tokens"),
    (capacity,                      dict(n_experts=0),                    ValueError,     "n_experts"),
    (capacity,                      dict(k=0),                            ValueError,     "k"),
    (make_plan,                     dict(capacity=0),                     ValueError,     "capacity"),
    (make_plan,                     dict(capacity=1.5),                   TypeErr,        "capacity"),
    (make_plan,                     dict(n_experts=0),                    ValueError,     "n_experts"),
    (capacity_drop,                 dict(capacity=0),                     ValueError,     "capacity"),
    (dense_moe,                     dict(n_experts=0),                    ValueError,     "n_experts"),
    # ------------------------------------------------------------ tinymoe.models
    (TransformerLM,                 dict(vocab_size=0),                   ValueError,     "vocab_size"),
    (TransformerLM,                 dict(context=0),                      ValueError,     "context"),
    (TransformerLM,                 dict(d_model=0),                      ValueError,     "d_model"),
    (TransformerLM,                 dict(n_layers=0),                     ValueError,     "n_layers"),
    (TransformerLM,                 dict(d_hidden=0),                     ValueError,     "d_hidden"),
    (TransformerLM,                 dict(moe_every=0),                    ValueError,     "moe_every"),
    (TransformerLM,                 dict(dropout=1.0),                    ValueError,     "dropout"),
    (TransformerLM,                 dict(n_heads=3),                      ValueError,     "n_heads"),
    (TransformerLM,                 dict(norm="batchnorm"),               ValueError,     "norm"),
    (TransformerLM,                 dict(moe=TopKMoE(8, 8, 4, 2)),        TypeErr,        "moe"),
    (applied(TransformerLM),        dict(x=np.ones((2, 3))),              TypeError,      "ids"),
    (LSTMMoELM,                     dict(vocab_size=0),                   ValueError,     "vocab_size"),
    (LSTMMoELM,                     dict(moe=None),                       TypeErr,        "moe"),
    (LSTMMoELM,                     dict(dropout=-0.5),                   ValueError,     "dropout"),
    (VowelMixture,                  dict(n_experts=0),                    ValueError,     "n_experts"),
    (VowelMixture,                  dict(n_classes=0),                    ValueError,     "n_classes"),
    (VowelMixture,                  dict(loss="hinge"),                   ValueError,     "loss"),
    (BackpropNet,                   dict(n_hidden=0),                     ValueError,     "n_hidden"),
    (BackpropNet,                   dict(n_classes=2.5),                  TypeErr,        "n_classes"),
]  # fmt: skip


def _case_id(target, change) -> str:
    def short(value):
        if hasattr(value, "shape"):
            return f"{type(value).__name__}{tuple(value.shape)}:{value.dtype}"
        return type(value).__name__ if isinstance(value, tm.nn.Module) else repr(value)

    return f"{target.__name__}-" + ",".join(f"{name}={short(value)}" for name, value in change.items())


@pytest.mark.parametrize("target, change, error, argument", BAD, ids=[_case_id(t, c) for t, c, *_ in BAD])
def test_bad_input_is_refused_naming_the_argument(target, change, error, argument):
    valid = VALID.get(target)  # None for the layers applied to x: their class has a VALID entry
    if valid is not None:
        target(**valid)  # the call works unchanged, so the error below comes from the one change
    with pytest.raises(error) as caught:
        target(**((valid or {}) | change))
    message = str(caught.value)
    # the argument is the subject of the message ("Owner: k must ..."), and the message says
    # what was given: it blames this argument, and no other one
    assert re.search(rf"(^|: ){re.escape(argument)} must ", message), message
    assert "got" in message, message


@pytest.mark.parametrize("make, blamed, innocent", [
    (lambda: DeepSeekMoE(4, 8, 4.5, 2), "n_routed", "n_group"),       # blamed n_group before
    (lambda: DeepSeekMoE(4, 8, 4, 2, segments=2.0), "segments", "k"),  # blamed k before
    (lambda: DeepSeekMoE(4, 8, 4, 2, n_group=3), "n_group", "segments"),
    (lambda: TransformerLM(7, 4, d_model=0), "d_model", "d"),         # Embedding's own name is d
    (lambda: TransformerLM(7, 4, dropout=2.0), "dropout", "p"),       # Dropout's own name is p
    (lambda: BackpropNet(n_hidden=0), "n_hidden", "d_out"),           # Linear's own name is d_out
    (lambda: CausalSelfAttention(4, 2, dropout=1.0), "dropout", "p"),
    (lambda: FeedForward(4, 0), "d_hidden", "d_out"),
])  # fmt: skip
def test_an_error_never_blames_another_argument(make, blamed, innocent):
    with pytest.raises(ValueError) as caught:  # ArgumentTypeError is a ValueError too
        make()
    message = str(caught.value)
    assert re.search(rf"\b{blamed} must\b", message), message
    assert not re.search(rf"\b{innocent}\b", message), message
