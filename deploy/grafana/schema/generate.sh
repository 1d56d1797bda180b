#!/usr/bin/env bash
# Regenerate dashboard.schema.json: the JSON schema of Grafana's dashboard JSON model, generated
# from the TypeScript types of the npm package @grafana/schema with ts-json-schema-generator
# (both pinned in package.json / package-lock.json). The tests validate
# deploy/grafana/aws-reconciler.json against the committed output, so they need no npm; run this
# after bumping @grafana/schema and commit the result.
#
# Usage: deploy/grafana/schema/generate.sh [OUTPUT]   (default: dashboard.schema.json beside this script)
#
# The type is `Dashboard` of raw/dashboard/x/types.gen.d.ts: the dashboard model Grafana imports
# and provisions (schemaVersion-numbered JSON). The package's top-level `Dashboard` re-exports it
# through a "veneer" that only loosens panel types, and the generator refuses that file (two
# `DataSourceRef` definitions), so the raw, stricter type is the one used. Objects are closed
# (additionalProperties: false), so a misspelt key fails validation.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/dashboard.schema.json}"
cd "$here"

if ! command -v npm >/dev/null 2>&1; then
  echo "generate.sh: npm is needed to regenerate the schema" >&2
  exit 127
fi
# node_modules/ is gitignored; reinstall when the lock file changed since the last install.
if [ ! -x node_modules/.bin/ts-json-schema-generator ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2
fi

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
node_modules/.bin/ts-json-schema-generator \
  --path node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts \
  --type Dashboard \
  --no-type-check \
  --out "$tmp"
chmod 644 "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out" >&2
