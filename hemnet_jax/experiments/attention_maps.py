r"""The HEM iterations' attention maps and reconstructions for one image (the paper's Figure 4).

  python -m hemnet_jax.experiments.attention_maps --config configs/demo.py --workdir DIR [--image_index 0]
      [--bases 0,3,7] [--channels 0,5] [--at_init] [--out OUT] [--config.hem.num_iters_eval=5]

Validation image --image_index (of config.data.eval_split), normalised and padded as in
evaluation, goes through the run's latest checkpoint (the fresh model with --at_init) up
to the HEM unit's input features X (its conv_in output); X and the run's mu0 then go
through T = T_eval HEM iterations (config.hem.num_iters_eval, None: T_train) with the
run's eta, temperature, kernel and normalisation: the model's own iterations, recomputed
outside it. The maps are cropped to the image (the padding left out). Writes, under
<workdir>/attention (or --out):
  attention_<index>.png  the grid of plots.attention_figure: a header row (image, label,
      prediction, input channels X_.c), then one row per iteration t = 1..T:
      argmax_k gamma^(t), gamma^(t)_.k of each of --bases, and X_tilde^(t)_.c =
      (gamma^(t) mu^(t))_.c (Eq. 10) of each of --channels;
  attention_<index>.npz  the arrays: image, label, prediction, x [h, w, C], mu0 [K, C],
      gammas [T, h, w, K], mus [T, K, C], x_tilde [T, h, w, len(channels)], bases, channels.
Default --bases: the 4 with the most mass sum_n gamma^(T)_nk on the image; default
--channels: the 3 channels of X with the largest spatial standard deviation.
"""

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from hemnet_jax import cli, hem
from hemnet_jax.data import pipeline
from hemnet_jax.models.hemnet import hem_inputs
from hemnet_jax.training import checkpoints, config as config_lib, sharding, state as state_lib
from hemnet_jax.vis import plots, render

DEFAULT_BASES, DEFAULT_CHANNELS = 4, 3


def indices(text, flag, limit, what):
  """A comma-separated list of distinct indices in [0, limit); the error names the flag."""
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise ValueError(f"--{flag}={text}: expected comma-separated integers") from None
  bad = [v for v in values if not 0 <= v < limit]
  if bad:
    raise ValueError(f"--{flag}={text}: index {bad[0]} out of range, the model has {what} = "
                     f"{limit} (indices 0 to {limit - 1})")
  if len(set(values)) != len(values):
    raise ValueError(f"--{flag}={text}: an index appears twice")
  return values


def iterations(x, mu0, config):
  """HEMOutput of the model's T_eval iterations on x [B, N, C] from mu0 [K, C]."""
  h = config_lib.resolve(config).hem
  return hem.hem_iterations(x, mu0, num_iters=h.num_iters_eval, eta=h.eta,
                            temperature=h.temperature, l2_normalize=h.l2_normalize, kernel=h.kernel)


def run(config, workdir, *, image_index=0, bases="", channels="", at_init=False, out=None):
  """The command line's work; returns (the PNG's path, the arrays written to the npz)."""
  config = config_lib.validate(config)
  # The flags first: a bad index fails before anything loads or compiles.
  k, c = config.hem.num_bases, config.model.head_channels
  bases = indices(bases, "bases", k, "K (config.hem.num_bases)")
  channels = indices(channels, "channels", c, "C (config.model.head_channels)")
  workdir = epath.Path(workdir).absolute()
  split = pipeline.load_split(config.data, config.data.eval_split)
  if not 0 <= image_index < split.num_examples:
    raise ValueError(f"--image_index={image_index}: '{config.data.eval_split}' has "
                     f"{split.num_examples} images (indices 0 to {split.num_examples - 1})")

  raw = pipeline.decode(split.source[image_index])
  stride = config.model.output_stride
  example = pipeline.eval_transform(split.source[image_index], multiple=stride)
  height, width = raw["label"].shape
  fh, fw = -(-height // stride), -(-width // stride)  # the feature cells that hold the image

  model = state_lib.build_model(config)  # T_eval from config.hem.num_iters_eval
  if at_init:
    state = state_lib.create_train_state(config, model, jax.random.key(config.seed))
    when = "at init"
  else:
    state, step = checkpoints.restore(workdir, state_lib.abstract_train_state(config, model),
                                      mesh=sharding.make_mesh(), fsdp=config.train.fsdp)
    when = f"after {step} steps"

  @jax.jit
  def forward(variables, images):
    x, mu0 = hem_inputs(model, variables, images)
    logits, _ = model.apply(variables, images, train=False)
    return x, mu0, jnp.argmax(logits, -1)

  x, mu0, prediction = forward(state.variables(), jnp.asarray(example["image"])[None])
  out_hem = iterations(x, mu0, config)
  ph, pw = example["image"].shape[0] // stride, example["image"].shape[1] // stride
  crop = lambda a: np.asarray(a).reshape(a.shape[:-2] + (ph, pw, a.shape[-1]))[..., :fh, :fw, :]
  x_map = crop(x[0])
  gammas = crop(out_hem.gammas[:, 0])  # [T, h, w, K]
  if not bases:  # the bases that explain the most of this image at the last iteration
    bases = [int(i) for i in np.argsort(-gammas[-1].sum((0, 1)), kind="stable")[:DEFAULT_BASES]]
  if not channels:
    channels = [int(i) for i in np.argsort(-x_map.std((0, 1)), kind="stable")[:DEFAULT_CHANNELS]]
  x_tilde = crop(hem.r_step(out_hem.gammas[:, 0], out_hem.mus[:, 0]))[..., channels]  # Eq. 10
  arrays = dict(image=np.asarray(raw["image"]), label=np.asarray(raw["label"]),
                prediction=np.asarray(prediction[0, :height, :width]).astype(np.uint8),
                x=x_map, mu0=np.asarray(mu0), gammas=gammas, mus=np.asarray(out_hem.mus[:, 0]),
                x_tilde=x_tilde, bases=np.asarray(bases), channels=np.asarray(channels))

  out = epath.Path(out) if out else workdir / "attention"
  out.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out / f"attention_{image_index}.npz", **arrays)
  title = (f"{when}, '{config.data.eval_split}' image {image_index}: T = {gammas.shape[0]} HEM "
           f"iterations, eta {config.hem.eta:g}, K = {k}")
  fig, _ = plots.attention_figure(arrays["image"], arrays["label"], arrays["prediction"], x_map,
                                  gammas, x_tilde, bases, channels,
                                  render.palette(config.data), title=title)
  png = out / f"attention_{image_index}.png"
  fig.savefig(png, dpi=plots.DPI)
  print(f"bases {bases}, channels {channels}, T = {gammas.shape[0]}\nWrote {png} and "
        f"{png.with_suffix('.npz').name}", flush=True)
  return png, arrays


def main(f):
  run(f.config, f.workdir, image_index=f.image_index, bases=f.bases, channels=f.channels,
      at_init=f.at_init, out=f.out)


if __name__ == "__main__":
  from absl import flags
  cli.define_config_flags("A training run: its latest checkpoint is shown.",
                          config_help="The run's config file.")
  flags.DEFINE_integer("image_index", 0, "Which image of config.data.eval_split.")
  flags.DEFINE_string("bases", "", "Comma-separated basis indices k < K; default: the "
                      f"{DEFAULT_BASES} with the most mass on the image.")
  flags.DEFINE_string("channels", "", "Comma-separated channel indices c < C; default: the "
                      f"{DEFAULT_CHANNELS} of X with the largest spatial spread.")
  flags.DEFINE_bool("at_init", False, "Show the freshly initialised model instead of the run.")
  flags.DEFINE_string("out", None, "Output directory; default <workdir>/attention.")
  cli.start(main)
