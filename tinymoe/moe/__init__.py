"""Mixture-of-Experts components, one paper each: routers, losses, dispatch, experts, layers."""

from tinymoe.moe import losses
from tinymoe.moe.dispatch import Plan, capacity, capacity_drop, dense_moe, make_plan, permute, unpermute
from tinymoe.moe.experts import Experts, grouped_matmul
from tinymoe.moe.layers import (
    DeepSeekMoE,
    ExpertChoiceMoE,
    GShardMoE,
    MHMoE,
    MixtureOfLocalExperts,
    NoisyTopKMoE,
    SparseMoE,
    SwitchMoE,
    TopKMoE,
    mean_aux_over_layers,
)
from tinymoe.moe.routers import (
    CosineRouter,
    DeepSeekRouter,
    ExpertChoiceRouter,
    GShardRouter,
    NoisyTopKRouter,
    Router,
    Routing,
    SoftmaxGate,
    SwitchRouter,
    TopKRouter,
)

__all__ = [
    "CosineRouter", "DeepSeekMoE", "DeepSeekRouter", "ExpertChoiceMoE", "ExpertChoiceRouter", "Experts",
    "GShardMoE", "GShardRouter", "MHMoE", "MixtureOfLocalExperts", "NoisyTopKMoE", "NoisyTopKRouter", "Plan",
    "Router", "Routing", "SoftmaxGate", "SparseMoE", "SwitchMoE", "SwitchRouter", "TopKMoE", "TopKRouter",
    "capacity", "capacity_drop", "dense_moe", "grouped_matmul", "losses", "make_plan", "mean_aux_over_layers",
    "permute", "unpermute",
]  # fmt: skip
