#!/usr/bin/env bash
# Builds the guest root filesystem as a read-only erofs image: Debian's
# Python 3.11, bash and busybox-static in a merged /usr, trimmed, every .pyc
# precompiled, the job user, and the init at /sbin/init. Same inputs, same image bytes: fixed
# timestamps, owners and UUID. Prints the image path on stdout.
#
# usage: build-rootfs.sh INIT_BINARY
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
build="${BUILD:-$here/../build}"
mkdir -p "$build"
build="$(cd "$build" && pwd)"
init="$(realpath "$1")"

# Every file gets this time: the image depends on its inputs only.
epoch=1700000000
uuid=0f1d0000-1d00-4000-8000-000000000001

debs="$build/debs"
mkdir -p "$debs"
mapfile -t packages < <(grep -v '^#' "$here/packages.txt" | grep .)
missing=()
for p in "${packages[@]}"; do
    # dpkg knows some packages it has not installed: an empty version then.
    v="$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)"
    [ -n "$v" ] || v="$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')"
    [ -n "$v" ] && [ "$v" != "(none)" ] || { echo "rootfs: no candidate for package $p" >&2; exit 1; }
    ls "$debs/${p}_"*.deb >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "rootfs: downloading ${missing[*]}" >&2
    (cd "$debs" && apt-get download -q "${missing[@]}" >&2)
fi

# The image is cached under a key over every input: the init, the package
# list and versions, this script.
key="$( { sha256sum "$init" "$here/packages.txt" "$here/baseline-init.sh" "$here/zygote.py" "$0"; ls "$debs"; } | sha256sum | cut -c1-16)"
image="$build/rootfs-$key.erofs"
if [ -f "$image" ]; then
    ln -sfn "$(basename "$image")" "$build/rootfs.erofs"
    echo "$build/rootfs.erofs"
    exit 0
fi

root="$build/rootfs.tmp"
rm -rf "$root" && mkdir -p "$root"
for deb in "$debs"/*.deb; do
    dpkg-deb -x "$deb" "$root"
done

# Trim what a job never uses: docs, man pages, locales, the test suite,
# GUI and packaging modules, static libraries, package metadata.
rm -rf "$root"/usr/share/{doc,man,info,locale,lintian,bug,gdb} "$root"/etc/{init.d,cron.daily,logrotate.d}
# iconv's converters: Python has its own codecs.
rm -rf "$root"/usr/lib/x86_64-linux-gnu/gconv
py="$root/usr/lib/python3.11"
rm -rf "$py"/{test,idlelib,tkinter,turtledemo,ensurepip,lib2to3,distutils/tests,unittest/test,config-3.11-x86_64-linux-gnu}
find "$root" -name '*.a' -delete

# A merged /usr, as in Debian 12: /bin, /sbin and /lib are links into /usr,
# so scripts find /usr/bin/env as well as /bin/sh.
for dir in bin sbin lib lib64; do
    mkdir -p "$root/usr/$dir"
    if [ -d "$root/$dir" ] && [ ! -L "$root/$dir" ]; then
        cp -a "$root/$dir/." "$root/usr/$dir/"
        rm -rf "${root:?}/$dir"
    fi
    ln -sfn "usr/$dir" "$root/$dir"
done
# Filesystem skeleton: mount points for what the init mounts, /mnt for
# scripts that mount (and must meet EPERM, not ENOENT), and /var/tmp, which
# is the writable /tmp (the image is read-only; a VM lives for one run).
mkdir -p "$root"/{proc,sys,dev,tmp,run,root,home/user,mnt,var,usr/local/bin,etc}
ln -sfn /tmp "$root/var/tmp"
# busybox supplies every applet Debian's packages here do not: /bin/sh,
# env, awk, coreutils.
busybox="$root/usr/bin/busybox"
for applet in $("$busybox" --list); do
    [ -e "$root/usr/bin/$applet" ] || [ -e "$root/usr/sbin/$applet" ] || ln -s busybox "$root/usr/bin/$applet"
done
ln -sf python3.11 "$root/usr/bin/python3"
ln -sf bash-static "$root/usr/bin/bash"
ln -sf python3 "$root/usr/bin/python"
install -m 0755 "$init" "$root/usr/sbin/init"
install -m 0755 "$here/baseline-init.sh" "$root/usr/sbin/baseline-init"
install -D -m 0644 "$here/zygote.py" "$root/usr/lib/pid1/zygote.py"
# The job users (uid 1000 up, one per user the init hands out, src/job/users.rs):
# where the init mounts each one's home, /tmp and /dev/shm, reachable by root
# only; a job sees its own through the paths they are bound over.
users=$(seq 1000 1031)
for uid in $users; do
    mkdir -p "$root/usr/lib/pid1/users/$uid"/{home/user,tmp,dev/shm}
done
chmod 0700 "$root/usr/lib/pid1/users"
# A package layer is mounted at /opt/pid1/packages (the host's second
# disk); the .pth puts it on every interpreter's sys.path.
mkdir -p "$root/opt/pid1/packages" "$root/usr/lib/python3/dist-packages"
echo /opt/pid1/packages > "$root/usr/lib/python3/dist-packages/pid1-packages.pth"

# Every job user is "user" at /home/user, as each sees its own home there.
{
    echo "root:x:0:0:root:/root:/bin/sh"
    for uid in $users; do echo "user:x:$uid:$uid:user:/home/user:/bin/sh"; done
    echo "nobody:x:65534:65534:nobody:/nonexistent:/bin/false"
} > "$root/etc/passwd"
{
    echo "root:x:0:"
    for uid in $users; do echo "user:x:$uid:"; done
    echo "nogroup:x:65534:"
} > "$root/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$root/etc/hosts"
echo sandbox > "$root/etc/hostname"

# Bytecode for the whole standard library, checked by hash rather than
# mtime: nothing to stat, nothing to rewrite, the same bytes every build.
echo "rootfs: compiling the standard library" >&2
python3.11 -m compileall -q -j "$(nproc)" --invalidation-mode unchecked-hash \
    -s "$root" -p / "$py" "$root/usr/lib/python3/dist-packages" "$root/etc/python3.11" >/dev/null 2>&1 || true
pyc="$(find "$py" -name '*.pyc' | wc -l)"
[ "$pyc" -gt 500 ] || { echo "rootfs: only $pyc .pyc files compiled" >&2; exit 1; }

find "$root" -exec touch -h -d "@$epoch" {} +
rm -f "$build"/rootfs-*.erofs
mkfs.erofs --quiet --all-root -T"$epoch" -U"$uuid" "$image.tmp" "$root" >&2
mv "$image.tmp" "$image"
ln -sfn "$(basename "$image")" "$build/rootfs.erofs"
rm -rf "$root"
echo "rootfs: $(du -h --apparent-size "$image" | cut -f1), $pyc .pyc files" >&2
echo "$build/rootfs.erofs"
