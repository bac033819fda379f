"""Parts several methods share: the task context, task-aware normalisation, Gumbel sampling and
temperature schedules, per-task replacement of a network's modules, routed layers with their
Gumbel-matrix routers (parameter allocation), and the soft-sharing layers (TAL of TAAN with its
functional regularisers, cross-stitch units, MMoE, soft layer ordering, per-task weight layers
with MRN's tensor-normal prior or DMTRL's tensor factorisations), each usable like
``nn.Linear`` with a ``regularization(c)``.

Every layer here is a plain ``torch.nn.Module`` usable on its own; which task a call is for comes
from the task context (:mod:`sharewise.layers.context`), never from state set inside ``forward``.
This package imports nothing from the rest of sharewise (it sits just above ``errors``/``files``).
"""

from .context import TaskContext, current, register_group_hooks, repeated_passes, single_task, task_groups
from .gumbel import (exponential_temperature, gumbel_noise, gumbel_sigmoid, gumbel_softmax, inverse_sqrt_temperature,
                     steps_to_temperature, straight_through)
from .norm import (PerTaskBatchNorm, TaskBatchNorm1d, TaskBatchNorm2d, TaskBatchNorm3d, has_per_task_norms,
                   per_task_norms, supports_task_groups, task_aware_norms)
from .per_task import TaskRows, replace_modules
from .cross_stitch import CrossStitchConv2d, CrossStitchLinear, CrossStitchUnit, near_identity
from .mmoe import MMoE
from .routing import (ConvComponent, DenseComponent, FixedRouter, GumbelMatrixRouter, IdentityComponent, PoolComponent,
                      RoutedLayer, avg_pool_same, bernoulli_entropy, combine, conv2d_same, max_pool_same, pad_same,
                      same_padding)
from .soft_order import SoftOrdering
from .tal import TALConv2d, TALLinear, functional_penalty, gaussian_moments
from .task_weights import TaskConv2d, TaskLinear, TaskWeightLayer
from .mrn import MRNConv2d, MRNLinear, tensor_normal_penalty
from .dmtrl import DMTRLConv2d, DMTRLLinear, laf_decompose, tt_decompose, tucker_decompose

__all__ = ["ConvComponent", "DenseComponent", "FixedRouter", "GumbelMatrixRouter", "IdentityComponent",
           "PoolComponent", "RoutedLayer", "avg_pool_same", "bernoulli_entropy", "combine", "conv2d_same",
           "max_pool_same", "pad_same", "same_padding",
           "CrossStitchConv2d", "CrossStitchLinear", "CrossStitchUnit", "MMoE", "SoftOrdering", "TaskRows", "near_identity",
           "PerTaskBatchNorm", "TaskBatchNorm1d", "TaskBatchNorm2d", "TaskBatchNorm3d", "TaskContext", "current",
           "exponential_temperature", "gumbel_noise", "gumbel_sigmoid", "gumbel_softmax", "has_per_task_norms",
           "inverse_sqrt_temperature", "per_task_norms", "register_group_hooks", "repeated_passes", "replace_modules",
           "single_task", "steps_to_temperature", "TALConv2d", "TALLinear", "functional_penalty", "gaussian_moments", "straight_through", "supports_task_groups", "task_aware_norms",
           "task_groups", "TaskConv2d", "TaskLinear", "TaskWeightLayer", "MRNConv2d", "MRNLinear",
           "tensor_normal_penalty", "DMTRLConv2d", "DMTRLLinear", "laf_decompose", "tt_decompose", "tucker_decompose"]
