#!/bin/sh
# The boot benchmark's baseline (`just bench-boot`), not used by pid1: a
# busybox sh init that does the same mounts as pid1, runs the same one-line
# job and prints its output on the console, then resets the VM. The kernel
# passes `bench_job=python|sh` from its command line as an environment
# variable.
mount -t proc -o nosuid,nodev,noexec,hidepid=2 proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mkdir -p /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
mount -t tmpfs -o nosuid,nodev,noexec,mode=0755 tmpfs /run
mount -t tmpfs -o nosuid,nodev,mode=0700,uid=1000,gid=1000 tmpfs /home/user
rm -f /dev/mem /dev/kmem /dev/port
cd /home/user
if [ "$bench_job" = sh ]; then
    sh -c 'echo BENCH_OUTPUT' > /dev/console
else
    python3 -c 'print("BENCH_OUTPUT")' > /dev/console
fi
reboot -f
