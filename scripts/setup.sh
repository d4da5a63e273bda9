#!/usr/bin/env bash
# Set up xvm on a fresh Debian 12 machine: system packages, a virtualenv with xvm
# and its test tools, the test guests, and the default guest images (kernel build
# on first run: a few minutes on 2 cores; cached afterwards in ~/.cache/xvm).
# Safe to run again: every step skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  python3 python3-venv python3-pip          # xvm itself
  nasm binutils                             # our own test guests (tests/guests)
  cpio e2fsprogs                            # initramfs checks, root disk images
  pypy3 pypy3-venv                          # the bt engine's speed path
  qemu-system-x86                           # the peer xvm is tested and benchmarked against
  passt iproute2                            # --net user, and the network tests' namespaces
  linux-source-6.1 bc flex bison make gcc libelf-dev libssl-dev lz4 xz-utils   # default guest kernel
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

echo "setup: building the test guests"
.venv/bin/python tests/guests/build.py >/dev/null

echo "setup: default guest images (built once, then cached)"
.venv/bin/xvm images build
echo "setup: done. Try: .venv/bin/xvm run -- uname -a"
