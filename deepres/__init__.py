"""deepres: very deep residual networks and their infinite-depth limit.

Fused kernels and a memory-efficient PyTorch engine for stacks of thousands
of two-layer-perceptron residual blocks, the Neural Mean ODE limit, and the
studies that compare the two (see README.md and docs/design.md).
"""

from deepres.activations import ACTIVATIONS
from deepres.functional import BACKENDS, residual_stack
from deepres.meanode import MeanODE, MeanODENet
from deepres.modules import DeepResNet, ResidualStack
from deepres.optim import ScaledAdam, ScaledAdamW, ScaledSGD, param_groups
from deepres.parameterization import PARAMETERIZATIONS, Parameterization
from deepres.training import TrainResult, gradient_descent_step, train

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "PARAMETERIZATIONS",
    "DeepResNet",
    "MeanODE",
    "MeanODENet",
    "Parameterization",
    "ResidualStack",
    "ScaledAdam",
    "ScaledAdamW",
    "ScaledSGD",
    "TrainResult",
    "__version__",
    "gradient_descent_step",
    "param_groups",
    "residual_stack",
    "train",
]
