"""Classic CNN architectures as Flax Linen modules, one family per file, and the registry.

Importing this package imports every family module, which registers its models::

    >>> from cnnjax.models import create_model, list_models
    >>> model = create_model("lenet5", num_classes=10, impl="xla")

Every model is called as ``model.apply(variables, x, train=...)`` on channels-last images and
returns logits (GoogLeNet in training mode also returns its auxiliary logits).

To add a family: import its module below (that registers its models), re-export its public
models and building blocks, and list them in ``__all__``.
"""

# Family modules: importing one registers its models.
from cnnjax.models import alexnet, allconv, blocks, googlenet, lenet, nin, vgg, zfnet

# Public models and building blocks, one line per family.
from cnnjax.models.alexnet import AlexNet, AlexNetTorchvision
from cnnjax.models.allconv import AllConvNet
from cnnjax.models.googlenet import GOOGLENET_INCEPTION_CONFIGS, GoogLeNet, InceptionBlock
from cnnjax.models.lenet import LENET5_C3_TABLE, LeNet5, scaled_tanh
from cnnjax.models.nin import MLPConvBlock, NiN
from cnnjax.models.registry import (
    ModelInfo,
    create_model,
    get_model_info,
    list_models,
    register_model,
)
from cnnjax.models.vgg import VGG, VGG_CONFIGS
from cnnjax.models.zfnet import ZFNet

__all__ = [
    "GOOGLENET_INCEPTION_CONFIGS",
    "LENET5_C3_TABLE",
    "VGG",
    "VGG_CONFIGS",
    "AlexNet",
    "AlexNetTorchvision",
    "AllConvNet",
    "GoogLeNet",
    "InceptionBlock",
    "LeNet5",
    "MLPConvBlock",
    "ModelInfo",
    "NiN",
    "ZFNet",
    "alexnet",
    "allconv",
    "blocks",
    "create_model",
    "get_model_info",
    "googlenet",
    "lenet",
    "list_models",
    "nin",
    "register_model",
    "scaled_tanh",
    "vgg",
    "zfnet",
]

# ResNet, DenseNet and MobileNet families: their models and public blocks.
from cnnjax.models import densenet, mobilenet, resnet
from cnnjax.models.densenet import DenseBlock, DenseNet, Transition
from cnnjax.models.mobilenet import MobileNetV1, SeparableBlock
from cnnjax.models.resnet import (
    BottleneckBlock,
    ResNet,
    ResNetBlock,
    option_a_shortcut,
)

__all__ += [
    "BottleneckBlock",
    "DenseBlock",
    "DenseNet",
    "MobileNetV1",
    "ResNet",
    "ResNetBlock",
    "SeparableBlock",
    "Transition",
    "densenet",
    "mobilenet",
    "option_a_shortcut",
    "resnet",
]

# Segmentation families: per-pixel logits; listed by list_models(task="segmentation").
from cnnjax.models import segnet, unet  # noqa: E402
from cnnjax.models.segnet import SegNet  # noqa: E402
from cnnjax.models.unet import UNet  # noqa: E402

__all__ += ["SegNet", "UNet", "segnet", "unet"]

from cnnjax.models.functional import FunctionalModel  # noqa: E402

__all__ += ["FunctionalModel"]
