"""One train step, one eval step (single-scale, or multi-scale + flip as EMANet)."""

import functools

import jax
import jax.numpy as jnp

from hemnet_jax.models.hem_unit import BASES, DIAGNOSTICS, STATS
from hemnet_jax.training import attention, metrics, sharding
from hemnet_jax.training.state import learning_rate_fn


def loss_and_grads(state, batch, *, config):
  """(loss, main-head loss, updated BN statistics / mu0 / ELBOs), gradients."""
  rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
  collections = ["batch_stats", BASES, DIAGNOSTICS] + ([STATS] if config.train.log_elbo else [])

  def loss_fn(params):
    (logits, aux), updates = state.apply_fn(
        {**state.variables(), "params": params}, batch["image"], train=True,
        mutable=collections, rngs={"dropout": rng})
    main = metrics.cross_entropy(logits, batch["label"])
    aux_loss = metrics.cross_entropy(aux, batch["label"]) if aux is not None else 0.0
    return main + config.model.aux_weight * aux_loss, (main, updates)

  return jax.value_and_grad(loss_fn, has_aux=True)(state.params)


def train_step(state, batch, *, config):
  """One SGD step; BN statistics and mu0 move with the global batch."""
  (loss, (main, updates)), grads = loss_and_grads(state, batch, config=config)
  state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"],
                                hem_bases=updates.get(BASES, {}))  # {}: no HEM unit
  out = {"loss": loss, "main_loss": main, "lr": learning_rate_fn(config)(state.step - 1)}
  if config.train.log_elbo:  # [T] per HEM unit: Eq. 3 after each iteration
    for path, elbo in jax.tree_util.tree_flatten_with_path(updates.get(STATS, {}))[0]:
      out["elbo/" + "/".join(str(getattr(k, "key", k)) for k in path[:-2])] = elbo
  for unit, diag in attention.gamma_report(updates.get(DIAGNOSTICS, {})).items():
    for name, value in diag.items():  # gamma^(T) of this batch
      out[f"attention/{unit}/{name}"] = value
  return state, out


def train_compiler_options():
  """XLA options for the train step on this backend.

  Donated, the step writes each parameter's update over the parameter itself. XLA:CPU's
  default copy insertion copies every parameter first, on each step; with region analysis,
  which sees that the update follows every read, it copies none (BENCHMARKS.md).
  Accelerators keep their defaults.
  """
  if jax.default_backend() != "cpu":
    return None
  return {"xla_cpu_copy_insertion_use_region_analysis": True}


def jit_train_step(config, mesh, state_sharding, donate=True):
  """train_step compiled for the mesh. Donating the state lets XLA update it in place:
  without, every step holds two copies of parameters and momenta."""
  return jax.jit(functools.partial(train_step, config=config),
                 in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)),
                 donate_argnums=0 if donate else (), compiler_options=train_compiler_options())


def eval_step(state, batch, *, num_classes):
  """(confusion matrix, the HEM units' gamma statistics to sum over the split)."""
  (logits, _), updates = state.apply_fn(state.variables(), batch["image"], train=False,
                                        mutable=[DIAGNOSTICS])
  cm = metrics.confusion_matrix(batch["label"], jnp.argmax(logits, -1), num_classes)
  return cm, updates.get(DIAGNOSTICS, {})


def averaged_probabilities(logits_fn, images, *, scales, flip, multiple):
  """Softmax probabilities [B, H, W, classes] averaged over scales and flips.

  logits_fn maps images [B, h, w, 3] (h, w multiples of `multiple`) to logits
  [B, h, w, classes] at the input size.
  """
  b, h, w, _ = images.shape
  total, count = 0.0, 0
  for s in scales:
    sh, sw = max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5))
    scaled = images if (sh, sw) == (h, w) else jax.image.resize(images, (b, sh, sw, 3), "bilinear")
    for flipped in (False, True) if flip else (False,):
      x = scaled[:, :, ::-1] if flipped else scaled
      # Zeros are the mean colour after normalisation, as eval_transform pads.
      x = jnp.pad(x, ((0, 0), (0, -sh % multiple), (0, -sw % multiple), (0, 0)))
      logits = logits_fn(x)[:, :sh, :sw].astype(jnp.float32)
      if flipped:
        logits = logits[:, :, ::-1]
      if (sh, sw) != (h, w):
        logits = jax.image.resize(logits, (b, h, w, logits.shape[-1]), "bilinear")
      total, count = total + jax.nn.softmax(logits, axis=-1), count + 1
  return total / count


def multi_scale_eval_step(state, batch, *, num_classes, scales, flip, multiple):
  """eval_step's contract (a confusion matrix) with averaged probabilities."""
  logits_fn = lambda x: state.apply_fn(state.variables(), x, train=False)[0]
  probs = averaged_probabilities(logits_fn, batch["image"], scales=scales, flip=flip,
                                 multiple=multiple)
  return metrics.confusion_matrix(batch["label"], jnp.argmax(probs, -1), num_classes)


def scales_of(eval_config):
  return tuple(float(s) for s in eval_config.scales) if eval_config.multi_scale else (1.0,)


def eval_step_for(config):
  """eval_step for plain single-scale evaluation, else the multi-scale step."""
  if not config.eval.multi_scale and not config.eval.flip:
    return eval_step
  return functools.partial(multi_scale_eval_step, scales=scales_of(config.eval),
                           flip=config.eval.flip, multiple=config.model.output_stride)
