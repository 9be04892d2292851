#!/usr/bin/env bash
# Loads and unloads MODEL CYCLES times on a fresh `graft serve` (over its HTTP API) and prints
# the server's RSS after start-up and after every unload and load, then the growth of the
# last loaded and unloaded RSS over the first ones. Each unload is read after SETTLE seconds
# (11 by default): jemalloc hands freed pages back to the system within about a second, so
# an RSS read at once still counts memory the process no longer uses.
#   scripts/model_cycles.sh efficientnet_lite0 10
set -euo pipefail
model=${1:-efficientnet_lite0}
cycles=${2:-10}
port=${PORT:-18181}
data=$(mktemp -d)
target/release/graft serve --listen "127.0.0.1:$port" --data-dir "$data" --models "$model" --workers 0 \
  >"$data/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 300); do
  curl -sf "127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.2
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
classify() { curl -sf -o /dev/null --data-binary @tests/fixtures/generated/images/china.jpg \
  -H 'content-type: image/jpeg' "127.0.0.1:$port/v1/models/$model/classify"; }
classify
echo "after start-up and one request: $(rss) kB"
first_loaded="" first_unloaded=""
for cycle in $(seq 1 "$cycles"); do
  curl -sf -o /dev/null -X POST "127.0.0.1:$port/v1/models/$model/unload"
  sleep "${SETTLE:-11}"
  unloaded=$(rss)
  curl -sf -o /dev/null -X POST "127.0.0.1:$port/v1/models/$model/load"
  classify
  loaded=$(rss)
  echo "cycle $cycle: unloaded $unloaded kB, loaded $loaded kB"
  first_loaded=${first_loaded:-$loaded}
  first_unloaded=${first_unloaded:-$unloaded}
done
awk -v a="$first_loaded" -v b="$loaded" -v c="$first_unloaded" -v d="$unloaded" \
  'BEGIN { printf "growth over %s cycles: loaded %+.1f %%, unloaded %+.1f %%\n", '"$cycles"', (b/a-1)*100, (d/c-1)*100 }'
