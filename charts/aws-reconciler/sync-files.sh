#!/usr/bin/env bash
# Copy the observability sources into the chart: Helm can only read files inside the chart, so
# the PrometheusRule and the Grafana dashboard ConfigMap embed these copies. Run it after
# editing deploy/prometheus/aws-reconciler-rules.yaml or deploy/grafana/aws-reconciler.json;
# tests/deploy/test_chart_files.py fails while a copy differs from its source.
#
# Usage: charts/aws-reconciler/sync-files.sh          copy
#        charts/aws-reconciler/sync-files.sh --check  only report differences (exit 1)
set -euo pipefail
chart="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$chart/../.." && pwd)"

# source (relative to the repository) -> copy (relative to the chart)
pairs=(
  "deploy/prometheus/aws-reconciler-rules.yaml:files/aws-reconciler-rules.yaml"
  "deploy/grafana/aws-reconciler.json:files/aws-reconciler.json"
)

check=false
[[ "${1:-}" == "--check" ]] && check=true
status=0
for pair in "${pairs[@]}"; do
  src="$repo/${pair%%:*}"
  dst="$chart/${pair#*:}"
  if [[ ! -f "$src" ]]; then
    echo "missing source ${pair%%:*}" >&2
    status=1
    continue
  fi
  if cmp -s "$src" "$dst"; then
    echo "up to date  ${pair#*:}"
  elif $check; then
    echo "differs     ${pair#*:} (run $0)" >&2
    status=1
  else
    mkdir -p "$(dirname "$dst")"
    cp "$src" "$dst"
    echo "copied      ${pair%%:*} -> charts/aws-reconciler/${pair#*:}"
  fi
done
exit "$status"
