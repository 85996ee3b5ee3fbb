#!/usr/bin/env bash
# Integration test: Debian's prometheus scrapes a running `quantmesh up` and
# a rate over the rpc metrics is not empty.
#
# Builds quantmesh, starts `quantmesh up` in a temporary directory on free
# loopback ports (port 0), drives REST calls (gateway -> gRPC, so
# rpc_server_* moves), starts prometheus with a temporary config derived from
# infra/prometheus/prometheus.yml (target rewritten to the mesh's HTTP
# address, 1 s scrape interval, rules copied alongside), waits for a
# successful scrape, then queries PROM_IT_QUERY on /api/v1/query and asserts
# the result vector is non-empty and its value is above zero.
#
# Usage: scripts/prometheus-it.sh
#   PROM_IT_QUERY  PromQL to assert on (default: sum(rate(rpc_server_call_duration_seconds_count[30s])))
#   PROM_IT_TIMEOUT seconds to wait for a non-empty result (default 30)
# Needs: go, prometheus and promtool (Debian package prometheus), curl, jq.
set -euo pipefail
cd "$(dirname "$0")/.."

QUERY="${PROM_IT_QUERY:-sum(rate(rpc_server_call_duration_seconds_count[30s]))}"
TIMEOUT="${PROM_IT_TIMEOUT:-30}"

fail() { printf '\nprometheus-it FAILED: %s\n' "$*" >&2; exit 1; }
log() { printf 'prometheus-it: %s\n' "$*"; }

for tool in go prometheus promtool curl jq; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (Debian: apt-get install prometheus curl jq)"
done

tmp="$(mktemp -d)"
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ $rc -ne 0 ]]; then
    log "logs kept in $tmp (mesh.log, prometheus.log)"
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT

log "building quantmesh"
go build -o "$tmp/quantmesh" ./cmd/quantmesh

log "starting quantmesh up in $tmp (free loopback ports)"
"$tmp/quantmesh" up --data-dir "$tmp/data" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --bootstrap-model=false >"$tmp/mesh.log" 2>&1 &
pids+=($!)
mesh_pid=$!

http=""
for _ in $(seq 1 100); do
  kill -0 "$mesh_pid" 2>/dev/null || { tail -30 "$tmp/mesh.log" >&2; fail "quantmesh up exited during start"; }
  http="$(grep -o 'msg="quantmesh started".* http=[0-9.]*:[0-9]*' "$tmp/mesh.log" | sed 's/.* http=//' || true)"
  [[ -n "$http" ]] && break
  sleep 0.1
done
[[ -n "$http" ]] || { tail -30 "$tmp/mesh.log" >&2; fail "quantmesh up did not log its HTTP address within 10 s"; }

for _ in $(seq 1 100); do
  curl -fs -o /dev/null "http://$http/readyz" && break
  sleep 0.1
done
curl -fs -o /dev/null "http://$http/readyz" || { curl -s "http://$http/readyz" >&2; fail "http://$http/readyz is not ready within 10 s"; }
log "mesh ready: http://$http"

# Traffic for the whole run: REST calls go through the gateway to the gRPC
# server, so rpc_server_call_duration_seconds keeps moving between scrapes.
(
  while :; do
    curl -fs -o /dev/null "http://$http/v1/experiments" || true
    sleep 0.1
  done
) &
pids+=($!)

log "writing prometheus config from infra/prometheus/prometheus.yml"
mkdir -p "$tmp/prom"
cp -r infra/prometheus/rules "$tmp/prom/rules"
sed -e "s/\"127\.0\.0\.1:8080\"/\"$http\"/" \
  -e 's/^\(  scrape_interval:\).*/\1 1s/' \
  -e 's/^\(  evaluation_interval:\).*/\1 1s/' \
  infra/prometheus/prometheus.yml >"$tmp/prom/prometheus.yml"
grep -q "\"$http\"" "$tmp/prom/prometheus.yml" \
  || fail "could not rewrite the quantmesh target (\"127.0.0.1:8080\") in infra/prometheus/prometheus.yml"
grep -q '^  scrape_interval: 1s' "$tmp/prom/prometheus.yml" \
  || fail "could not set scrape_interval in infra/prometheus/prometheus.yml"
promtool check config "$tmp/prom/prometheus.yml" >/dev/null || fail "promtool check config on the derived config"

prom_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
  || echo $((20000 + RANDOM % 20000)))"
prom="127.0.0.1:$prom_port"
log "starting prometheus on $prom"
prometheus --config.file="$tmp/prom/prometheus.yml" --storage.tsdb.path="$tmp/prom/data" \
  --web.listen-address="$prom" >"$tmp/prometheus.log" 2>&1 &
pids+=($!)
prom_pid=$!

for _ in $(seq 1 100); do
  kill -0 "$prom_pid" 2>/dev/null || { tail -30 "$tmp/prometheus.log" >&2; fail "prometheus exited during start"; }
  curl -fs -o /dev/null "http://$prom/-/ready" && break
  sleep 0.1
done
curl -fs -o /dev/null "http://$prom/-/ready" || { tail -30 "$tmp/prometheus.log" >&2; fail "prometheus is not ready within 10 s"; }

targets() {
  curl -fs "http://$prom/api/v1/targets" \
    | jq -r '.data.activeTargets[] | "  \(.labels.job) \(.scrapeUrl) health=\(.health) lastScrape=\(.lastScrape) lastError=\(.lastError)"' \
    || echo "  (cannot read http://$prom/api/v1/targets)"
}

log "waiting for a successful scrape of http://$http/metrics"
up=""
for _ in $(seq 1 "$((TIMEOUT * 2))"); do
  up="$(curl -fs "http://$prom/api/v1/targets" | jq -r '[.data.activeTargets[] | select(.health == "up")] | length' 2>/dev/null || true)"
  [[ "$up" =~ ^[1-9] ]] && break
  sleep 0.5
done
[[ "$up" =~ ^[1-9] ]] || { echo "prometheus targets:" >&2; targets >&2; fail "prometheus did not scrape the mesh within ${TIMEOUT} s"; }
targets

log "querying: $QUERY"
result=""
for _ in $(seq 1 "$((TIMEOUT * 2))"); do
  result="$(curl -fs --get "http://$prom/api/v1/query" --data-urlencode "query=$QUERY")" \
    || fail "query failed: $(curl -s --get "http://$prom/api/v1/query" --data-urlencode "query=$QUERY")"
  # non-empty vector with a value above zero: traffic was scraped at least twice.
  # The first values are low (~0.5/s for ~8 calls/s): rate() divides the
  # increase between the first samples by the whole 30 s range.
  if jq -e '.status == "success" and (.data.result | length > 0) and ([.data.result[].value[1] | tonumber] | max > 0)' \
    <<<"$result" >/dev/null; then
    log "result: $(jq -c '.data.result' <<<"$result")"
    log "PASS: $QUERY is not empty"
    exit 0
  fi
  sleep 0.5
done
echo "last response: $result" >&2
echo "prometheus targets:" >&2
targets >&2
fail "$QUERY stayed empty (or zero) for ${TIMEOUT} s after the first successful scrape"
