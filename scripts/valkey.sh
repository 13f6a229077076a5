#!/usr/bin/env bash
# Prints the path of a Valkey server for the ledger's replication tests,
# fetching it when absent: Debian's valkey package (bookworm-backports)
# unpacked under ${XDG_CACHE_HOME:-~/.cache}/llmproxy, nothing installed.
# Valkey, like Redis 7.2 and later, counts for WAIT only the writes that
# changed something, where the machine's Redis 7.0 counts every command.
set -euo pipefail
dir="${XDG_CACHE_HOME:-$HOME/.cache}/llmproxy/valkey"
if [ -x "$dir/valkey-server" ]; then
  echo "$dir/valkey-server"
  exit 0
fi
mirror=http://deb.debian.org/debian
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
arch=$(dpkg --print-architecture)
curl -fsS --max-time 60 "$mirror/dists/bookworm-backports/main/binary-$arch/Packages.xz" -o "$tmp/Packages.xz"
file=$(xz -dc "$tmp/Packages.xz" | awk '/^Package: valkey-tools$/{p=1} p&&/^Filename:/&&!f{f=$2} END{print f}')
[ -n "$file" ] || { echo "valkey-tools not in bookworm-backports" >&2; exit 1; }
curl -fsS --max-time 120 "$mirror/$file" -o "$tmp/valkey-tools.deb"
dpkg-deb -x "$tmp/valkey-tools.deb" "$tmp/x"
# The package's one binary is the server, named by its link.
cp "$tmp/x/usr/bin/valkey-check-rdb" "$dir/valkey-server.new"
# Kept only once it runs here.
"$dir/valkey-server.new" --version >&2
mv "$dir/valkey-server.new" "$dir/valkey-server"
echo "$dir/valkey-server"
