#!/usr/bin/env bash
# Installs what the build and tests need on a fresh Debian machine: Go
# modules, and (as root) the few Debian packages the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
go mod download
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v mount >/dev/null || need+=(mount)
if ((${#need[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "deps: installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "deps: missing ${need[*]}; install them (as root: apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
