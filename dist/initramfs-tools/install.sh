#!/bin/sh
# Installs cpinit's initramfs-tools integration under DESTDIR (default /):
#   dist/initramfs-tools/install.sh [DESTDIR]
# The hook and the local-bottom script, where a package puts them
# (initramfs-tools(7): /usr/share/initramfs-tools; /etc/initramfs-tools is
# the administrator's). cpinit itself must be at /usr/bin/cpinit. Then
# rebuild the image: update-initramfs -u (or mkinitramfs).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
d=${1:-/}
install -D -m 755 "$here/hooks/cpinit" "$d/usr/share/initramfs-tools/hooks/cpinit"
install -D -m 755 "$here/scripts/local-bottom/cpinit" "$d/usr/share/initramfs-tools/scripts/local-bottom/cpinit"
