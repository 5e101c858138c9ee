#!/usr/bin/env bash
# Builds and fetches the real test components into a cache directory (placeholder: being written).
set -euo pipefail
K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
HYDRA_VERSION=v2.3.0
KEYCLOAK_VERSION=26.5.6
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/oauth-operator/testenv/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_hydra-${HYDRA_VERSION}_keycloak-${KEYCLOAK_VERSION}"
if [[ "${1:-}" == "--print-dir" ]]; then echo "$DIR"; exit 0; fi
echo "testenv/build.sh: not written yet" >&2
exit 1
