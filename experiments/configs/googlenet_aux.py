# ruff: noqa: E501 - the command lines below are kept whole so they can be copied
"""GoogLeNet with and without its two auxiliary classifiers (Szegedy et al. 2015, §5).

Commands (accelerator), the same run twice, then one plot:
    cnnjax train googlenet --config experiments/configs/googlenet_aux.py:aux --workdir runs/googlenet_aux
    cnnjax train googlenet --config experiments/configs/googlenet_aux.py:noaux --workdir runs/googlenet_noaux
    cnnjax plot runs/googlenet_aux runs/googlenet_noaux

Expected: a small difference. The paper (§5) weights each auxiliary loss by 0.3 and reports
that "the effect of the auxiliary networks is relatively minor (around 0.5%)" on ImageNet.
To keep the study affordable we train on CIFAR-10 upsampled to 96×96 (the auxiliary heads'
5×5/3 pooling needs at least 79×79 inputs); ImageNet (``--set dataset=imagenet2012
--set image_size=256 --set augment.crop_size=224``) reproduces the paper's setting.
"""

from cnnjax.train.config import default_config


def get_config(variant: str = "aux"):
    if variant not in ("aux", "noaux"):
        raise ValueError(f'variant must be "aux" or "noaux", got {variant!r}')
    c = default_config()
    c.model = "googlenet"
    c.model_overrides.aux_logits = variant == "aux"
    c.aux_loss_weight = 0.3
    c.dataset = "cifar10"
    c.image_size = 96
    c.resize_mode = "resize"
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.epochs = 60
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.05
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 500
    c.augment.padding = 8
    c.augment.flip = True
    c.checkpoint.every_steps = 2_000
    c.log_every_steps = 200
    return c
