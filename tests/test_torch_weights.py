"""torchvision-layout state_dicts load into the Flax models and give the same logits.

torchvision is not a dependency, so each reference network is rebuilt here from ``torch.nn``
layers with torchvision's module names (the only thing the converter relies on). Weights are
random, BatchNorm running statistics and affine parameters are randomised too (fresh ones are
0/1 and would hide a mean/var or scale/bias mix-up), and both sides run in eval mode.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from cnnjax.models import create_model  # noqa: E402
from cnnjax.models.torch_weights import SUPPORTED_MODELS, from_torch_state_dict  # noqa: E402

# Logits are scaled to max |logit| = 1 (see _compare); float32 rounding through ~10-120 layers,
# in a different summation order on each side, stays below this.
ATOL = 1e-5
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# --------------------------------------------------------------------------------------------
# torchvision's architectures, module names preserved
# --------------------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class _ResNet18(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, width in enumerate((64, 128, 256, 512)):
            blocks = [_BasicBlock(cin, width, 2 if i else 1), _BasicBlock(width, width, 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(x.mean((2, 3)), 1))


class _FeaturesPoolClassifier(nn.Module):
    """torchvision's VGG/AlexNet skeleton: ``classifier(flatten(avgpool(features(x))))``."""

    def __init__(self, features, avgpool, classifier):
        super().__init__()
        self.features, self.avgpool, self.classifier = features, avgpool, classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _vgg11_bn(num_classes: int, head_width: int) -> nn.Module:
    layers, cin = [], 3
    for item in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
            cin = item
    classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, head_width),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(head_width, head_width),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(head_width, num_classes),
    )
    return _FeaturesPoolClassifier(nn.Sequential(*layers), nn.AdaptiveAvgPool2d((7, 7)), classifier)


def _alexnet(num_classes: int, head_width: int) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
    )
    classifier = nn.Sequential(
        nn.Dropout(),
        nn.Linear(256 * 6 * 6, head_width),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(head_width, head_width),
        nn.ReLU(),
        nn.Linear(head_width, num_classes),
    )
    return _FeaturesPoolClassifier(features, nn.AdaptiveAvgPool2d((6, 6)), classifier)


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers: int, cin: int, growth: int):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(cin + i * growth, growth))

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(cin))
        self.add_module("relu", nn.ReLU())
        self.add_module("conv", nn.Conv2d(cin, cout, 1, bias=False))
        self.add_module("pool", nn.AvgPool2d(2, 2))


class _DenseNet121(nn.Module):
    def __init__(self, num_classes: int, growth: int = 32, blocks=(6, 12, 24, 16)):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, 64, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(64))
        self.features.add_module("relu0", nn.ReLU())
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        channels = 64
        for i, n in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(n, channels, growth))
            channels += n * growth
            if i < len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = torch.relu(self.features(x))
        return self.classifier(torch.flatten(x.mean((2, 3)), 1))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random weights and random BN statistics/affines, then eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return module.eval()


def _compare(name: str, torch_model: nn.Module, size: int, impl: str = "custom", **kwargs):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # Rescale the classifier so that logits are O(1): the absolute tolerance is then a
        # relative one (random deep nets otherwise produce logits of any magnitude).
        classifier = [m for m in torch_model.modules() if isinstance(m, nn.Linear)][-1]
        scale = torch_model(x).abs().max()
        classifier.weight /= scale
        classifier.bias /= scale
        expected = torch_model(x).numpy()
    variables = from_torch_state_dict(name, torch_model.state_dict(), **kwargs)
    model = create_model(name, num_classes=expected.shape[1], impl=impl, **kwargs)
    x_nhwc = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
    # Jitted: one compile of the whole net is several times faster than eager dispatch, which
    # compiles every op of a new shape on its own (DenseNet-121 has hundreds); and without
    # XLA's CPU optimisation passes, which cost more compile time than they save on one run.
    apply = jax.jit(functools.partial(model.apply, train=False))
    got = np.asarray(apply.lower(variables, x_nhwc).compile(FAST_COMPILE)(variables, x_nhwc))
    assert got.dtype == np.float32
    error = float(np.max(np.abs(got - expected)))
    print(f"{name} ({impl}, {size}x{size}): max |jax - torch| = {error:.2e}")
    assert error <= ATOL, f"{name}: max |jax - torch| = {error:.2e} (max |logit| = 1)"


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["custom", "xla"])
def test_resnet18_matches_torch(impl):
    _compare("resnet18", _randomise(_ResNet18(num_classes=10), seed=0), size=64, impl=impl)


def test_vgg11_bn_matches_torch():
    torch_model = _randomise(_vgg11_bn(num_classes=10, head_width=64), seed=1)
    _compare("vgg11_bn", torch_model, size=32, head_width=64)


def test_alexnet_torchvision_matches_torch():
    torch_model = _randomise(_alexnet(num_classes=10, head_width=64), seed=2)
    # 71×71 → conv1 gives 16×16 → three pools give 1×1, which the adaptive pool repeats to 6×6;
    # the flatten permutation is still exercised since every 6×6 position has its own weights.
    _compare("alexnet_torchvision", torch_model, size=71, head_width=64)


def test_alexnet_flatten_permutation_matters():
    """At 224×224 the 6×6 map is non-constant, so a wrong flatten order would show."""
    torch_model = _randomise(_alexnet(num_classes=5, head_width=16), seed=3)
    _compare("alexnet_torchvision", torch_model, size=224, head_width=16)


def test_densenet121_matches_torch():
    _compare("densenet121", _randomise(_DenseNet121(num_classes=10), seed=4), size=32)


def test_old_densenet_keys_are_accepted():
    state = _DenseNet121(num_classes=3, blocks=(2, 1, 1, 1)).state_dict()  # small; check=False
    old = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for k, v in state.items()}
    assert old.keys() != state.keys()
    new_vars = from_torch_state_dict("densenet121", state, check=False)
    old_vars = from_torch_state_dict("densenet121", old, check=False)
    a = new_vars["params"]["denseblock1"]["denselayer1_norm1"]["scale"]
    b = old_vars["params"]["denseblock1"]["denselayer1_norm1"]["scale"]
    np.testing.assert_array_equal(a, b)


def test_layout_rules_on_numpy_input():
    """Conv OIHW→HWIO, Linear transpose, BN collections; numpy values work without torch."""
    state = {k: v.numpy() for k, v in _ResNet18(num_classes=7).state_dict().items()}
    variables = from_torch_state_dict("resnet18", state)
    np.testing.assert_array_equal(
        variables["params"]["conv1"]["kernel"], state["conv1.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state["fc.weight"].T)
    block = variables["batch_stats"]["layer2_0"]["downsample_bn"]
    np.testing.assert_array_equal(block["var"], state["layer2.0.downsample.1.running_var"])
    assert "num_batches_tracked" not in str(variables)


def test_errors_name_the_offending_key():
    state = dict(_ResNet18(num_classes=4).state_dict())
    state["head.weight"] = state["fc.weight"]
    with pytest.raises(ValueError, match=r"no cnnjax counterpart: head\.weight"):
        from_torch_state_dict("resnet18", state)
    del state["head.weight"]
    state["layer9.0.conv1.weight"] = state["conv1.weight"]  # maps, but the model has no layer9
    with pytest.raises(ValueError, match=r"unexpected params/layer9_0/conv1/kernel"):
        from_torch_state_dict("resnet18", state)
    del state["layer9.0.conv1.weight"]
    del state["layer1.0.bn1.running_var"]
    with pytest.raises(ValueError, match=r"missing batch_stats/layer1_0/bn1/var"):
        from_torch_state_dict("resnet18", state)
    with pytest.raises(ValueError, match="supported"):
        from_torch_state_dict("lenet5", state)
    assert "densenet121" in SUPPORTED_MODELS and "vgg19_bn" in SUPPORTED_MODELS
