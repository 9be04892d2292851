#!/usr/bin/env bash
# Latency of one classification over HTTP (batch 1), sequential requests with curl.
#   scripts/latency.sh MODEL IMAGE [REQUESTS] [URL]
# Prints the median, 90th percentile and mean of curl's total time, in milliseconds.
set -euo pipefail
model=$1 image=$2 requests=${3:-100} url=${4:-http://127.0.0.1:8080}
type=$(file --brief --mime-type "$image" 2>/dev/null || echo image/jpeg)
endpoint="$url/v1/models/$model/classify?top_k=5"
curl -sf -o /dev/null -H "content-type: $type" --data-binary @"$image" "$endpoint"   # warm the connection path
for _ in $(seq "$requests"); do
  curl -s -o /dev/null -w '%{time_total}\n' -H "content-type: $type" --data-binary @"$image" "$endpoint"
done | sort -n | awk -v model="$model" '
  { t[NR] = $1 * 1000; sum += $1 * 1000 }
  END { printf "%s: %d requests, p50 %.1f ms, p90 %.1f ms, mean %.1f ms\n", model, NR, t[int(NR * 0.5)], t[int(NR * 0.9)], sum / NR }'
