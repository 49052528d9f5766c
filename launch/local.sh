#!/usr/bin/env bash
# Runs N processes of one command on this machine under jax.distributed: the
# multi-host code path on one CPU host (what the tests use), or on a multi-GPU
# box without a cluster manager.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/local.sh [-n NUM_PROCESSES] [-p PORT] [-d DEVICES_PER_PROCESS] [-l LOG_DIR] [--dry-run] -- COMMAND [ARGS...]

Starts NUM_PROCESSES copies of COMMAND, each with
  --coordinator_address=localhost:PORT --num_processes=N --process_id=I
appended, JAX_PLATFORMS=cpu and DEVICES_PER_PROCESS simulated CPU devices each
(unless -d 0: then the platform and devices are left alone). Each process's output
goes to LOG_DIR/process_I.log; process 0's is also streamed here. Exits non-zero,
stopping the others, as soon as one process fails.

  -n  number of processes (default 2)
  -p  coordinator port on localhost (default 12355)
  -d  simulated CPU devices per process (default 1; 0 = use the real devices)
  -l  log directory (default ./launch_logs)
  --dry-run  print the commands and exit

example: launch/local.sh -n 2 -- python -m hemnet_jax.main --config configs/demo.py --workdir /tmp/mp
USAGE
}

num=2 port=12355 devices=1 logdir=./launch_logs dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -n) num="${2:?-n needs a value}"; shift 2 ;;
    -p) port="${2:?-p needs a value}"; shift 2 ;;
    -d) devices="${2:?-d needs a value}"; shift 2 ;;
    -l) logdir="${2:?-l needs a value}"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --) shift; break ;;
    *) echo "launch/local.sh: unknown option '$1' (the command goes after --)" >&2; usage >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "launch/local.sh: no command given after --" >&2; usage >&2; exit 2; }
[[ "$num" =~ ^[1-9][0-9]*$ ]] || { echo "launch/local.sh: -n must be a positive integer, got '$num'" >&2; exit 2; }
[[ "$port" =~ ^[0-9]+$ && "$port" -ge 1024 && "$port" -le 65535 ]] || { echo "launch/local.sh: -p must be a port in 1024-65535, got '$port'" >&2; exit 2; }
[[ "$devices" =~ ^[0-9]+$ ]] || { echo "launch/local.sh: -d must be a non-negative integer, got '$devices'" >&2; exit 2; }

env_prefix=()
if [[ "$devices" -gt 0 ]]; then
  # The simulated devices are added to the caller's XLA_FLAGS, which stay in force.
  env_prefix=(env JAX_PLATFORMS=cpu
              "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices")
fi
prefix=""
[[ ${#env_prefix[@]} -eq 0 ]] || prefix="$(printf '%q ' "${env_prefix[@]}")"
cmds=()
for ((i = 0; i < num; i++)); do
  cmds+=("$prefix$* --coordinator_address=localhost:$port --num_processes=$num --process_id=$i")
done
echo "launch/local.sh: $num processes, logs in $logdir/process_<i>.log:"
for c in "${cmds[@]}"; do echo "  $c"; done
[[ "$dry" -eq 0 ]] || exit 0

mkdir -p "$logdir"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for ((i = 0; i < num; i++)); do
  "${env_prefix[@]}" "$@" --coordinator_address="localhost:$port" --num_processes="$num" \
      --process_id="$i" >"$logdir/process_$i.log" 2>&1 &
  pids+=($!)
done
tail -n +1 -f "$logdir/process_0.log" --pid="${pids[0]}" &
status=0
for ((i = 0; i < num; i++)); do
  if ! wait "${pids[$i]}"; then
    echo "launch/local.sh: process $i failed; see $logdir/process_$i.log" >&2
    status=1
    break
  fi
done
wait
trap - EXIT
[[ "$status" -eq 0 ]] || kill "${pids[@]}" 2>/dev/null || true
exit "$status"
