#!/usr/bin/env bash
# Builds the overlay-controller and overlay-agent images (see --help).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/images/build.sh [--help]

Builds the images overlay-controller:VERSION and overlay-agent:VERSION
(VERSION: the workspace version in Cargo.toml), each FROM scratch:
  1. cargo builds both binaries, release, statically linked against glibc
     (RUSTFLAGS="-C target-feature=+crt-static", --target: this machine's);
  2. stages a build context per image: the binary (symbols stripped with
     binutils' strip, which the linker brings), this host's CA bundle
     /etc/ssl/certs/ca-certificates.crt and deploy/images/rootfs/ (passwd,
     group, nsswitch.conf);
  3. podman build -f deploy/images/Containerfile.{controller,agent};
  4. runs each image once (`--version`) and prints its size.

Needs: cargo and strip; podman with runc (Debian/Ubuntu: apt-get install podman
buildah runc); glibc 2.34 or later (its static resolver reads /etc/hosts
and DNS without NSS modules); the CA bundle (apt-get install
ca-certificates). No base image is pulled and nothing is downloaded.

When that first run fails (podman's default ulimits cannot be set where
the container runtime may not raise RLIMIT_NPROC/RLIMIT_NOFILE; crun fails
on hybrid cgroups), it adds a containers.conf drop-in, leaving every other
podman configuration file as it is, and runs again:
  [containers] default_ulimits = []   [engine] runtime = "runc"
in /etc/containers/containers.conf.d/50-overlay-images.conf (root), else in
~/.config/containers/containers.conf.d/50-overlay-images.conf.

Environment: CARGO_TARGET_DIR, CARGO_* and RUSTFLAGS as for cargo (the
static-linking flag is added to RUSTFLAGS).
EOF
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) echo "build.sh: unknown argument '$1' (it takes none; see --help)" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
started=$SECONDS

die() { echo "build.sh: $*" >&2; exit 1; }

version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || die "no version in [workspace.package] of Cargo.toml"
command -v cargo >/dev/null || die "cargo not found in PATH"
command -v strip >/dev/null || die "strip not found in PATH; install it: apt-get install binutils"
command -v podman >/dev/null ||
  die "podman not found in PATH; install it: apt-get install podman buildah runc"
ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] || die "no CA bundle at $ca; install it: apt-get install ca-certificates"
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
case "$glibc" in
  2.3[4-9]* | 2.[4-9]* | [3-9].*) ;;
  *) die "glibc ${glibc:-unknown} on this host: the static binaries need 2.34 or later, whose resolver has the files and dns modules built in (older ones look for NSS libraries the image does not hold)" ;;
esac

target=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$target" ] || die "cannot tell this machine's Rust target (rustc -vV)"
echo "build.sh: building overlay-controller and overlay-agent $version, static, for $target"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" -p overlay-bins \
  --bin overlay-controller --bin overlay-agent
target_dir=${CARGO_TARGET_DIR:-target}
bin_dir="$target_dir/$target/release"
cargo_done=$SECONDS

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

build_image() {
  local name=$1 bin=overlay-$1 ctx="$stage/$1"
  [ -x "$bin_dir/$bin" ] || die "$bin_dir/$bin was not built"
  # A dynamically linked binary would not start FROM scratch.
  if ldd "$bin_dir/$bin" 2>/dev/null | grep -q '=>'; then
    die "$bin_dir/$bin is dynamically linked; it cannot run FROM scratch"
  fi
  mkdir -p "$ctx"
  cp -r deploy/images/rootfs "$ctx/rootfs"
  cp "$ca" "$ctx/ca-certificates.crt"
  cp "$bin_dir/$bin" "$ctx/$bin"
  # Symbols only serve a debugger, which a scratch image has not: 20 MB
  # becomes 15 MB. Panic messages keep their file and line.
  strip --strip-all "$ctx/$bin"
  podman build --quiet --format oci --build-arg "VERSION=$version" \
    -f "deploy/images/Containerfile.$name" -t "$bin:$version" "$ctx" >/dev/null
}

# `--version` inside the image: proves that it starts, with podman's
# configuration as it is.
smoke() {
  podman run --rm --read-only "$1:$version" --version 2>&1
}

conf_dropin() {
  if [ "$(id -u)" = 0 ]; then
    echo /etc/containers/containers.conf.d/50-overlay-images.conf
  else
    echo "${XDG_CONFIG_HOME:-$HOME/.config}/containers/containers.conf.d/50-overlay-images.conf"
  fi
}

build_image controller
build_image agent

for bin in overlay-controller overlay-agent; do
  if out=$(smoke "$bin"); then
    :
  else
    dropin=$(conf_dropin)
    [ -e "$dropin" ] && die "$bin:$version does not run, even with $dropin:
$out"
    echo "build.sh: podman could not run $bin:$version:"
    echo "$out" | sed 's/^/  /'
    echo "build.sh: writing $dropin (default_ulimits = [], runtime = \"runc\") and trying again"
    mkdir -p "$(dirname "$dropin")"
    printf '# Written by overlay deploy/images/build.sh: podman'"'"'s default ulimits\n# cannot be set where the runtime may not raise them, and crun fails on\n# hybrid cgroups.\n[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' >"$dropin"
    out=$(smoke "$bin") || die "$bin:$version does not run with $dropin either:
$out"
  fi
  case "$out" in
    *"$bin $version"*) ;;
    *) die "$bin:$version --version printed '$out', not '$bin $version'" ;;
  esac
done

echo "build.sh: binaries in $((cargo_done - started)) s, images in $((SECONDS - cargo_done)) s"
for bin in overlay-controller overlay-agent; do
  size=$(podman image inspect --format '{{.Size}}' "$bin:$version")
  awk -v n="$bin:$version" -v s="$size" \
    'BEGIN { printf "%-28s %10d bytes (%.1f MiB)\n", n, s, s / 1048576 }'
done
