#!/usr/bin/env bash
# The suite-wide secret-leak scan, run by `make test` after every test binary: no secret value
# a test handled (client secrets, previous secrets, registration access tokens, admin keys;
# recorded by tests/support under <tmp>/oauth-operator-secrets-seen/) may appear in anything
# the operator wrote during the run: its logs, which carry its events and errors
# (<tmp>/oauth-operator-tests-*/operator-*.log), and what tests/support captures each time an
# operator stops: its metrics page (metrics-*.txt) and, as the apiserver holds them, the
# status of every application and provider with the namespace's events (objects-*.yaml).
# Prints the files and counts, never a value.
#
# Usage: scripts/leak-scan.sh <cargo target tmp dir>
set -euo pipefail
tmp="${1:?usage: $0 <target/tmp>}"
seen_dir="$tmp/oauth-operator-secrets-seen"
shopt -s nullglob
logs=("$tmp"/oauth-operator-tests-*/operator-*.log)
captured=("$tmp"/oauth-operator-tests-*/metrics-*.txt "$tmp"/oauth-operator-tests-*/objects-*.yaml)
values=("$seen_dir"/*.txt)
if [ ${#values[@]} -eq 0 ]; then
  echo "leak scan: no secret values were recorded under $seen_dir" >&2
  exit 1
fi
patterns="$(mktemp)"
trap 'rm -f "$patterns"' EXIT
# Unique, non-empty values only (an empty pattern would match every line).
cat "${values[@]}" | awk 'length($0) >= 12' | sort -u > "$patterns"
count=$(wc -l < "$patterns")
leaks=0
for log in "${logs[@]}" "${captured[@]}"; do
  hits=$(grep -cFf "$patterns" "$log" || true)
  if [ "$hits" -gt 0 ]; then
    echo "leak scan: $hits line(s) of $log contain a secret value" >&2
    leaks=$((leaks + hits))
  fi
done
metrics=("$tmp"/oauth-operator-tests-*/metrics-*.txt)
echo "leak scan: $count secret values, ${#logs[@]} operator logs, ${#metrics[@]} metrics pages, $((${#captured[@]} - ${#metrics[@]})) status and event captures, $leaks leaking lines"
[ "$leaks" -eq 0 ]
