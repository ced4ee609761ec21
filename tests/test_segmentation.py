"""Segmentation: U-Net and SegNet (shapes, exact parameter counts), the digits_seg scenes, the
per-pixel loss and IoU metrics, and a few training steps."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax.data import batches, load_dataset
from cnnjax.data.segmentation import BACKGROUND, INK
from cnnjax.models import create_model, get_model_info, list_models
from cnnjax.models.unet import center_crop
from cnnjax.train.state import create_train_state
from cnnjax.train.tasks import (
    iou_from_confusion,
    segmentation_eval_step,
    segmentation_loss,
    segmentation_metrics,
    segmentation_train_step,
)


def shapes_and_count(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    return out.shape, variables


def conv_params(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


def test_registry_lists_segmentation_models_apart():
    assert list_models(task="segmentation") == ["segnet", "unet"]
    assert "unet" not in list_models() and "unet" in list_models(task=None)
    assert get_model_info("unet").task == "segmentation"


def test_unet_paper_configuration_count_and_output_size():
    out, variables = shapes_and_count(create_model("unet"), (1, 572, 572, 1))
    assert out == (1, 388, 388, 2)
    widths = (64, 128, 256, 512, 1024)
    expected, c_in = 0, 1
    for w in widths:  # contracting path and bottom: two 3x3 convs per level
        expected += conv_params(3, c_in, w) + conv_params(3, w, w)
        c_in = w
    for w in reversed(widths[:-1]):  # up-conv 2x2 (c -> c/2), then two 3x3 convs on the concat
        expected += conv_params(2, 2 * w, w) + conv_params(3, 2 * w, w) + conv_params(3, w, w)
    expected += conv_params(1, 64, 2)
    total = sum(p.size for p in jax.tree.leaves(variables["params"]))
    assert total == expected == 31_030_658


def test_unet_small_same_padding_and_center_crop():
    model = create_model("unet", num_classes=3, widths=(4, 8), padding=1)
    x = jnp.ones((2, 16, 16, 1))
    variables = model.init(jax.random.key(0), x)
    assert model.apply(variables, x).shape == (2, 16, 16, 3)
    a = jnp.arange(2 * 6 * 7 * 1).reshape(2, 6, 7, 1)
    np.testing.assert_array_equal(center_crop(a, (2, 3)), a[:, 2:4, 2:5])


def test_segnet_reference_count_and_shapes():
    out, variables = shapes_and_count(create_model("segnet"), (1, 360, 480, 3))
    assert out == (1, 360, 480, 11)
    params = variables["params"]
    total = sum(p.size for p in jax.tree.leaves(params))
    encoder = sum(
        p.size for name, sub in params.items() if "_D" not in name for p in jax.tree.leaves(sub)
    )
    vgg16_convs = 14_714_688  # VGG-16's 13 conv layers, weights and biases
    assert encoder == vgg16_convs + 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512)
    assert total == 29_449_355
    assert sum(p.size for p in jax.tree.leaves(variables["batch_stats"])) == 15_872


def test_segnet_decoder_upsamples_at_the_switches_custom_equals_xla():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3), jnp.float32)
    kw = dict(num_classes=4, stages=((4, 1), (8, 1)))
    custom, xla = create_model("segnet", **kw), create_model("segnet", impl="xla", **kw)
    variables = custom.init(jax.random.key(1), x)
    y = custom.apply(variables, x)
    assert y.shape == (2, 16, 16, 4)
    np.testing.assert_allclose(y, xla.apply(variables, x), rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda x: custom.apply(variables, x))(x))
    assert "scatter" in jaxpr  # max_unpool


def test_digits_seg_is_deterministic_and_labels_the_ink():
    ds = load_dataset("digits_seg")
    again = load_dataset("digits_seg")
    np.testing.assert_array_equal(ds.train.images, again.train.images)
    np.testing.assert_array_equal(ds.test.labels, again.test.labels)
    assert ds.train.images.shape == (2000, 32, 32, 1) and ds.test.labels.shape == (500, 32, 32)
    assert ds.num_classes == 11
    ink = ds.train.images[..., 0] >= INK
    np.testing.assert_array_equal(ds.train.labels != BACKGROUND, ink)
    counts = np.bincount(ds.train.labels.ravel(), minlength=11)
    assert (counts > 0).all() and 0.7 < counts[BACKGROUND] / counts.sum() < 0.9


def test_loss_ignores_ignore_index_and_crops_labels():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 3, 4))
    labels = rng.integers(0, 4, (2, 5, 5))
    labels[0, 1, 1] = 255  # inside the central 3x3 crop: ignored
    inner = labels[:, 1:4, 1:4]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = inner != 255
    picked = np.take_along_axis(log_p, np.where(valid, inner, 0)[..., None], -1)[..., 0]
    expected = -(picked * valid).sum() / valid.sum()
    np.testing.assert_allclose(segmentation_loss(jnp.asarray(logits), inner), expected, rtol=1e-6)
    np.testing.assert_allclose(segmentation_loss(jnp.asarray(logits), labels), expected, rtol=1e-6)
    m = segmentation_metrics(jnp.asarray(logits), jnp.asarray(labels))
    assert float(m["count"]) == valid.sum() == float(m["confusion"].sum())


def test_iou_from_confusion_by_hand():
    #   true\pred  0  1  2
    confusion = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    scores = iou_from_confusion(confusion)
    np.testing.assert_allclose(scores["iou"][:2], [3 / 6, 4 / 7])
    assert np.isnan(scores["iou"][2])  # absent class: left out of the mean
    assert scores["mean_iou"] == pytest.approx((3 / 6 + 4 / 7) / 2)
    assert scores["pixel_accuracy"] == pytest.approx(7 / 10)


def test_eval_mask_drops_padding_examples():
    logits = jnp.zeros((2, 2, 2, 3)).at[..., 1].set(1.0)
    labels = jnp.ones((2, 2, 2), jnp.int32)
    m = segmentation_metrics(logits, labels, weights=jnp.array([1.0, 0.0]))
    assert float(m["count"]) == 4 and float(m["correct"]) == 4


def test_a_few_unet_steps_on_digits_seg_reduce_the_loss():
    ds = load_dataset("digits_seg")
    model = create_model("unet", num_classes=11, widths=(8, 16), padding=1)
    tx = optax.adam(3e-3)
    state = create_train_state(model, tx, seed=0, input_shape=ds.image_shape)
    step = jax.jit(functools.partial(segmentation_train_step, model=model, tx=tx))
    losses = []
    for batch in batches(ds, batch_size=32, train=True):
        state, m = step(state, batch)
        losses.append(float(m["loss"] / m["count"]))
        if len(losses) == 15:
            break
    assert losses[-1] < 0.85 * losses[0]
    batch = next(batches(ds, batch_size=50, train=False))
    m = jax.jit(functools.partial(segmentation_eval_step, model=model))(state, batch)
    scores = iou_from_confusion(m["confusion"])
    assert scores["pixel_accuracy"] > 0.7  # the background (81 % of pixels) is found


def test_plot_segmentation_writes_masks_beside_ground_truth(tmp_path):
    from cnnjax.viz import plot_segmentation

    ds = load_dataset("digits_seg")
    path = plot_segmentation(
        ds.test.images[:3],
        ds.test.labels[:3],
        ds.test.labels[:3],
        tmp_path / "m.png",
        num_classes=11,
    )
    with open(path, "rb") as f:
        header = f.read(24)
    assert int.from_bytes(header[16:20], "big") == 600  # 3 panels, 6 in at 100 dpi
    assert int.from_bytes(header[20:24], "big") == 600  # 3 rows of 2 in
