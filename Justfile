# kiln's recipes. Use them through ./dev (it installs nats-server and just locally):
# ./dev demo, ./dev test, ./dev bench …

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes
default:
    @just --list

# Run the demo: a local nats-server (unless NATS_URL answers), aggregator, workers, a mixed workload
[group('run')]
demo *ARGS:
    cargo run --quiet -p kiln-cli -- demo {{ARGS}}

# Run the whole test suite: formatting, lints, unit and integration tests
[group('check')]
test: fmt-check lint
    cargo test --workspace --all-targets
    cargo test --workspace --doc

# Check formatting
[group('check')]
fmt-check:
    cargo fmt --all --check

# Lint with clippy, warnings are errors
[group('check')]
lint:
    cargo clippy --workspace --all-targets -- -D warnings

# What CI runs (.ci/run calls ./dev test, which is this)
[group('check')]
ci: test

# The whole benchmark suite into bench/results/<date>/ (report.md, JSON, CSV, SVG charts) and the README's Benchmarks tables: kernels GPU vs CPU, CPU matmul vs numpy, pipeline vs the raw JetStream ceiling, communication overhead, scaling with workers, scheduler
[group('bench')]
bench *ARGS:
    cargo build --release -p kiln-cli
    "${KILN_BENCH_PYTHON:-python3}" -c 'import numpy' 2>/dev/null || "${KILN_BENCH_PYTHON:-python3}" -m pip install --quiet --disable-pip-version-check numpy || echo "bench: numpy could not be installed; the numpy comparison will be skipped" >&2
    "${CARGO_TARGET_DIR:-target}/release/kiln" bench suite --readme README.md {{ARGS}}

# Build the release binary
[group('build')]
build:
    cargo build --release -p kiln-cli

# On a CUDA machine: every kind on a CUDA and a CPU worker with the same seeds, compared; report in $OUT
[group('check')]
gpu-check:
    scripts/gpu-check.sh

# Build the release binary and copy it with nats-server into .device/, ready to carry to a GPU machine
[group('build')]
gpu-bundle:
    cargo build --release -p kiln-cli
    mkdir -p .device
    cp "$CARGO_TARGET_DIR/release/kiln" .device/kiln && strip .device/kiln
    cp "$(command -v nats-server)" .device/nats-server && strip .device/nats-server
