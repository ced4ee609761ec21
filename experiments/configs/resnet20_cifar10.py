# ruff: noqa: E501 - the command lines below are kept whole so they can be copied
"""ResNet-20 on CIFAR-10 (He, Zhang, Ren & Sun 2016, "Deep Residual Learning", §4.2).

Command (needs an accelerator: 64k iterations; CIFAR-10 prepared once with internet access by
`tfds build cifar10 --file_format=array_record`):
    cnnjax train resnet20 --config experiments/configs/resnet20_cifar10.py --workdir runs/resnet20_cifar10

Expected: 8.75 % test error — He et al. 2016, Table 6. Recipe as in the paper: SGD, momentum
0.9, weight decay 1e-4, batch 128, learning rate 0.1 divided by 10 at 32k and 48k iterations,
stop at 64k; 4-pixel zero padding + random 32×32 crop + horizontal flip. Differences: we train
on all 50k training images (the paper's 45k/5k split picked the schedule) and standardise per
channel instead of subtracting the per-pixel mean.
"""

from cnnjax.train.config import default_config


def get_config(depth: str = "20"):
    c = default_config()
    c.model = f"resnet{depth}"
    c.dataset = "cifar10"
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.num_steps = 64_000
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "step"
    c.schedule.milestones = (32_000, 48_000)
    c.schedule.decay_factor = 0.1
    c.augment.padding = 4
    c.augment.flip = True
    c.checkpoint.every_steps = 2_000
    c.log_every_steps = 200
    return c
