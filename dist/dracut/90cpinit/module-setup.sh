#!/bin/bash
# cpinit's dracut module (dracut.modules(7)): `cpinit boot-step` on the
# root mounted at /sysroot, before the switch to it; docs/dracut.md.
# In a systemd-based image (dracut's default when systemd is installed:
# 98dracut-systemd) it runs as cpinit-boot-step.service, in a shell-based
# one as a pre-pivot hook.

# called by dracut
check() {
    # 0: in every image, host-only or not, once cpinit is installed: a
    # device whose userdata cpinit checkpoints must never boot an image
    # that mounts it without cpinit.
    require_binaries /usr/bin/cpinit || return 1
    return 0
}

# called by dracut
depends() {
    # Nothing: cpinit resolves its devices itself (from /sys/class/block
    # and the superblocks), talks to device-mapper without dmsetup or
    # udev rules, and mounts userdata itself.
    return 0
}

# called by dracut
installkernel() {
    # The snapshot targets (dm-snapshot brings dm-bufio), loaded by cpinit
    # with modprobe only when a boot maps userdata; -c: a kernel without
    # them fails the build rather than the boot of an update. And both of
    # userdata's filesystems (cpinit.fstype=), optional. hostonly='': also
    # in a host-only image, which would take only what the running system
    # uses now (as 00systemd does for autofs4); a boot with no checkpoint
    # uses no device-mapper.
    hostonly='' instmods -c dm-mod dm-snapshot
    hostonly='' instmods ext4 f2fs
}

# called by dracut
install() {
    inst_binary /usr/bin/cpinit
    inst_multiple modprobe
    if dracut_module_included "systemd"; then
        inst_script "$moddir/cpinit-boot-step.sh" /usr/libexec/cpinit/cpinit-boot-step
        inst_simple "$moddir/cpinit-boot-step.service" "$systemdsystemunitdir/cpinit-boot-step.service"
        # [Install] RequiredBy=initrd-fs.target
        $SYSTEMCTL -q --root "$initdir" enable cpinit-boot-step.service
    else
        # dracut.bootup(7): pre-pivot hooks run with the root mounted at
        # $NEWROOT, before the switch to it. 55: after 98usrmount's
        # mount-usr.sh (50), which mounts the root's /usr.
        inst_hook pre-pivot 55 "$moddir/cpinit-pre-pivot.sh"
    fi
}
