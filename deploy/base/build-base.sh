#!/usr/bin/env bash
# A Debian base image made here, for machines that cannot reach Docker Hub: a minimal
# bookworm root file system from the Debian mirror (debootstrap), with Python 3.11 and
# venv, imported as an image. The Dockerfile takes it through `--build-arg
# BASE_IMAGE=...`; users who can pull keep the default, python:3.11-slim.
# The image trusts what this machine trusts: the host's CA bundle goes in (and pip is
# told to use it), so a TLS-inspecting proxy in front of PyPI works inside builds too.
#   deploy/base/build-base.sh [TAG]        (default tandem-base:bookworm; needs root)
set -euo pipefail
tag="${1:-tandem-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${TANDEM_DEPLOY_CACHE:-$HOME/.cache/tandem/deploy}"
bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag is there"; exit 0
fi
mkdir -p "$cache"
tarball="$cache/bookworm-minbase-python.tar"
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
  root="$(mktemp -d)"
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
fi
docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$tarball" \
  "$tag-rootfs"
context="$(mktemp -d)"
cp "$bundle" "$context/host-ca.crt"
cat > "$context/Dockerfile" <<DOCKERFILE
FROM $tag-rootfs
COPY host-ca.crt /usr/local/share/ca-certificates/tandem-host-bundle.crt
RUN cp /usr/local/share/ca-certificates/tandem-host-bundle.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
DOCKERFILE
docker build -q -t "$tag" "$context"
rm -rf "$context"
echo "base image $tag built from $tarball (CA bundle: $bundle)"
