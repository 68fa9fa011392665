#!/bin/sh
# Installs cpinit's dracut module under DESTDIR (default /):
#   dist/dracut/install.sh [DESTDIR]
# as /usr/lib/dracut/modules.d/90cpinit, where dracut looks for its
# modules (dracut.modules(7)). Its check() includes it in every image once
# /usr/bin/cpinit exists. Then rebuild the image: dracut -f.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
m=${1:-/}/usr/lib/dracut/modules.d/90cpinit
install -D -m 755 "$here/90cpinit/module-setup.sh" "$m/module-setup.sh"
install -D -m 644 "$here/90cpinit/cpinit-boot-step.service" "$m/cpinit-boot-step.service"
install -D -m 755 "$here/90cpinit/cpinit-boot-step.sh" "$m/cpinit-boot-step.sh"
install -D -m 755 "$here/90cpinit/cpinit-pre-pivot.sh" "$m/cpinit-pre-pivot.sh"
