#!/bin/sh
# /usr/local/bin/tuwen in the image: the real `tuwen`, with the config chosen the same way for every
# command, whether it comes through the entrypoint or `docker exec`: $TUWEN_CONFIG if set, else
# /data/config.toml if the volume has one, else the image's default /etc/tuwen/config.toml.
if [ -z "${TUWEN_CONFIG:-}" ]; then
  if [ -f /data/config.toml ]; then
    TUWEN_CONFIG=/data/config.toml
  else
    TUWEN_CONFIG=/etc/tuwen/config.toml
  fi
  export TUWEN_CONFIG
fi
exec /opt/tuwen/bin/tuwen "$@"
