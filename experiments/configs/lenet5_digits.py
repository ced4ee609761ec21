"""LeNet-5 on the embedded scikit-learn digits (the default of ``cnnjax train lenet5``).

Command:
    cnnjax train lenet5
    # same as: cnnjax train lenet5 --config experiments/configs/lenet5_digits.py

Expected: ≥ 95 % test accuracy on the fixed 450-image test split; measured 97.3 % after 10
epochs in about 30 s wall time on 2 shared CPU cores (experiments/README.md). There is no paper
figure: the 8×8 digits (Alpaydin & Kaynak, UCI "optdigits" test set, 1,797 images) are our
offline smoke test, resized to LeNet-5's 32×32 input.
"""

from cnnjax.train.config import default_config


def get_config():
    return default_config()  # the defaults are tuned for exactly this run
