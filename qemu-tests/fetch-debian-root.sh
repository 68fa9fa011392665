#!/usr/bin/env bash
# Build a real Debian bookworm root filesystem for the Debian system slot
# (qemu-tests/debianimage.go): `debootstrap --variant=minbase` with the
# packages of qemu-tests/debian-root.list, installed by dpkg from Debian's
# archive (debootstrap checks the Release file's signature against
# debian-archive-keyring and each .deb against the signed index), into the
# git-ignored cache, and print where the tree is:
#
#   qemu-tests/fetch-debian-root.sh [LIST]
#   DEBIAN_ROOT=/abs/.cache/debian-root/amd64-<list hash>/root
#
# LIST is another package list instead of debian-root.list (e.g.
# debian-initramfs.list, the tree qemu-tests/distroinitvm builds its
# initramfs images in); each list has its own tree, named by its hash.
#
# Needs root (debootstrap chroots into the tree, runs the maintainer
# scripts and sets file owners) and debootstrap (Debian package
# debootstrap). The mirror is KERNEL_MIRROR, as for initramfs/fetch-kernel.sh
# (default http://deb.debian.org/debian). amd64 only for now: another
# architecture needs debootstrap --foreign and qemu-user for the second stage.
#
# Exit status 3: this host cannot build the tree (not root, no debootstrap,
# not amd64); the Go side skips its tests then, or fails them under CI.
#
# Idempotent: the tree's directory is named by the list's hash, and a stamp
# marks it complete; with the stamp there the script prints the path and
# exits at once. The tree is built in root.part and renamed when complete.
#
# To keep the tree small (it is copied into every slot image), apt's
# downloaded .debs, its package lists, the manual pages, the translations
# under /usr/share/locale and /usr/share/doc (but the copyright files) are
# removed afterwards: what Debian's own minimal images drop with dpkg
# path-exclude rules (dpkg(1) --path-exclude).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
arch=${GUEST_ARCH:-amd64}
suite=bookworm
mirror=${KERNEL_MIRROR:-http://deb.debian.org/debian}
list=${1:-$here/debian-root.list}
cache=${CPINIT_CACHE:-$top/.cache}

say() { echo "fetch-debian-root: $*" >&2; }

[[ -f $list ]] || { say "no package list $list"; exit 1; }
hash=$(sha256sum "$list" | cut -c1-16)
dir=$cache/debian-root/$arch-$hash

if [[ -f $dir/stamp ]]; then
	echo "DEBIAN_ROOT=$dir/root"
	exit 0
fi

if [[ $arch != amd64 ]]; then
	say "GUEST_ARCH=$arch: only amd64 is supported (another architecture needs debootstrap --foreign and qemu-user-static)"
	exit 3
fi
if [[ $(id -u) != 0 ]]; then
	say "needs root: debootstrap chroots into the new tree, runs the packages' maintainer scripts and sets file owners"
	exit 3
fi
# Root's PATH has /usr/sbin, a test runner's environment may not.
debootstrap=$(PATH=$PATH:/usr/sbin:/sbin command -v debootstrap || true)
if [[ -z $debootstrap ]]; then
	say "debootstrap not found: apt-get install debootstrap (make deps installs it)"
	exit 3
fi
if [[ $(dpkg --print-architecture 2>/dev/null || true) != amd64 ]]; then
	say "the host is not amd64 (dpkg --print-architecture): debootstrap would need --foreign and qemu-user-static"
	exit 3
fi

mapfile -t pkgs < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$list" | grep -v '^$')
include=$(IFS=,; echo "${pkgs[*]}")

part=$dir/root.part
# A run that died may have left debootstrap's mounts in the tree (/proc,
# /sys and, in a container, bind mounts of the host's /dev nodes:
# debootstrap's setup_devices_bind): unmount them, deepest first, before
# removing it, and never cross into another filesystem while removing.
clean_part() {
	[[ -e $part ]] || return 0
	local m
	while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done < <(awk -v p="$part/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r)
	rm -rf --one-file-system "$part"
}
clean_part
on_error() {
	if [[ -f $part/debootstrap/debootstrap.log ]]; then
		say "the end of $part/debootstrap/debootstrap.log:"
		tail -n 30 "$part/debootstrap/debootstrap.log" >&2
	fi
	say "failed; removing $part"
	clean_part
}
trap on_error ERR
mkdir -p "$dir"

say "debootstrap --variant=minbase $suite ($arch, ${#pkgs[@]} packages from $list) from $mirror into $part"
start=$SECONDS
# debootstrap's own log is in $part/debootstrap/debootstrap.log while it
# runs; its progress goes to stderr.
"$debootstrap" --arch="$arch" --variant=minbase --include="$include" "$suite" "$part" "$mirror" >&2

# Smaller: what debootstrap and apt leave that no test reads.
rm -rf "$part"/var/cache/apt/archives/*.deb "$part"/var/cache/apt/*.bin "$part"/var/lib/apt/lists/*
rm -rf "$part"/usr/share/man/* "$part"/usr/share/info/*
find "$part/usr/share/locale" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
find "$part/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$part/usr/share/doc" -mindepth 1 -type d -empty -delete

trap - ERR
mv "$part" "$dir/root"
{
	echo "suite=$suite arch=$arch mirror=$mirror"
	echo "packages=$include"
	echo "debootstrap=$(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo unknown)"
} >"$dir/stamp"
say "built in $((SECONDS - start)) s: $(du -sh "$dir/root" | cut -f1) in $dir/root"
echo "DEBIAN_ROOT=$dir/root"
