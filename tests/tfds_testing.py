"""tfds's own `DatasetBuilderTestCase`, run without TensorFlow.

Why it does not run as is (tensorflow_datasets 4.9.10): its modules import `dill` (a small
dev requirement here) and use TensorFlow at import time, `tf.test.TestCase` as the base
class of tfds' TestCase and `tf.dtypes.DType` in a dataclass annotation; then at run time
`tf.compat.v1.test.get_temp_dir` (setUp), `tf.executing_eagerly`, `tf.Graph` and
`test_session` (the graph-and-eager decorator), `tf.RaggedTensor` (example checksums),
`tf.nest` (mocked downloads, unused by manual-download builders), and `tf.data` in
`_assertAsDataset` (`builder.as_dataset` is tf.data).

All but the last get a small stand-in, bound only inside those testing modules: tfds' core
keeps seeing no TensorFlow (its `'tensorflow' in sys.modules` checks stay False), so builders
run exactly as for a user. `_assertAsDataset` is replaced by the same checks (example count,
feature shapes and dtypes, no example in two splits) read through the array_record data
source instead of tf.data. Everything else (mocked manual_dir, the ban on `os`/`open` in the
builder module, keys, num_examples, reload, configs) is tfds' code as is.
"""

import contextlib
import tempfile
import types

import numpy as np
import tree
from absl.testing import absltest
from tensorflow_datasets.core.utils import lazy_imports_utils


def _stand_in():
  graph_depth = [0]

  class Graph:
    @contextlib.contextmanager
    def as_default(self):
      graph_depth[0] += 1
      try:
        yield
      finally:
        graph_depth[0] -= 1

  class TestCase(absltest.TestCase):
    @contextlib.contextmanager
    def test_session(self, **_):
      yield

    test_session.__test__ = False  # a context manager, not a test

  ns = types.SimpleNamespace
  return ns(
      test=ns(TestCase=TestCase),
      # Inside the decorator's graph-mode pass, report graph mode so that the test's own
      # SKIP_TF1_GRAPH_MODE early return applies instead of building everything twice.
      executing_eagerly=lambda: graph_depth[0] == 0,
      Graph=Graph,
      dtypes=ns(DType=object),
      nest=ns(map_structure=tree.map_structure),
      RaggedTensor=type("RaggedTensor", (), {}),
      compat=ns(v1=ns(test=ns(get_temp_dir=tempfile.gettempdir),
                      ragged=ns(RaggedTensorValue=type("RaggedTensorValue", (), {})))),
  )


def _import_testing_modules():
  stand_in = _stand_in()
  lazy_tf = lazy_imports_utils.tensorflow
  lazy_tf.__dict__["_module"] = stand_in  # what the lazy module's cached import would hold
  try:
    # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.testing import dataset_builder_testing, feature_test_case
    from tensorflow_datasets.testing import test_case, test_utils
  finally:
    del lazy_tf.__dict__["_module"]
  for module in (dataset_builder_testing, feature_test_case, test_case, test_utils):
    module.tf = stand_in
  return dataset_builder_testing


_dbt = _import_testing_modules()


class DatasetBuilderTestCase(_dbt.DatasetBuilderTestCase):
  """tfds' DatasetBuilderTestCase on array_record files, read through data sources."""

  def _make_builder(self, config=None):
    return self.dataset_class(data_dir=self.tmp_dir, config=config, version=self.VERSION,
                              file_format="array_record")

  def _assertAsDataset(self, builder):
    tensor_info = builder.info.features.get_tensor_info()
    hashes = {}
    for split, expected in self.SPLITS.items():
      source = builder.as_data_source(split=split)
      examples = [source[i] for i in range(len(source))]
      self.assertLen(examples, expected)
      for example in examples:
        self.assertEqual(set(example), set(tensor_info))
        for key, info in tensor_info.items():
          value = example[key]
          if info.np_dtype == np.object_:  # strings and encoded bytes come back as `bytes`
            self.assertIsInstance(value, bytes, key)
          else:
            self.assertEqual(np.asarray(value).dtype, info.np_dtype, key)
            self.assertEqual(np.shape(value), tuple(info.shape), key)
      hashes[split] = {_dbt.checksum(e) for e in examples}
    splits = [s for s in hashes if s not in self.OVERLAPPING_SPLITS]
    for i, a in enumerate(splits):
      for b in splits[i + 1:]:
        self.assertFalse(hashes[a] & hashes[b], f"splits {a} and {b} share examples")
