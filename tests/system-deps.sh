#!/bin/sh
# The third-party servers, peers and browser that the tests run for real (and, with
# AIDC_BENCH_DEPS=1, the tools the benchmarks compare aidc with).
# As root, missing Debian packages are installed; otherwise we say exactly what to install.
set -eu
need=""
check() { command -v "$1" >/dev/null 2>&1 || need="$need $2"; }
check influxd influxdb
check chromium chromium
check chromedriver chromium-driver
check snmpget snmp
check snmpwalk snmp
check snmpd snmpd
check /lib/nut/snmp-ups nut-snmp
check mbpoll mbpoll
check node nodejs
check prometheus-alertmanager prometheus-alertmanager
check npm npm
if [ "${AIDC_BENCH_DEPS:-}" = 1 ]; then  # what benchmarks/versus.py measures aidc against
  check collectd collectd-core
  check prometheus-snmp-exporter prometheus-snmp-exporter
fi
need=$(echo "$need" | tr ' ' '\n' | sort -u | tr '\n' ' ' | sed 's/^ *//;s/ *$//')
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: $need"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
  # the tests start their own snmpd on free ports; the packaged service on :161 is not wanted
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now snmpd nut-server nut-monitor nut-driver.target \
      prometheus-alertmanager collectd prometheus-snmp-exporter >/dev/null 2>&1 || true
  fi
else
  echo "missing: $need. Install them with: sudo apt-get install $need" >&2
  exit 1
fi
