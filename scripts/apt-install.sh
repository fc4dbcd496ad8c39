# Sourced by the setup scripts: apt_install PACKAGE installs one of Debian's
# packages, refreshing the package lists only when the first try fails. The
# caller defines say() for its messages.

apt_install() {
  if [ "$(id -u)" != 0 ]; then say "FAIL: $1 is missing and installing it needs root (apt-get install $1)"; exit 1; fi
  say "installing $1 from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
  }
}
