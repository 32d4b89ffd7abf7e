#!/bin/sh
# Install the system programs the test suite runs as real peers, when missing:
# tmux (the terminal client is tested in a real terminal) and openssl
# (s_client checks the server's TLS versions), and Node.js with npm (the browser
# client's JavaScript is checked against the Python code), and redis-server (the
# scale-out tests run nodes on a real Redis), and promtool (from Debian's
# prometheus package: the metrics exposition is checked with it), and Chromium with
# its driver (the browser client is tested in a real headless Chromium). Uses the system's package
# manager (apt-get; through sudo when not root). A test that needs one of these
# fails, rather than skips, when it is absent.
set -eu
missing=""
command -v tmux >/dev/null 2>&1 || missing="$missing tmux"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
[ -x /usr/bin/chromedriver ] || missing="$missing chromium-driver"
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "tests need:$missing; install them with your system's package manager" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing:$missing" >&2
$sudo apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
