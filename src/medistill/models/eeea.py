"""EEEA-Net-C2 (Termritthikun et al., "EEEA-Net: An Early Exit Evolutionary Neural Architecture Search",
Engineering Applications of AI, 2021), the student of "Explainable Knowledge Distillation for On-Device Chest
X-Ray Classification".

A MobileNetV3-style subnet of the Once-for-All supernet, built from timm's MobileNetV3 blocks with the layer
table of ``docs/eeea-net-c2.md`` (kernel, expansion, stride, activation and SE of each of the 19 blocks).
14 classes: 4,732,838 parameters, ~290M MACs at 224 px. The CAM layer is the final 1x1 expand (960 channels).
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn
from timm.layers import get_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.mobilenetv3 import MobileNetV3

# timm arch-string per block: ir = inverted residual, ds = depthwise separable (expand 1), k = kernel,
# s = stride, e = expansion, c = out channels, se0.25 = SE on mid // 4, nre = ReLU (else hard-swish).
ARCH = [
    ["ds_r1_k3_s1_e1_c16_nre"],  # 0
    ["ir_r1_k3_s2_e3_c24_nre", "ir_r1_k5_s1_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"],  # 1-3
    ["ir_r1_k7_s2_e4_c40_se0.25_nre", "ir_r1_k3_s1_e3_c40_se0.25_nre", "ir_r1_k7_s1_e3_c40_se0.25_nre"],  # 4-6
    ["ir_r1_k5_s2_e6_c80", "ir_r1_k7_s1_e6_c80", "ir_r1_k5_s1_e3_c80", "ir_r1_k3_s1_e3_c80"],  # 7-10
    ["ir_r1_k7_s1_e6_c112_se0.25", "ir_r1_k5_s1_e4_c112_se0.25", "ir_r1_k3_s1_e3_c112_se0.25",
     "ir_r1_k3_s1_e3_c112_se0.25"],  # 11-14
    ["ir_r1_k5_s2_e6_c160_se0.25", "ir_r1_k3_s1_e6_c160_se0.25", "ir_r1_k5_s1_e6_c160_se0.25",
     "ir_r1_k7_s1_e3_c160_se0.25"],  # 15-18
    ["cn_r1_k1_s1_c960"],  # final expand: 1x1 conv + BN + h-swish (the CAM layer, 7x7 at 224 px)
]


#: timm's registered config: input settings (``create_model`` sets the size and channels of each instance) and
#: the CAM layer; the feature stages come from timm's ``feature_info`` of MobileNetV3.
default_cfgs = generate_default_cfgs({
    "eeea_net_c2": {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                    "num_classes": 1000, "first_conv": "conv_stem", "classifier": "classifier",
                    "paper_name": "EEEA-Net: An Early Exit Evolutionary Neural Architecture Search"},
})
LAYERS = {"cam_layer": "blocks.6", "cam_reshape": None}


@register_model
def eeea_net_c2(pretrained: bool = False, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2,
                **kwargs) -> MobileNetV3:
    """EEEA-Net-C2: stem 16 -> 19 MBConv blocks -> 960 expand -> GAP -> 1280 conv (no bias) -> classifier."""
    if pretrained:
        raise RuntimeError("eeea_net_c2: no ImageNet weights ship offline; train from scratch, distil, or pass "
                           "--weights FILE with a local checkpoint")
    se_layer = partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU, rd_round_fn=round_channels)
    model = build_model_with_cfg(
        MobileNetV3, "eeea_net_c2", False, block_args=decode_arch_def(ARCH), num_classes=num_classes,
        in_chans=in_chans, num_features=1280, stem_size=16, fix_stem=True, head_bias=False,
        round_chs_fn=partial(round_channels, multiplier=1.0), se_layer=se_layer,
        act_layer=get_act_layer("hard_swish"), drop_rate=drop_rate, **kwargs)
    model.pretrained_cfg = {**model.pretrained_cfg, **LAYERS}
    model.default_cfg = model.pretrained_cfg
    return model
