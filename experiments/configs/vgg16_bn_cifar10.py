# ruff: noqa: E501 - the command lines below are kept whole so they can be copied
"""VGG-16 with batch normalisation on CIFAR-10 (Simonyan & Zisserman 2015 architecture D + BN).

Command (accelerator; CIFAR-10 prepared as in resnet20_cifar10.py):
    cnnjax train vgg16_bn --config experiments/configs/vgg16_bn_cifar10.py --workdir runs/vgg16_bn_cifar10

Expected: ≈ 93.5 % test accuracy (≈ 6.5 % error). The VGG paper reports ImageNet only; the
CIFAR-10 figure is the usual community result for VGG-16-BN with this recipe (e.g. 93.5-93.9 %
in widely used PyTorch CIFAR reproductions), not a paper number. Recipe: SGD 0.1 momentum 0.9
wd 5e-4, batch 128, 200 epochs with cosine decay, pad-4 crop + flip; the model keeps the
paper's 4096-wide classifier on the 1×1×512 feature map of a 32×32 input.
"""

from cnnjax.train.config import default_config


def get_config(model: str = "vgg16_bn"):
    c = default_config()
    c.model = model
    c.dataset = "cifar10"
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.epochs = 200
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "cosine"
    c.augment.padding = 4
    c.augment.flip = True
    c.checkpoint.every_steps = 2_000
    c.log_every_steps = 200
    return c
