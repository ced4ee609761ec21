"""LeNet-5 on MNIST (LeCun, Bottou, Bengio & Haffner 1998).

Commands (MNIST as data/mnist.npz, 11 MB, once; or --set dataset=mnist for a prepared TFDS copy,
see docs/data.md):
    mkdir -p data && curl -L -o data/mnist.npz https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz
    cnnjax train lenet5 --config experiments/configs/lenet5_mnist.py --workdir runs/lenet5_mnist

Expected: 0.95 % test error — LeCun et al. 1998, §III-C and Fig. 14 (LeNet-5, 20 passes, no
distortions; 0.8 % with distortions). The paper trained with stochastic diagonal
Levenberg-Marquardt and an RBF output; we use AdamW + cosine with the softmax output and
per-channel standardisation, on 28×28 digits padded to 32×32 as in the paper. Measured here:
see experiments/README.md.
"""

from cnnjax.train.config import default_config


def get_config():
    c = default_config()
    c.model = "lenet5"
    c.dataset = "npz:data/mnist.npz"  # relative to the directory cnnjax runs in
    c.image_size = 32  # 28×28 centred in a 32×32 field (resize_mode auto pads)
    c.batch_size = 64
    c.eval_batch_size = 1000
    c.epochs = 20
    c.optimizer.name = "adamw"
    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "cosine"
    c.log_every_steps = 200
    return c
