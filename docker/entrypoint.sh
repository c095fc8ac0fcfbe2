#!/bin/sh
# The image's entrypoint: run tuwen as the uid/gid that should own the files in /data, then *become* it.
#
# USERMAP_UID / USERMAP_GID (default 1000/1000, as in paperless-ngx) re-number the `tuwen` user so that
# what it writes on a host folder or a NAS share belongs to the right person. `exec` at the end replaces
# this shell (and setpriv) with tuwen itself, so `docker stop`'s SIGTERM reaches tuwen's own stop path.
set -eu

if [ "$(id -u)" != 0 ]; then
  # Started as a non-root user (compose `user:`, `docker run --user`): nothing to re-map, nothing to chown.
  exec tuwen "$@"
fi

uid=${USERMAP_UID:-1000}
gid=${USERMAP_GID:-1000}
for number in "$uid" "$gid"; do
  case "$number" in
    '' | *[!0-9]*)
      echo "USERMAP_UID/USERMAP_GID 必须是数字 / must be numbers: '$uid' '$gid'" >&2
      exit 2
      ;;
  esac
done

# -o: another account may already have that number (the host's ids mean nothing inside the image).
[ "$(id -g tuwen)" = "$gid" ] || groupmod -o -g "$gid" tuwen
[ "$(id -u tuwen)" = "$uid" ] || usermod -o -u "$uid" -g "$gid" tuwen

# /data itself only, never recursively: below it may be a NAS share or years of scans owned by staff,
# and a recursive chown there is slow at best and wrong at worst. A share that refuses chown (CIFS,
# root-squashed NFS) is fine as long as its mount options already give this uid write access.
if [ "$(stat -c %u:%g /data)" != "$uid:$gid" ]; then
  chown "$uid:$gid" /data 2>/dev/null ||
    echo "注意：无法把 /data 的所有者改为 $uid:$gid / note: cannot chown /data to $uid:$gid" >&2
fi

# Created as tuwen, not as root, so it is writable by tuwen even where root is squashed on a share.
setpriv --reuid="$uid" --regid="$gid" --init-groups mkdir -p /data/inbox ||
  echo "注意：无法创建 /data/inbox / note: cannot create /data/inbox" >&2

exec setpriv --reuid="$uid" --regid="$gid" --init-groups tuwen "$@"
