#!/usr/bin/env bash
# Set-up for a fresh Debian 12 machine: system packages, a venv, the project installed editable.
# Idempotent: packages already present are not reinstalled; the venv is reused.
set -euo pipefail
venv=${1:-.venv}
cd "$(dirname "$0")/.."

# python3-dev/gcc/libnetfilter-queue-dev: netfilterqueue builds from source; nftables (its
# libnftables is loaded by pip-nftables) and iptables: the diversion; the rest is the lab:
# namespaces, clients and the real attack tools the tests run; prometheus and tmux: the
# metrics test scrapes with a real Prometheus server, the `ipsctl top` test runs it in tmux;
# tshark is the oracle of the application-layer parsers' tests (TLS, DNS, HTTP, SSH, community_id);
# dnsmasq-base (a DNS server without a system service) and bind9-dnsutils (dig) are the real DNS
# server and client of the application-layer lab tests.
apt_packages=(
  python3 python3-venv python3-dev gcc make
  libnetfilter-queue-dev nftables iptables iproute2 util-linux systemd
  iputils-ping curl nmap hping3 masscan ncat socat tcpdump iperf3
  prometheus tmux tshark dnsmasq-base bind9-dnsutils
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # wireshark-common asks whether non-root users may capture: answer no, without a prompt.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
  # The tests start their own Prometheus in a lab namespace: the distro's service (listening
  # on every address) is not wanted.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null; then
    systemctl disable --now prometheus prometheus-node-exporter 2>/dev/null || true
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating venv $venv"
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
# pydivert only as a binary wheel: its source build downloads WinDivert/eBPFDivert binaries.
"$venv/bin/python" -m pip install -q --only-binary pydivert -e '.[dev]'
echo "setup: ok ($("$venv/bin/python" --version))"
