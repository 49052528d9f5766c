"""The attention diagnostics of hem/diagnostics.py per HEM unit, as the loop reports them."""

import jax

from hemnet_jax.hem import diagnostics


def per_unit(sown):
  """{HEM unit path: {name: value}} of a collection each unit sowed once per name."""
  units = {}
  for path, value in jax.tree_util.tree_flatten_with_path(sown)[0]:
    keys = [str(getattr(k, "key", k)) for k in path]
    units.setdefault("/".join(keys[:-2]), {})[keys[-2]] = value
  return units


def gamma_report(sums):
  """{HEM unit path: gamma diagnostics} of the summed statistics the units sowed."""
  return {unit: diagnostics.gamma_diagnostics(**s) for unit, s in per_unit(sums).items()}


def mu0_report(hem_bases):
  """{HEM unit path: diagnostics.mu0_diagnostics} of the state's mu0 (on the host)."""
  return {"/".join(str(getattr(k, "key", k)) for k in path[:-1]):
          diagnostics.mu0_diagnostics(jax.device_get(mu0))
          for path, mu0 in jax.tree_util.tree_flatten_with_path(hem_bases)[0]}


def add_mu0(summary, hem_bases):
  """summary["attention"] with the mu0 diagnostics added beside the gamma ones."""
  for unit, diag in mu0_report(hem_bases).items():
    summary.setdefault("attention", {}).setdefault(unit, {}).update(diag)
  return summary


def format_attention(summary):
  """One line per HEM unit: the diagnostics of summary["attention"]."""
  lines = []
  for unit, d in summary.get("attention", {}).items():
    gamma = (f"entropy {d['entropy']:.3f}  bases in use {d['bases_in_use']:.2f}  "
             if "entropy" in d else "")
    mu0 = (f"distinct bases in mu0 {d['distinct_bases']}  cosine max {d['max_cosine']:.4f} "
           f"median {d['median_cosine']:.4f}  ||mu0_k|| min {d['min_norm']:.3g} median "
           f"{d['median_norm']:.3g} max {d['max_norm']:.3g}" if "distinct_bases" in d else "")
    lines.append(f"HEM unit '{unit}': {gamma}{mu0}")
  return "\n".join(lines)
