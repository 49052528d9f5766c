"""The train state, the model and optimizer a config describes, and a fresh state."""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from hemnet_jax.models.hem_unit import BASES
from hemnet_jax.models.hemnet import HEMNet
from hemnet_jax.training import checkpoints, config as config_lib


class TrainState(train_state.TrainState):
  batch_stats: Any
  hem_bases: Any  # mu0 of each HEM unit: moved by moving average, never by the optimizer

  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats, BASES: self.hem_bases}


def build_model(config):
  """The HEMNet of config.model and config.hem (whose names are the modules' attributes)."""
  config = config_lib.resolve(config)
  return HEMNet(num_classes=config.data.num_classes, hem=flax.core.FrozenDict(config.hem.to_dict()),
                dtype=jnp.bfloat16 if config.train.dtype == "bfloat16" else jnp.float32,
                **config_lib.model_fields(config))


def learning_rate_fn(config):
  """Poly decay, lr * (1 - step / num_steps) ** 0.9, as EMANet."""
  t = config.train
  return optax.polynomial_schedule(t.lr, 0.0, t.poly_power, t.num_steps)


def make_optimizer(config):
  """SGD with momentum; L2 weight decay (coupled, as torch.optim.SGD) on kernels only."""
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key == "kernel", params)
  return optax.chain(optax.add_decayed_weights(config.train.weight_decay, decay_mask),
                     optax.sgd(learning_rate_fn(config), momentum=config.train.momentum))


# Initialisation runs once, and its program is mostly the parameters' random initialisers, on
# which XLA's expensive passes cost far more compile time than they could save (BENCHMARKS.md).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _init_args(config, rng):
  size = config.data.crop_size
  return {"params": rng}, jnp.zeros((1, size, size, 3), jnp.float32)


def _state(config, model, variables):
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           batch_stats=variables["batch_stats"],
                           hem_bases=variables.get(BASES, {}), tx=make_optimizer(config))


def create_train_state(config, model, rng, *, load_backbone=True):
  """A fresh state; with config.model.backbone_checkpoint (and load_backbone), the
  backbone starts from that converted ImageNet checkpoint, the heads from `rng`."""
  pretrained = None
  if load_backbone and config.model.backbone_checkpoint:
    pretrained = checkpoints.load_backbone_for(config)
  args = _init_args(config, rng)
  init = jax.jit(functools.partial(model.init, train=False)).lower(*args).compile(INIT_COMPILER_OPTIONS)
  variables = dict(init(*args))
  if pretrained is not None:
    variables["params"], variables["batch_stats"] = checkpoints.replace_backbone(
        variables["params"], variables["batch_stats"], pretrained, config.model.backbone_checkpoint)
  return make_state(config, model, variables)


def make_state(config, model, variables):
  """The train state holding `variables`, with the optimizer's initial state.

  Compiled, not run op by op: run eagerly, the optimizer's init makes one small program per
  parameter shape (BENCHMARKS.md, "Compiling the model's initialisation")."""
  make = jax.jit(functools.partial(_state, config, model))
  return make.lower(variables).compile(INIT_COMPILER_OPTIONS)(variables)


def abstract_train_state(config, model):
  """The state's structure, shapes and dtypes, without running the model's initialisation."""
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             *_init_args(config, jax.random.key(0)))
  return jax.eval_shape(functools.partial(_state, config, model), variables)
