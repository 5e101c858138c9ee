#!/usr/bin/env bash
# Builds hydra-maester (the peer `make bench` compares against) once into the cache.
#   HYDRA_MAESTER_SRC  its source tree (default: ../shared/peers/hydra-maester beside this
#                      checkout, the developers' copy at v0.0.42-5-g0493362); when it does
#                      not exist: `go install github.com/ory/hydra-maester@v0.0.42`.
#   --print            print "BINARY<TAB>SOURCE<TAB>VERSION" and build nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${OAUTH_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauth-operator}/peers
src=${HYDRA_MAESTER_SRC:-$root/../shared/peers/hydra-maester}
if [[ -d $src ]]; then
  src=$(cd "$src" && pwd)
  version=$(git -C "$src" describe --tags --always 2>/dev/null || echo "v0.0.42-5-g0493362")
else
  version=v0.0.42
  # go install leaves the module's source (with its CRD, which the bench applies) here.
  src=$(go env GOMODCACHE)/github.com/ory/hydra-maester@$version
fi
bin=$cache/hydra-maester-$version
if [[ ${1:-} == --print ]]; then
  printf '%s\t%s\t%s\n' "$bin" "$src" "$version"
  exit 0
fi
if [[ -x $bin ]]; then
  echo "hydra-maester $version: $bin (cached)"
  exit 0
fi
mkdir -p "$cache"
if [[ $version != v0.0.42 ]]; then
  echo "building hydra-maester $version from $src (about 10 minutes on 2 cores the first time)"
  (cd "$src" && go build -o "$bin.tmp" .)
else
  echo "go install github.com/ory/hydra-maester@$version"
  GOBIN=$cache/gobin go install "github.com/ory/hydra-maester@$version"
  mv "$cache/gobin/hydra-maester" "$bin.tmp"
fi
mv "$bin.tmp" "$bin"
echo "hydra-maester $version: $bin"
