#!/usr/bin/env bash
# The one thing to run when a GPU host is lent: the checks that have never run on a GPU (docs/status.md).
#
#   deploy/gpu-first-run.sh [OUT]             # everything below; OUT defaults to gpu-first-run-DATE-TIME
#   deploy/gpu-first-run.sh --dry-run [OUT]   # print the commands, run nothing
#   deploy/gpu-first-run.sh --cpu [OUT]       # the same steps on the CPU at smoke sizes (tests the script itself)
#
# Steps, each one's output in OUT/NAME.log and a PASS / FAIL / SKIP line in OUT/summary.txt:
#   host     nvidia-smi and the torch build
#   doctor   alexserve doctor --device cuda (GPUs seen, NCCL send/recv, DALI GPU decode, parity, throughput)
#   bench    python -m alexserve.bench.gpu in fp32 and bf16 (figures in OUT/bench-gpu.json)
#   data     a tiny prepared tree (alexserve synth, alexserve prepare)
#   train    a short two-tower job on it: with 2+ GPUs on two GPUs over NCCL; with one GPU, dist.device auto, which
#            must put both ranks on the CPU with a notice (a pair needs a GPU per rank)
#   eval     alexserve eval of that job's checkpoint, DALI and PIL loaders (the grouped model, on GPU 0)
#   kill     with 2+ GPUs: two tower processes on GPUs 0 and 1, rank 1 killed mid-training; rank 0 must exit 3
#            (PEER_LOST) naming rank 1 within dist.timeout_seconds plus a margin. With one GPU it is skipped: no
#            two-tower job runs on one GPU; its one-GPU form, the grouped model, ran in bench and eval.
#
# Environment: PYTHON (default python3) is the interpreter with alexserve installed; FIRST_RUN_GPUS overrides the
# GPU count read from `nvidia-smi -L` (the tests use it). Exits 0 when no step failed, 1 otherwise, 2 on bad usage.
set -euo pipefail

PY=${PYTHON:-python3}
DRY=0
CPU=0
OUT=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        --cpu) CPU=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "gpu-first-run.sh: unknown option $arg (see --help)" >&2
            exit 2
            ;;
        *) OUT=$arg ;;
    esac
done
OUT=${OUT:-gpu-first-run-$(date +%Y%m%d-%H%M%S)}
PEER_TIMEOUT=20 # dist.timeout_seconds of the kill step
STEP_WAIT=300   # seconds rank 0 may take to log its first step (NCCL init, generated data)

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0

record() { # NAME RESULT DETAIL
    printf '%-7s %-5s %s\n' "$1" "$2" "$3" | tee -a "$SUMMARY"
    if [[ "$2" == FAIL ]]; then FAILED=1; fi
}

show() { # the command, as it could be pasted into a shell
    printf '+'
    printf ' %q' "$@"
    printf '\n'
}

step() { # NAME COMMAND...: runs COMMAND, output to OUT/NAME.log; PASS when it exits 0
    local name=$1 began=$SECONDS rc=0
    shift
    show "$@"
    if ((DRY)); then return 0; fi
    "$@" >>"$OUT/$name.log" 2>&1 || rc=$?
    if ((rc == 0)); then
        record "$name" PASS "$((SECONDS - began)) s"
    else
        record "$name" FAIL "exit $rc after $((SECONDS - began)) s; last lines of $OUT/$name.log:"
        tail -n 15 "$OUT/$name.log" | sed 's/^/        /' | tee -a "$SUMMARY"
    fi
    return "$rc"
}

gpu_count() {
    if [[ -n "${FIRST_RUN_GPUS:-}" ]]; then
        echo "$FIRST_RUN_GPUS"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

GPUS=$(gpu_count)
if ((CPU)); then
    DEVICE=cpu
elif ((GPUS == 0)); then
    echo "gpu-first-run.sh: no GPU visible (nvidia-smi -L lists none): nothing to check here; --cpu runs the steps" \
        "on the CPU" >&2
    exit 1
else
    DEVICE=cuda
fi
echo "gpu-first-run: $GPUS GPU(s), device $DEVICE, output in $OUT" | tee -a "$SUMMARY"

# --- host
if ((CPU)); then
    record host SKIP "--cpu: no nvidia-smi"
else
    step host nvidia-smi || true
fi
step host "$PY" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.device_count(), "GPUs")' ||
    true

# --- doctor, bench
step doctor "$PY" -m alexserve doctor --device "$DEVICE" || true
BENCH=(--precisions fp32,bf16 --out "$OUT/bench-gpu.json")
if ((CPU)); then BENCH+=(--device cpu --batch-size 8 --steps 2 --repeats 1); fi
step bench "$PY" -m alexserve.bench.gpu "${BENCH[@]}" || true

# --- a tiny prepared tree, a short job on it, its evaluation
DATA="$OUT/data"
TINY=(--set model.width=0.125 --set model.input_size=64 --set model.init_scheme=he --set optim.learning_rate=0.002)
if ((CPU)); then
    TRAIN_DEVICE=cpu
elif ((GPUS >= 2)); then
    TRAIN_DEVICE=cuda
else
    TRAIN_DEVICE=auto # one GPU, two ranks: both must go to the CPU, with a notice, not hang in NCCL's init
fi
if step data "$PY" -m alexserve synth "$DATA/synth" --classes 4 --train-per-class 32 --val-per-class 8 \
    --min-side 80 --max-side 120 &&
    step data "$PY" -m alexserve prepare "$DATA/synth" "$DATA/prepared" --scale-size 73 --workers 2; then
    TRAIN_RUN="$OUT/train-run"
    if step train "$PY" -m alexserve.launch --standalone --nproc-per-node=2 -m alexserve.worker \
        --set data.source=folder --set "data.train_dir=$DATA/prepared/train" "${TINY[@]}" \
        --set train.batch_size=16 --set train.num_epochs=2 --set train.log_every_steps=2 \
        --set "train.run_dir=$TRAIN_RUN" --set "dist.device=$TRAIN_DEVICE"; then
        if ((!DRY)); then
            case $TRAIN_DEVICE in
                cuda) want="via nccl" ;;
                auto) want="every rank runs on the CPU (gloo)" ;;
                *) want="via gloo" ;;
            esac
            if grep -q "$want" "$OUT/train.log"; then
                record device PASS "the training log says '$want'"
            else
                record device FAIL "the training log does not say '$want' (see $OUT/train.log)"
            fi
        fi
        for loader in dali pil; do
            step "eval-$loader" "$PY" -m alexserve eval "$TRAIN_RUN/checkpoints" --data "$DATA/prepared" \
                --loader "$loader" || true
        done
    fi
fi

# --- kill one rank of a two-GPU job
kill_rank_one() {
    local dev=$1 port run="$OUT/kill-run" p0 p1 began rc=0 waited=0
    local job=(-m alexserve.worker --set data.source=generated "${TINY[@]}" --set data.scale_size=73
        --set data.generated_train_images=1024 --set data.generated_val_images=64 --set train.batch_size=32
        --set train.max_steps=100000 --set train.log_every_steps=1 --set "dist.timeout_seconds=$PEER_TIMEOUT"
        --set "dist.device=$dev" --set "train.run_dir=$run")
    if ((DRY)); then
        port=29555
    else
        port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    fi
    local ranks=(env WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 "MASTER_PORT=$port")
    show "${ranks[@]}" RANK=0 LOCAL_RANK=0 "$PY" "${job[@]}"
    show "${ranks[@]}" RANK=1 LOCAL_RANK=1 "$PY" "${job[@]}"
    echo "# then kill -9 rank 1 once rank 0 logs a step; rank 0 must exit 3 within $((PEER_TIMEOUT + 60)) s"
    if ((DRY)); then return 0; fi
    "${ranks[@]}" RANK=0 LOCAL_RANK=0 "$PY" "${job[@]}" >"$OUT/kill-rank0.log" 2>&1 &
    p0=$!
    "${ranks[@]}" RANK=1 LOCAL_RANK=1 "$PY" "${job[@]}" >"$OUT/kill-rank1.log" 2>&1 &
    p1=$!
    until grep -q '^epoch .* step ' "$OUT/kill-rank0.log" 2>/dev/null; do
        if ! kill -0 "$p0" 2>/dev/null || ((waited >= STEP_WAIT)); then
            kill -9 "$p0" "$p1" 2>/dev/null || true
            wait "$p0" "$p1" 2>/dev/null || true
            record kill FAIL "rank 0 logged no step within $waited s (see $OUT/kill-rank0.log)"
            return 0
        fi
        sleep 1
        waited=$((waited + 1))
    done
    sleep 2 # a few steps in
    kill -9 "$p1"
    began=$SECONDS
    while kill -0 "$p0" 2>/dev/null && ((SECONDS - began < PEER_TIMEOUT + 60)); do sleep 1; done
    if kill -0 "$p0" 2>/dev/null; then
        kill -9 "$p0"
        record kill FAIL "rank 0 still running $((SECONDS - began)) s after rank 1 was killed (see kill-rank0.log)"
    else
        wait "$p0" || rc=$?
        local said
        said=$(grep -m1 -E 'lost (its peer, rank 1|a peer)' "$OUT/kill-rank0.log" || true)
        if ((rc == 3)) && [[ -n "$said" ]]; then
            record kill PASS "rank 0 exited 3 after $((SECONDS - began)) s: ${said}"
        else
            record kill FAIL "rank 0 exited $rc after $((SECONDS - began)) s; last lines of kill-rank0.log:"
            tail -n 15 "$OUT/kill-rank0.log" | sed 's/^/        /' | tee -a "$SUMMARY"
        fi
    fi
    wait "$p1" 2>/dev/null || true
}

if ((CPU)); then
    kill_rank_one cpu
elif ((GPUS >= 2)); then
    kill_rank_one cuda
else
    record kill SKIP "one GPU: a two-tower job needs a GPU per rank (the grouped model, its one-GPU form, ran above)"
fi

if ((DRY)); then exit 0; fi
echo "summary: $SUMMARY" >&2
exit "$FAILED"
