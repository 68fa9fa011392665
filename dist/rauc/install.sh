#!/bin/sh
# Installs cpinit's RAUC integration under DESTDIR (default /):
#   dist/rauc/install.sh [DESTDIR]
# The backend (or, keeping RAUC's bootloader backend, the pre-install
# handler), RAUC's D-Bus policy, service and activation file (Debian's
# rauc package lacks them), and the mark-good unit, enabled. The
# integrator's own change is /etc/rauc/system.conf (system.conf.example).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
d=${1:-/}
install -D -m 755 "$here/cpinit-rauc-backend" "$d/usr/libexec/cpinit/cpinit-rauc-backend"
install -D -m 755 "$here/cpinit-rauc-preinstall" "$d/usr/libexec/cpinit/cpinit-rauc-preinstall"
install -D -m 644 "$here/de.pengutronix.rauc.conf" "$d/usr/share/dbus-1/system.d/de.pengutronix.rauc.conf"
install -D -m 644 "$here/de.pengutronix.rauc.service" "$d/usr/share/dbus-1/system-services/de.pengutronix.rauc.service"
install -D -m 644 "$here/rauc.service" "$d/usr/lib/systemd/system/rauc.service"
install -D -m 644 "$here/rauc-mark-good.service" "$d/usr/lib/systemd/system/rauc-mark-good.service"
mkdir -p "$d/etc/systemd/system/multi-user.target.wants"
ln -sf /usr/lib/systemd/system/rauc-mark-good.service "$d/etc/systemd/system/multi-user.target.wants/rauc-mark-good.service"
