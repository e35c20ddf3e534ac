#!/bin/sh
# /init of the Linux stub domain peer (busybox ash, PID 1): libxl 4.17's contract for a
# Linux stub domain (docs/misc/stubdom.txt), honoured with stock Debian 12 binaries.
# Its output (console 0, hvc0) is dom0's /var/log/xen/qemu-dm-<guest>.log; every
# `@@peer <uptime s> <step>` line says when a step ended, to see where start-up goes.
export PATH=/bin:/usr/bin:/sbin:/usr/sbin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o size=1m tmpfs /tmp
mark() {
    read -r up _ </proc/uptime
    echo "@@peer $up $*"
}
mark init
# QEMU reserves far more address space than the domain has.
echo 1 >/proc/sys/vm/overcommit_memory

# The frontends Debian builds as modules: QEMU's privcmd, event channels and grants,
# vchan-socket-proxy's grant allocation, and the guest's disks as PV disks.
# privcmd gets unrestricted=1: in a domain other than dom0, Debian's 6.1 kernels (since
# the backport of "xen/privcmd: restrict usage in unprivileged domU") restrict every
# privcmd file to the domain in xenstore's `target`, refusing IOCTL_PRIVCMD_HYPERCALL
# and a DM_OP for any other domain with EPERM. libxendevicemodel probes DM_OP with
# DOMID_INVALID, so it falls back to the refused hypercall ioctl, QEMU's
# create_ioreq_server fails, QEMU falls back to server 0 and its mapping fails with
# ENOENT ("failed to map ioreq server resources: error 2"); QEMU's xc_* calls
# (HVM params) need the hypercall ioctl too. Xen still limits this domain to its target.
for module in xen-evtchn xen-gntdev xen-gntalloc "xen-privcmd unrestricted=1" xen-blkfront; do
    # shellcheck disable=SC2086 # the module's name and its parameters
    set -- $module
    name=$1
    shift
    insmod "/lib/modules/$name.ko" "$@" || echo "@@peer insmod $name failed"
done
mark modules

# The argv libxl wrote for QEMU: one key per argument under <vm>/image/dm-argv,
# read as one argument per line (not with -R: raw values come without newlines).
target=$(xenstore-read target)
vm=$(xenstore-read "/local/domain/$target/vm")
keys=$(xenstore-list -p "$vm/image/dm-argv" | sort)
# shellcheck disable=SC2086 # one key per word
argv=$(xenstore-read $keys)
mark "argv read: guest $target, $(echo "$argv" | wc -l) arguments"

# QEMU opens its disks (/dev/xvdX) and serial ports (/dev/hvcN) at once: wait until the
# frontends (blkfront connects in the background) have made them, 10 s at most each.
for dev in $(echo "$argv" | grep -o '/dev/xvd[a-z]*\|/dev/hvc[0-9]*' | sort -u); do
    tries=0
    while [ ! -e "$dev" ] && [ $tries -lt 200 ]; do
        sleep 0.05
        tries=$((tries + 1))
    done
    [ -e "$dev" ] || echo "@@peer $dev never appeared"
done
mark "devices present"

# A restore: QEMU reads the saved state from console 2.
case "$argv" in
*'$STUBDOM_RESTORE_INCOMING_ARG'*)
    stty -F /dev/hvc2 raw -echo
    exec 3</dev/hvc2
    argv=$(echo "$argv" | sed 's/\$STUBDOM_RESTORE_INCOMING_ARG/fd:3/')
    ;;
esac

# QEMU with a QMP monitor on a unix socket, which vchan-socket-proxy hands to dom0.
# It writes device-model/<guest>/state = running itself. Its one-off ioreq server
# trace events (creation, mapping, the fallback to the default server) go to the log.
IFS='
'
set -f
# shellcheck disable=SC2086 # one argument per line
set -- $argv
set -- -trace 'enable=xen_*ioreq*' -chardev socket,id=qmp,path=/tmp/qmp.sock,server=on,wait=off \
    -mon chardev=qmp,mode=control "$@"
# An image built with XTASK_PEER_STRACE=1 has strace: QEMU's system calls on the Xen devices
# (opens, ioctls with their errnos, mappings) are logged.
if [ -x /usr/bin/strace ]; then
    /usr/bin/strace -f -e trace=ioctl,openat,mmap,munmap -P /dev/xen/privcmd -P /dev/xen/hypercall -P /dev/xen/evtchn -P /dev/xen/xenbus -P /dev/xen/gntdev /usr/libexec/xen-qemu-system-i386 "$@" </dev/null &
else
    /usr/libexec/xen-qemu-system-i386 "$@" </dev/null &
fi
qemu=$!
set +f
unset IFS
exec 3<&-
mark "qemu started (pid $qemu)"

# vchan-socket-proxy connects to the socket once a client comes: start it only once
# QEMU listens (the stock proxy gives up if that first connect fails).
while [ ! -S /tmp/qmp.sock ] && kill -0 $qemu 2>/dev/null; do
    sleep 0.05
done
mark "qmp socket"
/usr/lib/xen-4.17/bin/vchan-socket-proxy --mode=server 0 "device-model/$target/qmp-vchan" /tmp/qmp.sock </dev/null &
mark "vchan-socket-proxy started"

# For the record: when QEMU said it runs, and what memory is left.
(
    state=device-model/$target/state
    while [ "$(xenstore-read "$state" 2>/dev/null)" != running ]; do
        timeout 2 xenstore-watch -n 2 "$state" >/dev/null 2>&1
    done
    mark "state running"
    grep -E '^(MemTotal|MemFree|MemAvailable):' /proc/meminfo | tr -s ' ' | sed 's/^/@@peer meminfo /'
    grep -E '^Vm(RSS|HWM):' "/proc/$qemu/status" | tr -s ' \t' ' ' | sed 's/^/@@peer qemu /'
) &

wait $qemu
mark "qemu exited: status $?"
dmesg | tail -n 40 | sed 's/^/peer-dmesg: /'
while :; do
    sleep 3600
done
