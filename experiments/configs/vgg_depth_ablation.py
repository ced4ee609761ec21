# ruff: noqa: E501 - the command lines below are kept whole so they can be copied
"""VGG depth ablation: 11 / 13 / 16 / 19 weight layers (Simonyan & Zisserman 2015, Table 3).

Commands (accelerator; CIFAR-10 prepared as in resnet20_cifar10.py), one run per depth, then
one plot:
    for m in vgg11_bn vgg13_bn vgg16_bn vgg19_bn; do
      cnnjax train $m --config experiments/configs/vgg_depth_ablation.py:$m --workdir runs/ablation_$m
    done
    cnnjax plot runs/ablation_vgg11_bn runs/ablation_vgg13_bn runs/ablation_vgg16_bn runs/ablation_vgg19_bn

Expected shape of the result, from the paper (ImageNet, single-scale test, Table 3): top-1
error falls from configuration A (11 layers, 29.6 %) through B (13, 28.7 %) to D (16, 27.0 %)
and saturates at E (19, 27.3 %) — "depth helps, up to 16-19 layers". On CIFAR-10 with the
VGG-16-BN recipe of vgg16_bn_cifar10.py we expect the same ordering within a few tenths of a
percent; no paper reports these four CIFAR numbers. ``:vgg11`` etc. (no BN) also work.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "_vgg16_bn_cifar10", pathlib.Path(__file__).with_name("vgg16_bn_cifar10.py")
)
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)

DEPTHS = ("vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")


def get_config(model: str = "vgg11_bn"):
    if model.removesuffix("_bn") not in ("vgg11", "vgg13", "vgg16", "vgg19"):
        raise ValueError(f"choose one of {', '.join(DEPTHS)} (or without _bn), got {model!r}")
    return _base.get_config(model)
