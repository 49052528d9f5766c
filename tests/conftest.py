"""Fixtures shared by the dataset, pipeline and training tests."""

import pathlib

import pytest
import tensorflow_datasets as tfds

import hemnet_jax.datasets  # noqa: F401  (registers the builders)

TESTDATA = pathlib.Path(__file__).resolve().parent / "testdata"


@pytest.fixture(scope="session")
def fake_voc(tmp_path_factory):
  """(data_dir, manual_dir): voc_aug prepared from the committed fake archives."""
  data_dir = tmp_path_factory.mktemp("tfds_voc")
  builder = tfds.builder("voc_aug", data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(TESTDATA / "voc_aug")))
  return data_dir, TESTDATA / "voc_aug"
