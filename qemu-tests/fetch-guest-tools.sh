#!/usr/bin/env bash
# Fetch the Debian packages of the in-guest tools for a guest architecture
# other than the host's (qemu-tests/guest-tools-<arch>.list, pkg=version per
# line) with `apt-get download`, unpack them with `dpkg-deb -x` into the
# git-ignored cache, and print where the tree is:
#
#   GUEST_ARCH=arm64 qemu-tests/fetch-guest-tools.sh
#   GUEST_TOOLS_ROOT=/abs/.cache/guest-tools/arm64-<list hash>/root
#
# apt runs with a private configuration (its own sources.list for bookworm
# main, package lists and cache, with the guest's architecture as its only
# one: apt.conf(5) APT::Architecture(s)), the same one
# initramfs/fetch-kernel.sh keeps for a foreign kernel, so the host's apt
# setup is neither read for sources nor changed. apt-get download checks
# each .deb against the hashes of the signed package index (apt-secure(8)).
#
# Idempotent: the tree's directory is named by the list's hash, and a stamp
# marks it complete.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
arch=${GUEST_ARCH:?GUEST_ARCH=arm64 (a Debian architecture)}
list=$here/guest-tools-$arch.list
[[ -f $list ]] || { echo "fetch-guest-tools: no package list $list for $arch" >&2; exit 1; }
cache=${CPINIT_CACHE:-$top/.cache}
hash=$(sha256sum "$list" | cut -c1-16)
dir=$cache/guest-tools/$arch-$hash

say() { echo "fetch-guest-tools: $*" >&2; }

if [[ -f $dir/stamp ]]; then
	echo "GUEST_TOOLS_ROOT=$dir/root"
	exit 0
fi
for tool in apt-get dpkg-deb sha256sum; do
	command -v "$tool" >/dev/null || { say "$tool not found: this needs a Debian host"; exit 1; }
done
mapfile -t pkgs < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$list" | grep -v '^$')

suite=bookworm
priv=$cache/kernel/apt-$suite-$arch
mkdir -p "$priv/lists/partial" "$priv/cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${KERNEL_MIRROR:-http://deb.debian.org/debian} $suite main" >"$priv/sources.list"
apt_opts=(-o "APT::Architecture=$arch" -o "APT::Architectures::=$arch"
	-o "Dir::Etc::SourceList=$priv/sources.list" -o "Dir::Etc::SourceParts=-"
	-o "Dir::State::Lists=$priv/lists" -o "Dir::Cache=$priv/cache")
if [[ ! -f $priv/updated ]]; then
	apt-get "${apt_opts[@]}" -qq update >&2 && touch "$priv/updated"
fi

rm -rf "$dir"
mkdir -p "$dir/debs"
# apt-get download writes into the current directory; the warning about an
# unsandboxed download as root is harmless here.
if ! (cd "$dir/debs" && apt-get "${apt_opts[@]}" download -q "${pkgs[@]}" >&2) &&
	! { say "retrying after apt-get update" && apt-get "${apt_opts[@]}" -qq update >&2 &&
		(cd "$dir/debs" && apt-get "${apt_opts[@]}" download -q "${pkgs[@]}" >&2); }; then
	say "apt-get download failed: if Debian no longer serves a version in $list, pick the current one"
	say "('apt-cache ${apt_opts[*]} madison PKG') and update the list."
	exit 1
fi
for deb in "$dir"/debs/*.deb; do
	dpkg-deb -x "$deb" "$dir/root.part"
done
mv "$dir/root.part" "$dir/root"
rm -rf "$dir/debs"
touch "$dir/stamp"
say "unpacked ${#pkgs[@]} packages into $dir/root"
echo "GUEST_TOOLS_ROOT=$dir/root"
