#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one run of at most 8 minutes on one H100 or H200.
# Each part prints ratios measured side by side in this run; a part that overruns its time
# limit is stopped and reported, and the next one runs.
#
#   benchmarks/gpu.sh 2>&1 | tee gpu.log     # on a GPU machine, with .venv built (make test)
#   AHM_BENCH_DEVICE=cpu AHM_BENCH_SCALE=smoke benchmarks/gpu.sh   # the script itself, on a CPU
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${AHM_BENCH_DEVICE:-cuda}
SCALE=${AHM_BENCH_SCALE:-full}
export PYTHONPATH=. FLWR_TELEMETRY_ENABLED=0

case "$SCALE" in
full)
	MASKING=(--batch 256 --repeats 7)
	TRAIN=(--backbone ir_se_50 --size 112 --batch 128 --steps 20 --repeats 3)
	CGAN=(--size 112 --batch 64 --steps 10 --repeats 2)
	LOADER=(--images 6144 --batch 128 --workers 4,8,16)
	PROFILE=(--backbone ir_se_50 --size 112 --batch 128 --steps 20 --rows 12)
	FEDERATION=(--clients 10 --per-round 10 --paper-model --images 200 --local-epochs 2)
	COMPILED=arcface,mixup
	;;
smoke)
	MASKING=(--batch 8 --repeats 1 --faces 16)
	TRAIN=(--backbone ir_se_small --size 32 --batch 8 --steps 10 --repeats 1)
	CGAN=(--size 32 --batch 4 --steps 2 --repeats 1)
	LOADER=(--images 64 --batch 16 --workers 1)
	PROFILE=(--backbone ir_se_small --size 32 --batch 8 --steps 10 --rows 5)
	FEDERATION=(--clients 3 --per-round 3 --images 8 --local-epochs 1)
	COMPILED=arcface
	;;
*)
	echo "AHM_BENCH_SCALE: expected full or smoke, got '$SCALE'" >&2
	exit 2
	;;
esac
GPUS=()
if [ "$DEVICE" != cpu ]; then
	GPUS=(--gpus-per-client 0.1)
fi

failed=0
part() { # part NAME SECONDS COMMAND...: run COMMAND with a time limit, report how it ended
	local name=$1 limit=$2 start=$SECONDS
	shift 2
	echo "=== $name (limit ${limit} s)"
	timeout --kill-after=5 "$limit" "$@"
	local rc=$?
	if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
		echo "=== $name: TIMED OUT after $((SECONDS - start)) s"
		failed=1
	elif [ $rc -ne 0 ]; then
		echo "=== $name: FAILED (exit $rc) after $((SECONDS - start)) s"
		failed=1
	else
		echo "=== $name: done in $((SECONDS - start)) s"
	fi
}

echo "=== $(date -u '+%F %T') UTC, device $DEVICE, scale $SCALE"
if [ "$DEVICE" != cpu ]; then
	nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
# The limits add up to 465 s: with start-up, the whole run stays under 8 minutes.
part "CUDA sync check" 45 "$PY" -m pytest -q -p no:cacheprovider tests/test_train.py -k never_waits
part "masking" 30 "$PY" benchmarks/masking.py --device "$DEVICE" "${MASKING[@]}"
part "training step, eager" 70 "$PY" benchmarks/train_step.py --device "$DEVICE" "${TRAIN[@]}"
part "training step, compiled" 120 "$PY" benchmarks/train_step.py --device "$DEVICE" \
	"${TRAIN[@]}" --compile --methods "$COMPILED"
part "training step profile" 30 "$PY" benchmarks/profile_step.py --device "$DEVICE" "${PROFILE[@]}"
part "CGAN attack" 30 "$PY" benchmarks/cgan.py --device "$DEVICE" "${CGAN[@]}"
part "data loading" 30 "$PY" benchmarks/loader.py --device "$DEVICE" "${LOADER[@]}"
part "federation" 110 "$PY" benchmarks/federation.py --device "$DEVICE" "${GPUS[@]}" \
	"${FEDERATION[@]}"
echo "=== $(date -u '+%F %T') UTC, all parts ran; failures: $failed"
exit $failed
