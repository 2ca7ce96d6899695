#!/usr/bin/env bash
# Installs what shopstream needs on a fresh Debian machine: system packages
# (redis-server, docker-compose for validating the compose file), the Python
# venv with pinned dependencies, and the Kafka jars (via Maven).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[bootstrap] error:\033[0m %s\n' "$*" >&2; exit 1; }

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || die "python3 not found. Install Python 3.11 (apt-get install -y python3.11 python3.11-venv)."
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || die "shopstream needs Python 3.11; $("$PY" --version) found. Set PYTHON=/path/to/python3.11."
command -v java >/dev/null || die "java not found. Install Java 17: apt-get install -y openjdk-17-jre-headless"
java -version 2>&1 | grep -qE 'version "(17|1[89]|2[0-9])' || die "Kafka 4 needs Java 17+: apt-get install -y openjdk-17-jre-headless"
command -v mvn >/dev/null || die "mvn not found. Install Maven: apt-get install -y maven"

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v docker-compose >/dev/null || missing+=(docker-compose)
# Headless Chromium and its WebDriver for the dashboard's browser test.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# npm fetches the dashboard's chart library (uPlot) from the npm registry.
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} with your package manager."
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  say "installing ${missing[*]} (apt-get)..."
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian's package may start a system redis on 6379; shopstream runs its own.
  (command -v service >/dev/null && $SUDO service redis-server stop >/dev/null 2>&1) || true
fi

stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  say "creating .venv and installing pinned dependencies (constraints.txt)..."
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # [train] brings PyTorch (CPU use only; several GB with its CUDA wheels, served
  # from pip's cache after the first install): the tests train small models.
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,train]"
  touch "$stamp"
fi

# The dashboard's chart library, served by the workers themselves (no CDN at run time).
UPLOT_VERSION=1.6.32
vendor=ops/static/vendor
if [ "$(cat "$vendor/VERSION" 2>/dev/null)" != "uplot@$UPLOT_VERSION" ]; then
  say "fetching uPlot $UPLOT_VERSION from the npm registry..."
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null) || die "npm pack uplot@$UPLOT_VERSION failed"
  tar -xzf "$tmp"/uplot-*.tgz -C "$tmp"
  mkdir -p "$vendor"
  cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$tmp/package/LICENSE" "$vendor/"
  echo "uplot@$UPLOT_VERSION" > "$vendor/VERSION"
  rm -rf "$tmp"
fi

.venv/bin/python -c 'from shopstream.services import ensure_kafka_jars; ensure_kafka_jars()'
say "ready: python $(.venv/bin/python --version | cut -d" " -f2), $(java -version 2>&1 | head -1), redis $(redis-server --version | awk '{print $3}')"
