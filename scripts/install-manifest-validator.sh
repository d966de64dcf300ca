#!/usr/bin/env bash
# Installs kubernetes-validate (PyPI; it carries the Kubernetes API's JSON schemas, so it checks
# manifests offline, like kubeconform) into a virtualenv under ~/.cache, once per machine, and
# prints the path of its command. Neither helm nor kubeconform is in Debian's or PyPI's packages.
# Usage: scripts/install-manifest-validator.sh   (make test runs it)
set -euo pipefail

version=1.37.0
venv="${MEMRING_TOOLS_DIR:-$HOME/.cache/memring-tools}/kubernetes-validate-$version"
tool="$venv/bin/kubernetes-validate"
if [ ! -x "$tool" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    # Debian's own python3 keeps venv in a separate package.
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  echo "install-manifest-validator: installing kubernetes-validate $version" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$version" >&2
fi
echo "$tool"
