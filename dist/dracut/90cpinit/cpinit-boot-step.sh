#!/bin/sh
# ExecStart of cpinit-boot-step.service in dracut's systemd-based
# initramfs: cpinit's boot step on the root systemd mounted at /sysroot,
# then what its exit status says (docs/cli.md, "boot-step"): 0 go on; 3
# reboot now (the bootloader was switched to the other slot, or a fatal
# error under cpinit.on_fatal=reboot); 4 power off
# (cpinit.on_fatal=poweroff); 1 or anything else: fail the unit, which
# fails initrd-fs.target: emergency.target (cpinit.on_fatal=halt).
/usr/bin/cpinit boot-step --root /sysroot
rc=$?
case $rc in
0)
	exit 0
	;;
3)
	what=reboot
	;;
4)
	what=poweroff
	;;
*)
	exit "$rc"
	;;
esac
# systemctl(1): reboot and poweroff start reboot.target (poweroff.target)
# in job mode replace-irreversibly. Its shutdown.target conflicts with
# the initrd's targets and this unit (DefaultDependencies, Conflicts=), so
# their pending jobs are cancelled: initrd-fs.target and the switch to
# /sysroot never come. Userdata is not mounted. Should the request fail,
# the unit fails, and so the boot: emergency.target.
systemctl --no-block "$what"
exit "$rc"
