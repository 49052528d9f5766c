#!/usr/bin/env bash
# A TPU VM pod from start to finish: create it, install hemnet_jax on every worker,
# run the same training command on all workers (JAX's multi-controller runtime finds
# its peers by itself: --distributed), stream the logs, delete the pod.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/tpu_pod.sh --name NAME --zone ZONE [--type v4-32] [--version tpu-ubuntu2204-base]
                         [--config configs/voc.py] --workdir gs://BUCKET/DIR [--dry-run]
                         [STEP ...] [-- EXTRA_MAIN_FLAGS ...]

STEPs, run in this order (default: create install run delete):
  create   gcloud compute tpus tpu-vm create
  install  copy this checkout's committed files (git archive HEAD: no .venv, data or
           uncommitted changes) to every worker, pip install -r requirements.txt and jax[tpu]
  run      python -m hemnet_jax.main --config CONFIG --workdir WORKDIR --distributed on all
           workers; every worker's output is streamed here, prefixed by gcloud
  delete   gcloud compute tpus tpu-vm delete --quiet

The workdir must be reachable from every worker (a gs:// bucket): all of them write
the checkpoint together. Re-running `run` resumes from its latest checkpoint.
Each gcloud command is printed before it runs; --dry-run prints them only.

example: launch/tpu_pod.sh --name hemnet --zone us-central2-b --type v4-32 \
           --workdir gs://my-bucket/hemnet/voc -- --config.train.batch_size=16
USAGE
}

name="" zone="" type="v4-32" version="tpu-ubuntu2204-base" config="configs/voc.py" workdir="" dry=0
steps=() extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name) name="${2:?--name needs a value}"; shift 2 ;;
    --zone) zone="${2:?--zone needs a value}"; shift 2 ;;
    --type) type="${2:?--type needs a value}"; shift 2 ;;
    --version) version="${2:?--version needs a value}"; shift 2 ;;
    --config) config="${2:?--config needs a value}"; shift 2 ;;
    --workdir) workdir="${2:?--workdir needs a value}"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    create|install|run|delete) steps+=("$1"); shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "launch/tpu_pod.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -n "$name" ]] || { echo "launch/tpu_pod.sh: --name is required" >&2; exit 2; }
[[ -n "$zone" ]] || { echo "launch/tpu_pod.sh: --zone is required" >&2; exit 2; }
[[ "$type" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] || { echo "launch/tpu_pod.sh: --type must look like v4-32, got '$type'" >&2; exit 2; }
[[ ${#steps[@]} -gt 0 ]] || steps=(create install run delete)
if [[ " ${steps[*]} " == *" run "* ]]; then
  [[ "$workdir" == gs://* ]] || { echo "launch/tpu_pod.sh: --workdir must be a gs:// path every worker can write, got '${workdir}'" >&2; exit 2; }
  [[ -f "$config" ]] || { echo "launch/tpu_pod.sh: --config $config: no such file" >&2; exit 2; }
fi
[[ "$dry" -eq 1 ]] || command -v gcloud >/dev/null || { echo "launch/tpu_pod.sh: gcloud is not installed (https://cloud.google.com/sdk)" >&2; exit 2; }

quoted_extra=""  # the extra flags, each quoted for the remote shell
for arg in ${extra[@]+"${extra[@]}"}; do quoted_extra+=" $(printf %q "$arg")"; done
say_and_do() { printf '+'; printf ' %q' "$@"; printf '\n'; [[ "$dry" -eq 1 ]] || "$@"; }
on_all() { say_and_do gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"; }

for step in "${steps[@]}"; do
  case "$step" in
    create) say_and_do gcloud compute tpus tpu-vm create "$name" --zone "$zone" \
              --accelerator-type "$type" --version "$version" ;;
    install)
      archive="$(mktemp -d)/hemnet_jax.tar.gz"
      say_and_do git -C "$(git rev-parse --show-toplevel)" archive --format=tar.gz -o "$archive" HEAD
      say_and_do gcloud compute tpus tpu-vm scp --zone "$zone" --worker=all "$archive" "$name:~/hemnet_jax.tar.gz"
      on_all "rm -rf ~/hemnet_jax && mkdir ~/hemnet_jax && tar -xzf ~/hemnet_jax.tar.gz -C ~/hemnet_jax && cd ~/hemnet_jax && python3 -m pip install -q -r requirements.txt 'jax[tpu]' gcsfs" ;;
    run)
      on_all "cd ~/hemnet_jax && python3 -m hemnet_jax.main --config $(printf %q "$config") --workdir $(printf %q "$workdir") --distributed${quoted_extra}" ;;
    delete) say_and_do gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet ;;
  esac
done
