#!/usr/bin/env bash
# `make image`: the release binary, statically linked, in an image FROM scratch (Dockerfile),
# built with buildah (daemonless; Debian package `buildah`), podman or docker, whichever is
# installed. Then checks what it built: the binary has no dynamic loader and runs alone in an
# empty root as user 65532.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-oauth-operator:dev}
TARGET=$(rustc -vV | sed -n 's/^host: //p')
TARGET_DIR=${CARGO_TARGET_DIR:-target}
CTX=$TARGET_DIR/image
CA=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

tool=$(command -v buildah || command -v podman || command -v docker) \
  || { echo "make image: install buildah (apt-get install buildah), podman or docker" >&2; exit 1; }
[[ -f $CA ]] || { echo "make image: no CA bundle at $CA (set CA_BUNDLE)" >&2; exit 1; }

echo "==> cargo build --release (static, $TARGET)"
# --target keeps crt-static off build scripts and proc-macros.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$TARGET" --bin oauth-operator
rm -rf "$CTX" && mkdir -p "$CTX"
cp "$TARGET_DIR/$TARGET/release/oauth-operator" "$CA" "$CTX/"
[[ $(basename "$CA") == ca-certificates.crt ]] || mv "$CTX/$(basename "$CA")" "$CTX/ca-certificates.crt"

if readelf -l "$CTX/oauth-operator" | grep -q "Requesting program interpreter"; then
  echo "make image: the binary is dynamically linked" >&2; exit 1
fi
if [[ $(id -u) == 0 ]] && command -v chroot >/dev/null; then
  # The image's file system, alone: it must start there as the image's user.
  root=$(mktemp -d) && chmod 755 "$root"
  trap 'rm -rf "$root"' EXIT
  cp "$CTX/oauth-operator" "$root/"
  chroot --userspec=65532:65532 "$root" /oauth-operator version
fi

echo "==> $tool: $IMAGE"
case $tool in
  *buildah) "$tool" bud --tag "$IMAGE" --file Dockerfile "$CTX" ;;
  *) "$tool" build --tag "$IMAGE" --file Dockerfile "$CTX" ;;
esac
case $tool in
  *buildah) "$tool" inspect --type image --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}' "$IMAGE" ;;
  *) "$tool" image inspect --format '{{.Config.User}} {{.Config.Entrypoint}} {{.Config.Cmd}}' "$IMAGE" ;;
esac
ls -l "$CTX"
