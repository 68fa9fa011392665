#!/bin/sh
# Installs cpinit's SWUpdate integration under DESTDIR (default /):
#   dist/swupdate/install.sh [DESTDIR]
# The pre-update command and swupdate.service's configuration. The commit
# is dist/systemd/cpinit-commit.service (docs/systemd.md); the
# integrator's own change is sw-description (sw-description.example).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
d=${1:-/}
install -D -m 755 "$here/cpinit-swupdate-preupdate" "$d/usr/libexec/cpinit/cpinit-swupdate-preupdate"
install -D -m 644 "$here/50-cpinit" "$d/etc/swupdate/conf.d/50-cpinit"
