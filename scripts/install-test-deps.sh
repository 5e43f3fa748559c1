#!/usr/bin/env bash
# Debian packages the tests use as real peers: ffmpeg/ffprobe (independent video reader),
# gpsd + gpsfake (a real GPS daemon), chromium + chromedriver (a real browser),
# age (an independent reader of the encrypted evidence).
set -euo pipefail
need=()
command -v ffprobe >/dev/null || need+=(ffmpeg)
command -v gpsfake >/dev/null || need+=(gpsd gpsd-clients)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# cmake and g++ build composition_interfaces for the ros2 launch kit (test_launch.py).
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v age >/dev/null || need+=(age)
# systemd-analyze verify checks the unit `bodycam install-service` writes.
command -v systemd-analyze >/dev/null || need+=(systemd)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "installing test peers: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
