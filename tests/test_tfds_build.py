"""From a *built* TFDS data set to cnnjax training, without TensorFlow (docs/data.md).

The docs say: ``pip install -e ".[tfds-prepare]"``, ``tfds build mnist
--file_format=array_record``, then ``cnnjax train lenet5 --dataset mnist``, which reads the
ArrayRecord files with ``tfds.data_source``. ``tfds build`` runs the data set's builder through
``DatasetBuilder.download_and_prepare``; here the real ``mnist`` builder (its features, version
and file names) prepares 64 + 32 synthetic digits instead of downloading (a subclass replaces
only the split generators, and gives PNG bytes: encoding arrays is what needs TensorFlow).
TFDS writes ``DATA_DIR/mnist/3.0.1/{dataset_info.json, features.json,
mnist-{train,test}.array_record-00000-of-00001}``, exactly the layout ``tfds build`` leaves,
and the ``cnnjax`` command then trains on it in a subprocess.
"""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
Image = pytest.importorskip("PIL.Image")


def _digit(label: int) -> np.ndarray:
    """A 28×28 grey image whose bright bar's height encodes ``label`` (learnable, checkable)."""
    image = np.zeros((28, 28), np.uint8)
    image[2 * label : 2 * label + 6, 4:24] = 255
    return image


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def _build_mnist(data_dir: pathlib.Path) -> pathlib.Path:
    """``tfds build mnist --file_format=array_record --data_dir DATA_DIR``, offline."""
    from tensorflow_datasets.image_classification import mnist

    class OfflineMnist(mnist.MNIST, skip_registration=True):
        name = "mnist"  # the registered builder's name, version and features

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(64), "test": self._generate_examples(32)}

        def _generate_examples(self, count):
            for i in range(count):
                yield i, {"image": _png(_digit(i % 10)), "label": i % 10}

    builder = OfflineMnist(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return pathlib.Path(builder.data_dir)


def test_a_tfds_build_directory_is_read_by_data_source_and_trained_from_the_cli(tmp_path):
    data_dir = tmp_path / "tensorflow_datasets"
    built = _build_mnist(data_dir)
    assert built == data_dir / "mnist" / "3.0.1"
    names = sorted(p.name for p in built.iterdir())
    assert names == [
        "dataset_info.json",
        "features.json",
        "mnist-test.array_record-00000-of-00001",
        "mnist-train.array_record-00000-of-00001",
    ]
    assert "tensorflow" not in sys.modules  # building and reading never imported TensorFlow

    from cnnjax.data import load_dataset

    source = tfds.data_source("mnist", split="test", data_dir=str(data_dir), download=False)
    assert len(source) == 32
    record = source[13]  # TFDS shuffles records when it writes: match by label
    np.testing.assert_array_equal(record["image"][..., 0], _digit(int(record["label"])))
    dataset = load_dataset("mnist", data_dir=str(data_dir), image_size=32)
    assert (len(dataset.train), len(dataset.test), dataset.num_classes) == (64, 32, 10)
    assert dataset.image_shape == (32, 32, 1)

    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(__file__).parents[1]), *sys.path])
    command = [
        *("train", "lenet5", "--dataset", "mnist", "--set", f"data_dir={data_dir}"),
        *("--batch-size", "16", "--set", "num_steps=2", "--parallel", "none"),
        *("--impl", "xla", "--workdir", str(tmp_path / "run")),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "cnnjax.cli", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "tensorflow" not in sys.modules
    assert "training lenet5 on mnist (64 train / 32 test, (32, 32, 1))" in result.stdout
    assert "test accuracy " in result.stdout and "(32 images" in result.stdout
