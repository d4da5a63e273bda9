#!/bin/busybox sh
# /init of xvm's default guest, written into the initramfs by xvm/images/initramfs.py.
#
# Linux runs this as PID 1 with /dev/console as stdin/stdout/stderr and puts every
# unknown command-line parameter of the form name=value (name without a '.') into
# its environment (init/main.c, unknown_bootoption). xvm passes a command as
# xvmcmd=<base64 of a shell command line>: base64 so that spaces and quotes survive
# the kernel's command-line parsing.
#
# With xvmcmd: run the command, then hand its exit status (0-255) to the VMM as one
# byte written to I/O port 0xF4, the debug-exit device (QEMU's isa-debug-exit
# convention; the VMM reports the value as the command's status).
# Without: a banner and an interactive shell on the console; when the shell exits,
# the VM stops with status 0 the same way.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# On a disk root the kernel has mounted devtmpfs already (CONFIG_DEVTMPFS_MOUNT).
# (grep, not mountpoint: Debian's busybox-static has no mountpoint applet.)
grep -q "^devtmpfs /dev " /proc/mounts || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
hostname xvm
cd /root

# exit_vm STATUS: write STATUS as one byte to I/O port 0xF4. /dev/port offset 244 is
# an OUT to port 0xF4 (drivers/char/mem.c, write_port; needs CONFIG_DEVPORT). Kernels
# without /dev/port (Debian's cloud kernel) get xvmexit, xvm's ioperm+OUT program
# (xvm/images/outb.py). Test -c first: dd would create a plain file /dev/port.
exit_vm() {
    sync
    if [ -c /dev/port ]; then
        printf "\\$(printf %03o "$1")" | dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc 2>/dev/null
    else
        printf "\\$(printf %03o "$1")" | xvmexit
    fi
}

if [ -n "${xvmcmd+set}" ]; then
    if cmd=$(printf %s "$xvmcmd" | base64 -d); then
        unset xvmcmd
        # setsid + cttyhack give the command the console as its controlling tty,
        # so Ctrl-C and full-screen programs work as they would in a shell.
        setsid cttyhack sh -c "$cmd"
        status=$?
    else
        echo "xvm init: xvmcmd is not valid base64" >&2
        status=126
    fi
    exit_vm "$status"
    # Still here: no debug-exit device at 0xF4. With reboot=t this triple-faults,
    # which stops a VM started with -no-reboot (the status is lost).
    reboot -f
else
    echo "xvm: $(uname -sr) on $(nproc) CPU(s); exit the shell to stop the VM"
    export PS1='\w # '
    setsid cttyhack sh
    exit_vm 0
    # Without ACPI this only halts the CPUs, which a VMM can still see.
    poweroff -f
fi
