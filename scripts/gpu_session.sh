#!/usr/bin/env bash
# One call on a borrowed GPU machine that has torch and triton but no package index: install peer
# wheels carried in .whl/ (if any), run the steps named, log each under $OUT and copy the reports
# there, so that everything comes back even when a step fails or the call runs out of time.
#
#   bash scripts/gpu_session.sh test                         # the whole suite, compiled
#   BENCH_ARGS="--op softmax --quick" bash scripts/gpu_session.sh bench
#   bash scripts/gpu_session.sh test bench                   # both (the default)
#   TRAIN_STEP_ARGS="--vocab 262144" bash scripts/gpu_session.sh train-step   # needs transformers (.whl/)
#
# bench merges into reports/<device>/'s table, so a sweep too long for one call can be split by
# --op over several calls while the machine stays warm.
set -uo pipefail
out=${OUT:?set OUT to the folder whose files come back}
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(test bench)
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/peers .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/peers${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,clocks.max.memory --format=csv >"$out/gpu.txt" 2>&1

status=0
for step in "${steps[@]}"; do
    case $step in
        test) make test PYTEST_ARGS="-p no:cacheprovider --durations=15" 2>&1 | tee "$out/test.log" ;;
        bench) make setup && "$(cat .python)" -P -m softlight.bench.cli bench ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log" ;;
        compile) make compile 2>&1 | tee "$out/compile.log" ;;
        train-step) make setup && "$(cat .python)" -P -m softlight.bench.cli train-step ${TRAIN_STEP_ARGS:-} 2>&1 \
            | tee "$out/train_step.log" ;;
        *) echo "gpu_session: unknown step '$step' (test, bench, compile, train-step)" >&2; exit 2 ;;
    esac
    rc=$?
    echo "gpu_session: $step exited with $rc" | tee -a "$out/steps.txt"
    [ $rc -ne 0 ] && status=$rc
done
cp -r reports "$out/"
exit $status
