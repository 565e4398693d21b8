#!/usr/bin/env bash
# Fetches the free GeoIP data from the npm registry and installs it for Rampart:
#   country: @ip-location-db/geo-whois-asn-country-mmdb (CC0), an MMDB used as is
#   ASN:     @ip-location-db/asn (CC-BY 4.0, attribution: ip-location-db / RouteViews
#            and the RIRs), CSV turned into an MMDB by `rampart geoip build`
# Files are written next to the target and renamed over the old ones, so a running
# Rampart swaps them in at its next check without a restart. Never commit them.
#
# Usage: deploy/geoip/fetch.sh [TARGET_DIR] [RAMPART_BINARY]
#        (defaults: /var/lib/rampart, `rampart` on PATH or target/release/rampart)
set -euo pipefail
target=${1:-/var/lib/rampart}
rampart=${2:-$(command -v rampart || echo target/release/rampart)}
command -v npm >/dev/null || { echo "npm is needed (apt-get install -y npm)" >&2; exit 1; }
[ -x "$rampart" ] || { echo "rampart binary not found at $rampart (cargo build --release -p rampart)" >&2; exit 1; }
mkdir -p "$target"
target=$(cd "$target" && pwd)
rampart=$(cd "$(dirname "$rampart")" && pwd)/$(basename "$rampart")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

echo "== country database"
npm pack --silent @ip-location-db/geo-whois-asn-country-mmdb >/dev/null
mkdir country && tar xzf ip-location-db-geo-whois-asn-country-mmdb-*.tgz -C country
cp country/package/geo-whois-asn-country.mmdb "$target/country.mmdb.new"
mv "$target/country.mmdb.new" "$target/country.mmdb"

echo "== ASN database"
npm pack --silent @ip-location-db/asn >/dev/null
mkdir asn && tar xzf ip-location-db-asn-*.tgz -C asn
"$rampart" geoip build --asn-csv asn/package/asn-ipv4.csv --asn-csv asn/package/asn-ipv6.csv --out "$target/asn.mmdb"

ls -l "$target/country.mmdb" "$target/asn.mmdb"
echo "configure [geoip] country_db = \"$target/country.mmdb\", asn_db = \"$target/asn.mmdb\""
