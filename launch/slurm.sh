#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per GPU, all running the same
# command; jax.distributed.initialize() reads SLURM's environment (--distributed).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/slurm.sh --nodes N --gpus-per-node G [--partition P] [--time HH:MM:SS]
                       [--config configs/voc.py] --workdir SHARED_DIR [--dry-run]
                       [-- EXTRA_MAIN_FLAGS ...]

Writes an sbatch script (N nodes x G tasks, one GPU per task), prints it, and
submits it with sbatch. Each task runs
  python -m hemnet_jax.main --config CONFIG --workdir SHARED_DIR --distributed
The workdir must be on a filesystem every node sees (all processes write the
checkpoint). Logs: slurm-<jobid>.out. --dry-run prints the script only.

example: launch/slurm.sh --nodes 1 --gpus-per-node 8 --workdir /shared/hemnet/voc
USAGE
}

nodes="" gpus="" partition="" time_limit="24:00:00" config="configs/voc.py" workdir="" dry=0 extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --nodes) nodes="${2:?--nodes needs a value}"; shift 2 ;;
    --gpus-per-node) gpus="${2:?--gpus-per-node needs a value}"; shift 2 ;;
    --partition) partition="${2:?--partition needs a value}"; shift 2 ;;
    --time) time_limit="${2:?--time needs a value}"; shift 2 ;;
    --config) config="${2:?--config needs a value}"; shift 2 ;;
    --workdir) workdir="${2:?--workdir needs a value}"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "launch/slurm.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || { echo "launch/slurm.sh: --nodes must be a positive integer, got '$nodes'" >&2; exit 2; }
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || { echo "launch/slurm.sh: --gpus-per-node must be a positive integer, got '$gpus'" >&2; exit 2; }
[[ -n "$workdir" ]] || { echo "launch/slurm.sh: --workdir is required (a directory all nodes share)" >&2; exit 2; }
[[ -f "$config" ]] || { echo "launch/slurm.sh: --config $config: no such file" >&2; exit 2; }

quoted_extra=""  # the extra flags, each quoted for the remote shell
for arg in ${extra[@]+"${extra[@]}"}; do quoted_extra+=" $(printf %q "$arg")"; done
script="#!/usr/bin/env bash
#SBATCH --job-name=hemnet_jax
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=$gpus
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=$time_limit
${partition:+#SBATCH --partition=$partition}
cd $(printf %q "$PWD")
srun python -m hemnet_jax.main --config $(printf %q "$config") --workdir $(printf %q "$workdir") --distributed${quoted_extra}"
echo "launch/slurm.sh: the job script:"
echo "$script"
[[ "$dry" -eq 0 ]] || exit 0
command -v sbatch >/dev/null || { echo "launch/slurm.sh: sbatch not found: run this on a SLURM login node" >&2; exit 2; }
echo "$script" | sbatch
