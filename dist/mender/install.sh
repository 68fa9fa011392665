#!/bin/sh
# Installs cpinit's Mender integration under DESTDIR (default /):
#   dist/mender/install.sh [DESTDIR]
# The state scripts go to /usr/share/cpinit/mender, for the Artifacts
# (Mender runs Artifact* scripts only from the Artifact: pass each to
# mender-artifact write with -s); mender-commit.service, enabled.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
d=${1:-/}
for s in ArtifactInstall_Enter_50_cpinit ArtifactCommit_Enter_50_cpinit ArtifactRollback_Enter_50_cpinit; do
	install -D -m 755 "$here/$s" "$d/usr/share/cpinit/mender/$s"
done
ln -sf ArtifactRollback_Enter_50_cpinit "$d/usr/share/cpinit/mender/ArtifactFailure_Enter_50_cpinit"
install -D -m 644 "$here/mender-commit.service" "$d/usr/lib/systemd/system/mender-commit.service"
mkdir -p "$d/etc/systemd/system/multi-user.target.wants"
ln -sf /usr/lib/systemd/system/mender-commit.service "$d/etc/systemd/system/multi-user.target.wants/mender-commit.service"
