#!/bin/sh
# pre-pivot hook of dracut's shell-based initramfs (no systemd in the
# image), sourced by its /init with the root mounted at $NEWROOT:
# cpinit's boot step, then what its exit status says (docs/cli.md,
# "boot-step"): 0 go on; 3 reboot now; 4 power off; 1 or anything else:
# die, dracut's fatal error (emergency shell with rd.shell, else halt).
type die > /dev/null 2>&1 || . /lib/dracut-lib.sh

/usr/bin/cpinit boot-step --root "${NEWROOT:-/sysroot}"
_cpinit_rc=$?
case $_cpinit_rc in
0) ;;
3)
    # -f: reboot(2) at once, after a sync, as dracut's own shutdown does.
    # cpinit has flushed what it wrote and mounted nothing. Should it
    # return, the boot must still not switch to the root.
    reboot -f
    die "cpinit: reboot -f failed: userdata is not mounted"
    ;;
4)
    poweroff -f
    die "cpinit: poweroff -f failed: userdata is not mounted"
    ;;
*)
    die "cpinit: the boot step failed (exit status $_cpinit_rc, the reason is above): userdata is not mounted"
    ;;
esac
unset _cpinit_rc
