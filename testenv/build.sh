#!/usr/bin/env bash
# Builds and fetches the real test components into a cache directory (see README.md).
#
#   bash testenv/build.sh --print-dir   print the cache directory and exit (builds nothing)
#   bash testenv/build.sh               build/fetch whatever is missing there (idempotent;
#                                       a second run only checks stamps: seconds)
#   bash testenv/build.sh NAME...       only these components (e.g. `make run` builds
#                                       etcd kube-apiserver kubectl and nothing else)
#
# Layout of the directory:
#   bin/kube-apiserver bin/kubectl   k8s.io/kubernetes        (testenv/go.mod)
#   bin/kube-controller-manager      k8s.io/kubernetes        (testenv/go.mod; namespace deletion, GC)
#   bin/etcd                         go.etcd.io/etcd/server/v3 (testenv/go.mod)
#   bin/helm                         helm.sh/helm/v3           (testenv/go.mod)
#   bin/hydra                        github.com/ory/hydra/v2   (testenv/hydra/go.mod, cgo + sqlite)
#   keycloak/                        org.keycloak:keycloak-quarkus-dist zip from Maven Central
#   .stamps/<component>              written after a component landed
# and, at the end, `npm ci` in testenv/oidc-provider when its node_modules is stale.
set -euo pipefail
shopt -s inherit_errexit

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Go components: the versions are those required in the go.mod files (one source of truth).
gomod_version() { # FILE MODULE -> the version FILE requires of MODULE
  awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }
                 $1 == "require" && $2 == m && $3 ~ /^v/ { print $3; exit }' "$1"
}
K8S_VERSION="$(gomod_version "$HERE/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(gomod_version "$HERE/go.mod" go.etcd.io/etcd/server/v3)"
HELM_VERSION="$(gomod_version "$HERE/go.mod" helm.sh/helm/v3)"
HYDRA_VERSION="$(gomod_version "$HERE/hydra/go.mod" github.com/ory/hydra/v2)"
# Keycloak: a zip on Maven Central.
KEYCLOAK_VERSION=26.7.3
# Bump when a build recipe below changes (flags, tags, layout) so the directory changes too.
RECIPE=1

for v in K8S_VERSION ETCD_VERSION HELM_VERSION HYDRA_VERSION; do
  [[ -n "${!v}" ]] || { echo "testenv/build.sh: cannot read $v from go.mod" >&2; exit 1; }
done

# The name spells out the pinned versions; the hash covers every transitive pin (go.sum)
# and the recipe, so any change of version lands in a new directory.
PINS_HASH="$( { echo "recipe=$RECIPE keycloak=$KEYCLOAK_VERSION"
                cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/hydra/go.mod" "$HERE/hydra/go.sum"
              } | sha256sum | cut -c1-10)"
NAME="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_hydra-${HYDRA_VERSION}_helm-${HELM_VERSION}_keycloak-${KEYCLOAK_VERSION}_${PINS_HASH}"
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/oauth-operator/testenv/${NAME}"

if [[ "${1:-}" == "--print-dir" ]]; then echo "$DIR"; exit 0; fi
COMPONENTS="keycloak etcd helm hydra kubectl kube-apiserver kube-controller-manager oidc-provider"
WANT=" ${*:-$COMPONENTS} "
for c in $WANT; do
  [[ " $COMPONENTS " == *" $c "* ]] || {
    echo "usage: $0 [--print-dir | COMPONENT...]; components: $COMPONENTS" >&2; exit 2; }
done
wanted() { [[ "$WANT" == *" $1 "* ]]; }

command -v go >/dev/null || { echo "testenv/build.sh: go is not on PATH (Go >= 1.26 needed)" >&2; exit 1; }

mkdir -p "$DIR/bin" "$DIR/.stamps"
# One build per directory at a time; a second caller waits, then finds everything cached.
exec 9>"$DIR/.lock"
if command -v flock >/dev/null; then flock 9; fi

# Leftovers of an interrupted run (never mistaken for done: no stamp, odd names).
rm -rf "$DIR"/bin/.*.tmp.* "$DIR"/.keycloak.tmp.*
cleanup() { rm -rf "$DIR"/bin/.*.tmp.$$ "$DIR"/.keycloak.tmp.$$; }
trap cleanup EXIT

echo "testenv: $DIR"
T_ALL=$SECONDS

# component NAME ARTIFACT FUNCTION...: skip when stamped and present, else run, then stamp.
component() {
  local name=$1 artifact=$2; shift 2
  wanted "$name" || return 0
  if [[ -e "$DIR/.stamps/$name" && -e "$artifact" ]]; then
    printf 'testenv: %-15s cached\n' "$name"
    return 0
  fi
  rm -f "$DIR/.stamps/$name"
  printf 'testenv: %-15s building...\n' "$name"
  local t0=$SECONDS
  "$@"
  echo "$name $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$DIR/.stamps/$name"
  printf 'testenv: %-15s built in %ss\n' "$name" $((SECONDS - t0))
}

# go_build MODDIR NAME PACKAGE CGO TAGS LDFLAGS: build into a temp file, then move into place.
go_build() {
  local moddir=$1 name=$2 pkg=$3 cgo=$4 tags=$5 ldflags=$6
  local tmp="$DIR/bin/.$name.tmp.$$"
  (cd "$moddir" && CGO_ENABLED=$cgo go build -mod=readonly -trimpath -tags "$tags" \
      -ldflags "$ldflags" -o "$tmp" "$pkg")
  mv -f "$tmp" "$DIR/bin/$name"
}

# mod_meta MODDIR MODULE VERSION: download the module, check the build list selects VERSION,
# and set MOD_TIME / MOD_COMMIT from the proxy's .info (commit only when the proxy knows it).
mod_meta() {
  local moddir=$1 mod=$2 want=$3 info selected
  selected="$(cd "$moddir" && go list -mod=readonly -m -f '{{.Version}}' "$mod")"
  if [[ "$selected" != "$want" ]]; then
    echo "testenv/build.sh: $mod: go.mod requires $want but the build list selects $selected" >&2
    exit 1
  fi
  info="$(cd "$moddir" && go mod download -json "$mod@$want" | sed -n 's/^[[:space:]]*"Info": "\(.*\)",$/\1/p')"
  MOD_TIME="$(grep -o '"Time":"[^"]*"' "$info" | cut -d'"' -f4 || true)"
  MOD_COMMIT="$(grep -o '"Hash":"[^"]*"' "$info" | cut -d'"' -f4 || true)"
}

k8s_ldflags() {
  mod_meta "$HERE" k8s.io/kubernetes "$K8S_VERSION"
  local major minor p flags="-s -w"
  major="${K8S_VERSION#v}"; major="${major%%.*}"
  minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
  # As kubernetes' hack/lib/version.sh sets them, for both version packages.
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    flags+=" -X $p.gitTreeState=archive -X $p.buildDate=$MOD_TIME"
    [[ -z "$MOD_COMMIT" ]] || flags+=" -X $p.gitCommit=$MOD_COMMIT"
  done
  echo "$flags"
}

# Tags as kubernetes' hack/lib/golang.sh uses for release builds.
K8S_TAGS=selinux,notest,grpcnotrace

build_kube_apiserver() {
  local flags
  flags="$(k8s_ldflags)"
  go_build "$HERE" kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver 0 "$K8S_TAGS" "$flags"
}

build_kube_controller_manager() {
  local flags
  flags="$(k8s_ldflags)"
  go_build "$HERE" kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager 0 "$K8S_TAGS" "$flags"
}

build_kubectl() {
  local flags
  flags="$(k8s_ldflags)"
  go_build "$HERE" kubectl k8s.io/kubernetes/cmd/kubectl 0 "$K8S_TAGS" "$flags"
}

build_etcd() {
  mod_meta "$HERE" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
  # The etcd version itself is a constant in go.etcd.io/etcd/api/v3/version.
  go_build "$HERE" etcd go.etcd.io/etcd/server/v3 0 "" \
    "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${MOD_COMMIT:-module-$ETCD_VERSION}"
}

build_helm() {
  mod_meta "$HERE" helm.sh/helm/v3 "$HELM_VERSION"
  local k8s_minor="${K8S_VERSION#v*.}"; k8s_minor="${k8s_minor%%.*}"
  local flags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  [[ -z "$MOD_COMMIT" ]] || flags+=" -X helm.sh/helm/v3/internal/version.gitCommit=$MOD_COMMIT"
  flags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
  flags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor"
  go_build "$HERE" helm helm.sh/helm/v3/cmd/helm 0 "" "$flags"
}

build_hydra() {
  mod_meta "$HERE/hydra" github.com/ory/hydra/v2 "$HYDRA_VERSION"
  local p=github.com/ory/hydra/v2/driver/config
  # cgo + these tags (as hydra's own Dockerfiles) give the sqlite driver: DSN=memory works.
  go_build "$HERE/hydra" hydra github.com/ory/hydra/v2 1 sqlite,sqlite_omit_load_extension \
    "-s -w -X $p.Version=$HYDRA_VERSION -X $p.Date=$MOD_TIME -X $p.Commit=${MOD_COMMIT:-unknown}"
}

fetch_keycloak() {
  command -v mvn >/dev/null || { echo "testenv/build.sh: mvn is not on PATH" >&2; exit 1; }
  local tmp="$DIR/.keycloak.tmp.$$" zip
  mkdir -p "$tmp/zip" "$tmp/x"
  # Run from the temp dir so no pom.xml around is picked up; the zip stays in ~/.m2 too.
  if ! (cd "$tmp" && mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
      "-Dartifact=org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip" \
      -DoutputDirectory="$tmp/zip") > "$tmp/mvn.log" 2>&1; then
    cat "$tmp/mvn.log" >&2
    echo "testenv/build.sh: mvn could not fetch keycloak-quarkus-dist $KEYCLOAK_VERSION" >&2
    exit 1
  fi
  zip="$tmp/zip/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip"
  if command -v unzip >/dev/null; then
    unzip -q "$zip" -d "$tmp/x"
  else
    python3 -m zipfile -e "$zip" "$tmp/x"
    chmod +x "$tmp/x/keycloak-$KEYCLOAK_VERSION"/bin/*.sh
  fi
  [[ -x "$tmp/x/keycloak-$KEYCLOAK_VERSION/bin/kc.sh" ]] || {
    echo "testenv/build.sh: keycloak zip has no keycloak-$KEYCLOAK_VERSION/bin/kc.sh" >&2; exit 1; }
  rm -rf "$DIR/keycloak"
  mv "$tmp/x/keycloak-$KEYCLOAK_VERSION" "$DIR/keycloak"
  rm -rf "$tmp"
}

# Cheapest first; the Go builds run one after another (2 cores; they share the build cache).
component keycloak       "$DIR/keycloak/bin/kc.sh"   fetch_keycloak
component etcd           "$DIR/bin/etcd"             build_etcd
component helm           "$DIR/bin/helm"             build_helm
component hydra          "$DIR/bin/hydra"            build_hydra
component kubectl        "$DIR/bin/kubectl"          build_kubectl
component kube-apiserver "$DIR/bin/kube-apiserver"   build_kube_apiserver
component kube-controller-manager "$DIR/bin/kube-controller-manager" build_kube_controller_manager

# oidc-provider's npm dependencies (the directory and its lock file belong to its owner).
OIDC="$HERE/oidc-provider"
if wanted oidc-provider && [[ -f "$OIDC/package-lock.json" ]]; then
  if [[ ! -d "$OIDC/node_modules" || "$OIDC/package-lock.json" -nt "$OIDC/node_modules" ]]; then
    printf 'testenv: %-15s npm ci...\n' oidc-provider
    t0=$SECONDS
    (cd "$OIDC" && npm ci --no-audit --no-fund)
    touch "$OIDC/node_modules"
    printf 'testenv: %-15s installed in %ss\n' oidc-provider $((SECONDS - t0))
  else
    printf 'testenv: %-15s cached\n' oidc-provider
  fi
fi

echo "testenv: ready in $((SECONDS - T_ALL))s: $DIR"
