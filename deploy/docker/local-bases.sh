#!/usr/bin/env bash
# Base images made from Debian's packages, for machines that can reach Debian's archive but no
# image registry (deploy/docker/images.sh uses them when the usual bases cannot be pulled):
#
#   kiln-local/debian:bookworm      debootstrap's minbase of Debian 12 (what debian:bookworm-slim
#                                   is), plus libopenblas0-pthread, which the CPU image's OpenBLAS
#                                   stage would otherwise install with apt: builds need no network.
#   kiln-local/distroless:bookworm  the files of the packages gcr.io/distroless/cc-debian12 carries
#                                   (glibc, libgcc, libstdc++, libgomp, OpenSSL's libssl,
#                                   ca-certificates, tzdata, netbase, base-files) and zlib (cuDNN
#                                   links it; the local CUDA image runs on this base), with the
#                                   users root, nobody and nonroot (65532), no shell, no apt.
#
#   deploy/docker/local-bases.sh            make both unless they exist (and match this script)
#   deploy/docker/local-bases.sh --force    make them again (a newer Debian point release)
#
# Needs root, debootstrap (apt-get install debootstrap) and a running Docker daemon. The root
# file system is kept in ${KILN_LOCAL_BASES_DIR:-~/.cache/kiln/local-bases}.
set -euo pipefail

suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${KILN_LOCAL_BASES_DIR:-$HOME/.cache/kiln/local-bases}
debian_image=kiln-local/debian:$suite
distroless_image=kiln-local/distroless:$suite
# What debootstrap adds to minbase: the OpenBLAS the CPU image carries, and what the distroless
# base takes from the tree (minbase has the rest).
include=libopenblas0-pthread,ca-certificates,tzdata,netbase,libstdc++6,libgomp1,libssl3
# The packages whose files make the distroless base: distroless/cc-debian12's list, and zlib,
# which cuDNN links (the CUDA image runs on this base here).
distroless_packages=(base-files netbase tzdata ca-certificates libc6 libgcc-s1 libgomp1 libstdc++6
  libssl3 zlib1g)
# A label on both images: a change to this script makes them again.
stamp=$(sha256sum "$0" | cut -c1-16)

force=false
[ "${1:-}" = --force ] && force=true

current() {
  [ "$(docker image inspect -f '{{ index .Config.Labels "kiln.local-bases" }}' "$1" 2>/dev/null)" = "$stamp" ]
}
if ! $force && current "$debian_image" && current "$distroless_image"; then
  echo "local-bases: $debian_image and $distroless_image are up to date"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "local-bases: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null ||
  { echo "local-bases: debootstrap not found; apt-get install -y debootstrap" >&2; exit 1; }

root=$cache/rootfs-$suite
mkdir -p "$cache"
if $force || [ ! -f "$root/.kiln-$stamp" ]; then
  rm -rf "$root"
  echo "local-bases: debootstrap $suite (minbase + $include) from $mirror into $root" >&2
  debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" \
    > "$cache/debootstrap.log" 2>&1 ||
    { tail -20 "$cache/debootstrap.log" >&2; echo "local-bases: debootstrap failed; the log is $cache/debootstrap.log" >&2; exit 1; }
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
    "$root"/var/cache/ldconfig/aux-cache
  # The image's apt sources name the same mirror (debootstrap wrote it).
  touch "$root/.kiln-$stamp"
fi

label="kiln.local-bases=$stamp"
env_path='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

# The Debian base: the whole tree, less the stamp.
tar -C "$root" --numeric-owner --exclude="./.kiln-*" -c . |
  docker import -c "LABEL $label" -c "ENV $env_path" -c 'CMD ["bash"]' - "$debian_image" >/dev/null
echo "local-bases: made $debian_image"

# The distroless base: only the listed packages' files. Paths go through the merged-/usr links
# (/lib -> usr/lib), so each is copied to its real place and the links are made as in Debian.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for link in bin sbin lib lib64; do
  [ -L "$root/$link" ] && cp -P "$root/$link" "$stage/$link"
done
for pkg in "${distroless_packages[@]}"; do
  chroot "$root" dpkg-query -L "$pkg"
done | sort -u | while read -r path; do
  src=$root$path
  { [ -e "$src" ] || [ -L "$src" ]; } || continue
  [ -d "$src" ] && [ ! -L "$src" ] && continue # directories come with their files
  dir=$(cd "$(dirname "$src")" && pwd -P)
  dir=${dir#"$root"}
  mkdir -p "$stage$dir"
  cp -a "$src" "$stage$dir/"
done
# The certificate bundle update-ca-certificates made (no package lists it), and the
# package list, for scanners and for people.
mkdir -p "$stage/etc/ssl/certs" "$stage/usr/share/doc/kiln-local-base"
cp -a "$root/etc/ssl/certs/ca-certificates.crt" "$stage/etc/ssl/certs/"
# shellcheck disable=SC2016 # a dpkg-query format, not shell
chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' "${distroless_packages[@]}" \
  > "$stage/usr/share/doc/kiln-local-base/packages"
cat > "$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat > "$stage/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
mkdir -p "$stage/tmp" "$stage/root" "$stage/home/nonroot"
chmod 1777 "$stage/tmp"
chmod 0700 "$stage/root" "$stage/home/nonroot"
chown 65532:65532 "$stage/home/nonroot"
tar -C "$stage" --numeric-owner -c . |
  docker import -c "LABEL $label" -c "ENV $env_path" \
    -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    -c 'USER 65532:65532' -c 'WORKDIR /home/nonroot' - "$distroless_image" >/dev/null
echo "local-bases: made $distroless_image"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep '^kiln-local/'
