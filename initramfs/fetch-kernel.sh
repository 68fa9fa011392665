#!/usr/bin/env bash
# Fetch a pinned Debian kernel package with `apt-get download`, check its
# sha256, unpack it with `dpkg-deb -x` into the git-ignored cache, and print
# where the kernel and modules are.
#
# Which kernel: the env file named by KERNEL_ENV, a file name in initramfs/
# or a path; default kernel.env (the cloud kernel every test boots unless it
# says otherwise). kernel-generic.env is Debian's generic kernel, which has
# f2fs (as a module):
#   KERNEL_ENV=kernel-generic.env initramfs/fetch-kernel.sh
#
# Idempotent: when the unpacked tree is there and its stamp names the pinned
# sha256, it does nothing but print the paths.
#
# Output (stdout, shell-sourceable):
#   KERNEL_RELEASE=6.1.0-50-cloud-amd64
#   KERNEL_VMLINUZ=/abs/.cache/kernel/.../boot/vmlinuz-...
#   KERNEL_MODULES=/abs/.cache/kernel/.../lib/modules/6.1.0-50-cloud-amd64
#   KERNEL_MODULE_LIST=/abs/initramfs/modules.list
#
# --print-sha256: download the pinned package and print its sha256 (for
# updating the pin), without checking it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
env=${KERNEL_ENV:-kernel.env}
[[ $env == */* ]] || env=$here/$env
[[ -f $env ]] || { echo "fetch-kernel: no kernel env file $env (KERNEL_ENV)" >&2; exit 1; }
unset KERNEL_PKG KERNEL_VERSION KERNEL_SHA256 KERNEL_MODULE_LIST
# shellcheck source=kernel.env
. "$env"
for v in KERNEL_PKG KERNEL_VERSION; do
	[[ -n ${!v:-} ]] || { echo "fetch-kernel: $env sets no $v" >&2; exit 1; }
done
# The module list the initramfs build uses for this kernel (relative to
# initramfs/ unless absolute).
module_list=${KERNEL_MODULE_LIST:-modules.list}
[[ $module_list == /* ]] || module_list=$here/$module_list

cache=${CPINIT_CACHE:-$top/.cache}
dir=$cache/kernel/${KERNEL_PKG}_${KERNEL_VERSION}
release=${KERNEL_PKG#linux-image-}
deb=$dir/${KERNEL_PKG}_${KERNEL_VERSION}_amd64.deb

say() { echo "fetch-kernel: $*" >&2; }

print_paths() {
	echo "KERNEL_RELEASE=$release"
	echo "KERNEL_VMLINUZ=$dir/root/boot/vmlinuz-$release"
	echo "KERNEL_MODULES=$dir/root/lib/modules/$release"
	echo "KERNEL_MODULE_LIST=$module_list"
}

KERNEL_SHA256=${KERNEL_SHA256:-}
if [[ ${1:-} != --print-sha256 && -f $dir/stamp && $(cat "$dir/stamp") == "$KERNEL_SHA256" ]]; then
	print_paths
	exit 0
fi

for tool in apt-get dpkg-deb sha256sum; do
	command -v "$tool" >/dev/null || { say "$tool not found: this needs a Debian host"; exit 1; }
done

mkdir -p "$dir"
if [[ ! -f $deb ]]; then
	say "downloading $KERNEL_PKG=$KERNEL_VERSION"
	tmp=$(mktemp -d "$dir/dl.XXXXXX")
	# apt-get download writes into the current directory. It runs as the
	# _apt user when it can; the warning about an unsandboxed download as
	# root is harmless here.
	# A new machine may have no (or stale) package lists: update once and
	# retry before giving up.
	if ! (cd "$tmp" && apt-get download -q "$KERNEL_PKG=$KERNEL_VERSION" >&2) &&
		! { [[ $(id -u) == 0 ]] && say "retrying after apt-get update" && apt-get update -qq >&2 &&
			(cd "$tmp" && apt-get download -q "$KERNEL_PKG=$KERNEL_VERSION" >&2); }; then
		say "apt-get download failed. If apt says the version is unknown, run 'apt-get update';"
		say "if Debian no longer serves $KERNEL_VERSION, pick a current one"
		say "('apt-cache madison $KERNEL_PKG' or 'apt-cache search linux-image-6') and update $env."
		rm -rf "$tmp"
		exit 1
	fi
	mv "$tmp"/*.deb "$deb.part"
	rm -rf "$tmp"
	mv "$deb.part" "$deb"
fi

sum=$(sha256sum "$deb" | cut -d' ' -f1)
if [[ ${1:-} == --print-sha256 ]]; then
	echo "KERNEL_SHA256=$sum"
	exit 0
fi
if [[ $sum != "$KERNEL_SHA256" ]]; then
	say "sha256 mismatch for $deb: got $sum, pinned $KERNEL_SHA256 ($env)"
	say "refusing to use it; the file is removed so the next run downloads it again"
	rm -f "$deb"
	exit 1
fi

rm -rf "$dir/root" "$dir/root.part"
dpkg-deb -x "$deb" "$dir/root.part"
mv "$dir/root.part" "$dir/root"
echo "$KERNEL_SHA256" >"$dir/stamp"
say "unpacked into $dir/root"
print_paths
