# ruff: noqa: E501 - the command lines below are kept whole so they can be copied
"""DenseNet-BC (L = 100, k = 12) on CIFAR-10 with augmentation (Huang et al. 2017, §4.2).

Command (accelerator; CIFAR-10 prepared as in resnet20_cifar10.py):
    cnnjax train densenet_bc_100_12 --config experiments/configs/densenet_bc_100_12_cifar10.py --workdir runs/densenet_bc_100_12

Expected: 4.51 % test error on C10+ — Huang, Liu, van der Maaten & Weinberger 2017, Table 2.
Recipe as in the paper: SGD with Nesterov momentum 0.9, weight decay 1e-4, batch 64, 300
epochs, learning rate 0.1 divided by 10 at 50 % and 75 % of training, pad-4 crop + flip, no
dropout with augmentation.
"""

from cnnjax.train.config import default_config

_STEPS_PER_EPOCH = 50_000 // 64  # 781


def get_config():
    c = default_config()
    c.model = "densenet_bc_100_12"
    c.dataset = "cifar10"
    c.batch_size = 64
    c.eval_batch_size = 1000
    c.epochs = 300
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "step"
    c.schedule.milestones = (150 * _STEPS_PER_EPOCH, 225 * _STEPS_PER_EPOCH)
    c.augment.padding = 4
    c.augment.flip = True
    c.checkpoint.every_steps = 5_000
    c.log_every_steps = 200
    return c
