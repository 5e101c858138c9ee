#!/usr/bin/env bash
# `make run`: a local control plane (etcd + kube-apiserver from testenv/), a Clerk emulator on
# loopback (or real Clerk when CLERK_SECRET_KEY is set), the CRDs, examples/, and the operator.
# Shows the resulting Secret keys and the application's status, then keeps the operator running
# until Ctrl-C (RUN_ONCE=1 stops after showing the result, and stops everything).
#
# It needs etcd, kube-apiserver and kubectl only: from KUBEBUILDER_ASSETS when set (envtest's
# convention, e.g. `setup-envtest use -p path`), else built once into the testenv cache
# (`testenv/build.sh etcd kube-apiserver kubectl`; Hydra, Keycloak and helm are for tests).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${RUN_STATE_DIR:-$PWD/target/run}
rm -rf "$STATE" && mkdir -p "$STATE"
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  TESTENV_DIR=$STATE/testenv
  mkdir -p "$TESTENV_DIR/bin"
  for b in etcd kube-apiserver kubectl; do
    [[ -x "$KUBEBUILDER_ASSETS/$b" ]] || {
      echo "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no executable $b" >&2; exit 1; }
    ln -s "$(cd "$KUBEBUILDER_ASSETS" && pwd)/$b" "$TESTENV_DIR/bin/$b"
  done
  echo "==> using etcd, kube-apiserver and kubectl from KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
else
  : "${TESTENV_DIR:=$(bash testenv/build.sh --print-dir)}"
  bash testenv/build.sh etcd kube-apiserver kubectl
fi
export TESTENV_DIR
KUBECONFIG_FILE=$STATE/kubeconfig
KUBECTL=("$TESTENV_DIR/bin/kubectl" --kubeconfig "$KUBECONFIG_FILE")
NS=default

cargo build --quiet --bin oauth-operator -p oauth-operator -p clerk-emulator -p testenv --bins
BIN=${CARGO_TARGET_DIR:-target}/debug
# Each in its own session (setsid), so Ctrl-C reaches only this script, whose cleanup can
# still use the cluster and the operator before it stops them.
pids=()
OPERATOR_STARTED=
cleanup() {
  trap - EXIT INT TERM # once: a signal, then the exit
  # At real Clerk the example's client outlives this cluster unless the operator deletes it.
  if [[ -n "${CLERK_SECRET_KEY:-}" && -n $OPERATOR_STARTED ]]; then
    echo "==> deleting the example at Clerk"
    "${KUBECTL[@]}" -n $NS delete oauthapplication web --wait --timeout=60s >/dev/null \
      || echo "could not delete the example's client at Clerk: delete it in the Clerk dashboard" >&2
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

echo "==> starting etcd + kube-apiserver on 127.0.0.1"
setsid "$BIN"/testenv control-plane --kubeconfig "$KUBECONFIG_FILE" --testenv-dir "$TESTENV_DIR" >"$STATE/control-plane.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do [[ -f $KUBECONFIG_FILE ]] && break; sleep 0.5; done
[[ -f $KUBECONFIG_FILE ]] || { echo "control plane did not start:"; tail -20 "$STATE/control-plane.log"; exit 1; }
head -1 "$STATE/control-plane.log"

if [[ -n "${CLERK_SECRET_KEY:-}" ]]; then
  echo "==> using real Clerk (CLERK_SECRET_KEY is set)"
  BASE_URL=${CLERK_API_URL:-https://api.clerk.com/v1}
  KEY=$CLERK_SECRET_KEY
else
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  KEY=sk_test_local_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "==> starting the Clerk emulator on 127.0.0.1:$PORT"
  setsid env -u CLERK_SECRET_KEY "$BIN"/clerk-emulator --listen "127.0.0.1:$PORT" --secret-key "$KEY" >"$STATE/clerk-emulator.log" 2>&1 &
  pids+=($!)
  BASE_URL=http://127.0.0.1:$PORT/v1
  up=
  for _ in $(seq 1 50); do
    curl -fsS -o /dev/null -H "Authorization: Bearer $KEY" "$BASE_URL/oauth_applications" 2>/dev/null && { up=1; break; }
    sleep 0.2
  done
  [[ -n $up ]] || { echo "the Clerk emulator did not start:"; tail -20 "$STATE/clerk-emulator.log"; exit 1; }
fi

echo "==> installing CRDs and examples/"
"${KUBECTL[@]}" apply --server-side -f crds/ >/dev/null
"${KUBECTL[@]}" wait --for=condition=Established crd --all --timeout=60s >/dev/null
# The example provider, pointed at this run's endpoint and key.
# (On stdin, not the command line, where `ps` would show a real Clerk key.)
printf '%s' "$KEY" | "${KUBECTL[@]}" -n $NS create secret generic clerk-admin \
  --from-file=secretKey=/dev/stdin --dry-run=client -o yaml | "${KUBECTL[@]}" apply -f - >/dev/null
# Where that key may be sent (the operator refuses to send a namespaced provider's
# credential anywhere its Secret does not name).
"${KUBECTL[@]}" -n $NS annotate --overwrite secret clerk-admin \
  "oauth-operator.dev/credential-for=${BASE_URL%/}" >/dev/null
sed "s#baseUrl: https://api.clerk.com/v1#baseUrl: $BASE_URL#" examples/clerk-provider.yaml \
  | awk 'BEGIN{skip=0} /^kind: Secret/{skip=1} /^---/{if(skip){skip=0; next}} !skip' \
  | "${KUBECTL[@]}" -n $NS apply -f - >/dev/null
"${KUBECTL[@]}" -n $NS apply -f examples/web-app.yaml >/dev/null

echo "==> running the operator (logs: $STATE/operator.log)"
# The example provider is namespaced: a tenant's provider reaches only public addresses
# unless the operator allows more (the SSRF guard); the local emulator is on loopback.
KUBECONFIG=$KUBECONFIG_FILE setsid "$BIN"/oauth-operator run --http-addr 127.0.0.1:0 \
  --operator-namespace $NS ${PORT:+--provider-allowed-networks 127.0.0.1} >"$STATE/operator.log" 2>&1 &
pids+=($!)
OPERATOR_STARTED=1

"${KUBECTL[@]}" -n $NS wait --for=condition=Ready oauthapplication/web --timeout=90s >/dev/null || {
  echo "the example did not become Ready:"; "${KUBECTL[@]}" -n $NS get oauthapplication web -o yaml; tail -20 "$STATE/operator.log"; exit 1; }
echo
"${KUBECTL[@]}" -n $NS get oauthproviders,oauthapplications
echo
echo "Secret web-oauth keys (values not shown):"
"${KUBECTL[@]}" -n $NS get secret web-oauth -o go-template='{{range $k, $v := .data}}  {{$k}}{{"\n"}}{{end}}'
echo
echo "OAuthApplication web status:"
"${KUBECTL[@]}" -n $NS get oauthapplication web -o jsonpath='{.status}' | python3 -m json.tool
echo
if [[ -n "${RUN_ONCE:-}" ]]; then
  echo "RUN_ONCE: stopping the operator, the emulator and the control plane."
  exit 0
fi
echo "Try: $TESTENV_DIR/bin/kubectl --kubeconfig $KUBECONFIG_FILE get oauthapp"
echo "The operator keeps running; Ctrl-C stops everything."
wait "${pids[-1]}"
