# ruff: noqa: E501 - the command lines below are kept whole so they can be copied
"""ResNet-56 on CIFAR-10 (He, Zhang, Ren & Sun 2016, §4.2): the ResNet-20 recipe, deeper.

Command (accelerator; CIFAR-10 prepared as in resnet20_cifar10.py):
    cnnjax train resnet56 --config experiments/configs/resnet56_cifar10.py --workdir runs/resnet56_cifar10

Expected: 6.97 % test error — He et al. 2016, Table 6. Same schedule: SGD 0.1, momentum 0.9, wd 1e-4, batch
128, ÷10 at 32k and 48k, 64k iterations, pad-4 crop + flip.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "_resnet20_cifar10", pathlib.Path(__file__).with_name("resnet20_cifar10.py")
)
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config():
    return _base.get_config("56")
