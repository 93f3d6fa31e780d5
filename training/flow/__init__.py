"""DenseFlow (thesis 3.4): a densely connected normalizing flow with stochastic skip connections,
used to generate synthetic negatives of any size (thesis 4.4).

Modules (each equation in one named class/function, citing the thesis numbering):
- `bijections`: ActNorm (3.8), invertible 1x1 conv, affine coupling (3.9-3.11), channel switch,
  squeeze (3.3.2), input scaling, sigmoid;
- `attention`: Nyström self-attention at any H x W [109];
- `coupling`: the coupling network (1x1 projection, dense block || attention, fusion; Fig. 3.5);
- `augment`: cross-unit coupling (3.16-3.21);
- `distributions`: learned channel-wise Gaussian prior, squeeze-and-drop with temperature;
- `dequantization`: uniform (3.12-3.13) and variational (3.14) dequantization;
- `model`: `DenseFlow` (ELBO, IWBO, bits/dim, sampling), `DenseFlowConfig`, presets, parameter counts.
"""
from densehybrid_training.flow.attention import NystromAttention, nystrom_attention, softmax_attention
from densehybrid_training.flow.augment import CrossUnitCoupling
from densehybrid_training.flow.bijections import ActNorm, AffineCoupling, Bijection, BijectiveSequential, \
    ChannelSwitch, InvConv1x1, ScaleShift, Sigmoid, Squeeze, squeeze2d, unsqueeze2d
from densehybrid_training.flow.coupling import CouplingNetwork, DenseBlock
from densehybrid_training.flow.dequantization import UniformDequantization, VariationalDequantization
from densehybrid_training.flow.distributions import ChannelwiseGaussian, SqueezeDrop
from densehybrid_training.flow.model import PRESETS, DenseFlow, DenseFlowBlock, DenseFlowConfig, FlowModule, \
    build_flow, flow_config, parameter_breakdown, parameter_count

__all__ = [
    "ActNorm", "AffineCoupling", "Bijection", "BijectiveSequential", "ChannelSwitch", "ChannelwiseGaussian",
    "CouplingNetwork", "CrossUnitCoupling", "DenseBlock", "DenseFlow", "DenseFlowBlock", "DenseFlowConfig",
    "FlowModule", "InvConv1x1", "NystromAttention", "PRESETS", "ScaleShift", "Sigmoid", "Squeeze", "SqueezeDrop",
    "UniformDequantization", "VariationalDequantization", "build_flow", "flow_config", "nystrom_attention",
    "parameter_breakdown", "parameter_count", "softmax_attention", "squeeze2d", "unsqueeze2d",
]
