# Shared set-up for scripts/test and scripts/dev-stack: sourced, not run.
#
# Installs what a fresh Debian machine lacks (redis-server, Dovecot's POP3
# server, curl, and the mail clients the tests drive: mpop, fetchmail,
# getmail6) and a virtualenv in .venv with the package and its test extra.
# Idempotent: a second run installs nothing.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${POP3PROXY_VENV:-$ROOT/.venv}

ensure_debian_packages() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v dovecot >/dev/null || missing+=(dovecot-pop3d)
    command -v curl >/dev/null || missing+=(curl)
    command -v mpop >/dev/null || missing+=(mpop)
    command -v fetchmail >/dev/null || missing+=(fetchmail)
    command -v getmail >/dev/null || missing+=(getmail6)
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing Debian packages: ${missing[*]}" >&2
    # Dovecot's package would start a system-wide server; tests start their own.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
        { $sudo apt-get update -q >/dev/null &&
          $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.pop3proxy-installed"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test]"
        touch "$stamp"
    fi
}
