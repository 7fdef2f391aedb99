#!/usr/bin/env bash
# Set up and run every fedfuse benchmark; results land in benchmarks/results/.
#
#   bash benchmarks/run.sh            # the full benchmarks (`make bench` runs this)
#   bash benchmarks/run.sh --quick    # smoke test with tiny sizes (results/quick/)
#
# Expects fedfuse installed in .venv (`make` does that). Arguments go to every benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${FEDFUSE_FASHION_MNIST_DIR:-}" ] && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    echo "installing Debian's dataset-fashion-mnist (Fashion-MNIST idx files)"
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update && $sudo apt-get install -y dataset-fashion-mnist
fi

python=.venv/bin/python
if [ ! -x "$python" ]; then
    echo "no $python: run 'make test' or 'make demo' first to create it" >&2
    exit 1
fi

# Benchmark this checkout's src/, whatever fedfuse install .venv holds.
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

"$python" benchmarks/bench_speed.py "$@"
"$python" benchmarks/bench_accuracy.py "$@"
"$python" benchmarks/bench_robust.py "$@"
"$python" benchmarks/bench_compression.py "$@"
"$python" benchmarks/bench_skip.py "$@"
"$python" benchmarks/bench_fedbuff.py "$@"
"$python" benchmarks/bench_service.py "$@"
"$python" benchmarks/bench_privacy.py "$@"
# Backends beside the plain loop and Flower (the shared harness, FL_BENCH_HARNESS), start-up time;
# both make .venv-bench/ (torch 2.13.0, flwr 1.42.0, this checkout) when it is missing.
"$python" benchmarks/bench_backends.py "$@"
"$python" benchmarks/bench_startup.py "$@"
# The model-type, three-uses and consensus benchmarks have no quick mode: skipped with --quick.
if [[ " $* " != *" --quick "* ]]; then
    for name in doc2vec personalization ensemble oneshot consensus; do
        "$python" "benchmarks/bench_$name.py"
    done
fi
