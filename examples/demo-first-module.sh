#!/bin/sh
# Runs inside the sandbox VM (`cargo xtask demo`): load kstack's first livepatch
# module into the running Debian kernel, watch /proc/cmdline change, disable the
# patch, watch it come back, unload the module.
set -e
m=kstack_demo
lp=/sys/kernel/livepatch/$m

step() { printf '\n--- %s\n' "$*"; }

step "running kernel: $(uname -r) ($(uname -v))"
step "/proc/cmdline before the patch:"
cat /proc/cmdline

step "insmod /root/$m.ko (finit_module; the livepatch transition starts)"
insmod /root/$m.ko
while [ "$(cat $lp/transition)" = 1 ]; do sleep 0.1; done
echo "$lp/enabled = $(cat $lp/enabled), transition = $(cat $lp/transition)"

step "/proc/cmdline with the patch applied:"
cat /proc/cmdline

step "echo 0 > $lp/enabled (the kernel reverses the patch)"
echo 0 > $lp/enabled
while [ -e $lp ] && [ "$(cat $lp/transition)" = 1 ]; do sleep 0.1; done

step "/proc/cmdline after disabling:"
cat /proc/cmdline

step "rmmod $m"
rmmod $m
grep -q "^$m " /proc/modules && { echo "still loaded"; exit 1; }
echo "unloaded; the kernel is as it was booted"
