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
# An env file may name the package's architecture (KERNEL_ARCH, default
# amd64; kernel-arm64.env: arm64). A kernel for an architecture other than
# the host's dpkg architecture is fetched with the private apt configuration
# below (suite KERNEL_SUITE, default bookworm) with that architecture as
# apt's only one, so the host needs no `dpkg --add-architecture`.
#
# An env file may name a Debian suite the host's apt sources lack
# (KERNEL_SUITE=bookworm-backports, as kernel-612.env does; KERNEL_MIRROR
# defaults to http://deb.debian.org/debian): the package is then fetched
# with a private apt configuration under the cache (its own sources.list,
# package lists and cache, and its own `apt-get update`), so the host's apt
# setup is neither read for sources nor changed. Newer Debian kernels ship
# compressed modules (.ko.xz); they are decompressed after unpacking. The
# initramfs build reads compressed modules too since issue 20 (and puts
# them in the image decompressed), so this is no longer needed; it stays
# so that a tree unpacked before looks the same as one unpacked now.
#
# Idempotent: when the unpacked tree is there and its stamp names the pinned
# sha256, it does nothing but print the paths.
#
# Output (stdout, shell-sourceable):
#   KERNEL_ARCH=amd64
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
unset KERNEL_PKG KERNEL_VERSION KERNEL_SHA256 KERNEL_MODULE_LIST KERNEL_SUITE KERNEL_MIRROR KERNEL_ARCH
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
arch=${KERNEL_ARCH:-amd64}
deb=$dir/${KERNEL_PKG}_${KERNEL_VERSION}_$arch.deb

say() { echo "fetch-kernel: $*" >&2; }

print_paths() {
	echo "KERNEL_ARCH=$arch"
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

# apt_get runs apt-get with the host's sources, or, when the env file names
# a suite or a foreign architecture, with a private configuration for that
# suite and architecture alone.
apt_opts=()
if [[ $arch != "$(dpkg --print-architecture)" ]]; then
	KERNEL_SUITE=${KERNEL_SUITE:-bookworm}
	# apt.conf(5): APT::Architecture is the native architecture and
	# APT::Architectures the list apt fetches lists for; both set to the
	# kernel's, the private lists hold that architecture's packages only.
	apt_opts=(-o "APT::Architecture=$arch" -o "APT::Architectures::=$arch")
fi
if [[ -n ${KERNEL_SUITE:-} ]]; then
	priv=$cache/kernel/apt-$KERNEL_SUITE
	[[ $arch == "$(dpkg --print-architecture)" ]] || priv=$priv-$arch
	mkdir -p "$priv/lists/partial" "$priv/cache/archives/partial"
	# The suite is signed by the Debian archive keys (debian-archive-keyring).
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${KERNEL_MIRROR:-http://deb.debian.org/debian} $KERNEL_SUITE main" >"$priv/sources.list"
	apt_opts+=(-o "Dir::Etc::SourceList=$priv/sources.list" -o "Dir::Etc::SourceParts=-"
		-o "Dir::State::Lists=$priv/lists" -o "Dir::Cache=$priv/cache")
fi
apt_get() { apt-get "${apt_opts[@]}" "$@"; }

mkdir -p "$dir"
if [[ ! -f $deb ]]; then
	say "downloading $KERNEL_PKG=$KERNEL_VERSION${KERNEL_SUITE:+ from $KERNEL_SUITE}"
	if [[ -n ${KERNEL_SUITE:-} && ! -f $priv/updated ]]; then
		# The private lists start empty: update them once (later runs find
		# the .deb in the cache and never get here).
		apt_get -qq update >&2 && touch "$priv/updated"
	fi
	tmp=$(mktemp -d "$dir/dl.XXXXXX")
	# apt-get download writes into the current directory. It runs as the
	# _apt user when it can; the warning about an unsandboxed download as
	# root is harmless here.
	# A new machine may have no (or stale) package lists: update once and
	# retry before giving up.
	if ! (cd "$tmp" && apt_get download -q "$KERNEL_PKG=$KERNEL_VERSION" >&2) &&
		! { { [[ -n ${KERNEL_SUITE:-} ]] || [[ $(id -u) == 0 ]]; } && say "retrying after apt-get update" && apt_get update -qq >&2 &&
			(cd "$tmp" && apt_get download -q "$KERNEL_PKG=$KERNEL_VERSION" >&2); }; then
		say "apt-get download failed. If apt says the version is unknown, run 'apt-get update';"
		say "if Debian no longer serves $KERNEL_VERSION, pick a current one"
		say "('apt-cache madison $KERNEL_PKG' or 'apt-cache search linux-image-6', with the same -o options"
		say "for a KERNEL_SUITE: ${apt_opts[*]}) and update $env."
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
# Compressed modules (Debian compresses them with xz since 6.10): keep the
# plain .ko only, under the same name without the suffix, and rewrite
# nothing else (the initramfs build makes its own modules.dep).
while IFS= read -r -d '' m; do
	case $m in
	*.ko.xz) command -v xz >/dev/null || { say "xz not found (apt-get install xz-utils)"; exit 1; }
		xz -dq "$m" ;;
	*.ko.zst) command -v zstd >/dev/null || { say "zstd not found (apt-get install zstd)"; exit 1; }
		zstd -dq --rm "$m" ;;
	*.ko.gz) gzip -dq "$m" ;;
	esac
done < <(find "$dir/root.part/lib/modules" -type f \( -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \) -print0)
mv "$dir/root.part" "$dir/root"
echo "$KERNEL_SHA256" >"$dir/stamp"
say "unpacked into $dir/root"
print_paths
