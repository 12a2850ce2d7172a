#!/bin/sh
# Writes the parts of nginx/nginx.conf that come from the environment, before nginx starts. The official
# nginx image runs every executable /docker-entrypoint.d/*.sh at start; compose.yaml mounts this there.
# A bad value stops the container with a message naming the variable, as Herd's settings do.
#
#   OLLAMA_ORIGINS       extra browser origins (comma-separated, '*' wildcards, or *): herd.d/origins.conf
#   HERD_MAX_BODY_SIZE   nginx's body limit outside /api/blobs/ (16m, 512k, ...): herd.d/limits.conf
#   HERD_METRICS_PUBLIC  serve /metrics on the public port too (1/true/yes/on): herd.d/metrics.conf
#
# The origin regexes are the ones stack/settings.py origin_regex() makes for the local stack
# (tests/deploy/test_nginx.py compares them).
set -eu

out="${HERD_NGINX_GENERATED_DIR:-/etc/nginx/herd.d}"
mkdir -p "$out"

# Ollama's built-in origins (stack/settings.py DEFAULT_ORIGINS).
DEFAULT_ORIGINS="http://localhost,https://localhost,http://localhost:*,https://localhost:*"
DEFAULT_ORIGINS="$DEFAULT_ORIGINS,http://127.0.0.1,https://127.0.0.1,http://127.0.0.1:*,https://127.0.0.1:*"
DEFAULT_ORIGINS="$DEFAULT_ORIGINS,http://0.0.0.0,https://0.0.0.0,http://0.0.0.0:*,https://0.0.0.0:*"
DEFAULT_ORIGINS="$DEFAULT_ORIGINS,app://*,file://*,tauri://*,vscode-webview://*,vscode-file://*"

# Regex metacharacters an origin pattern may hold, escaped as Python's re.escape does; '*' is the wildcard.
escape() {
    printf '%s' "$1" | sed 's/[][+.-]/\\&/g'
}

# One origin pattern as an anchored regex: a '*' port matches digits only, a '*' elsewhere no '/' or ':'.
origin_regex() {
    pattern="$1"
    if [ "$pattern" = "*" ]; then
        printf '%s\n' '^.*$'
        return
    fi
    scheme="${pattern%%://*}"
    authority="${pattern#*://}"
    scheme_re="$(escape "$scheme" | sed 's/\*/[a-z0-9+.-]*/g')"
    if [ "$authority" = "*" ]; then
        rest='[^/]*'
    else
        port_wild=""
        case "$authority" in
            *:\*) authority="${authority%:\*}" port_wild=":[0-9]+" ;;
        esac
        rest="$(escape "$authority" | sed 's/\*/[^\/:]*/g')$port_wild"
    fi
    printf '^%s://%s$\n' "$scheme_re" "$rest"
}

patterns="$DEFAULT_ORIGINS,${OLLAMA_ORIGINS:-}"
regexes=""
# The patterns hold '*': no pathname expansion while splitting them.
set -f
old_ifs="$IFS"
IFS=","
for raw in $patterns; do
    IFS="$old_ifs"
    pattern="$(printf '%s' "$raw" | tr -d ' \t')"
    [ -n "$pattern" ] || continue
    if [ "$pattern" != "*" ] && ! printf '%s\n' "$pattern" | grep -Eq '^[A-Za-z*][A-Za-z0-9+.*-]*://[][A-Za-z0-9.*_:-]*$'; then
        echo "herd: invalid value '$pattern' in OLLAMA_ORIGINS: not an origin pattern (scheme://host[:port], '*' wildcards, or *)" >&2
        exit 1
    fi
    regexes="$regexes$(origin_regex "$pattern")
"
done
IFS="$old_ifs"
printf '%s' "$regexes" | sort -u | sed 's/.*/"~*&" 1;/' >"$out/origins.conf"

size="${HERD_MAX_BODY_SIZE:-16m}"
if ! printf '%s\n' "$size" | grep -Eq '^[0-9]+[kKmMgG]?$'; then
    echo "herd: invalid value '$size' for HERD_MAX_BODY_SIZE: an nginx size such as 16m or 512k" >&2
    exit 1
fi
printf 'client_max_body_size %s;\n' "$size" >"$out/limits.conf"
printf '%s\n' "return 413 '{\"error\": \"request body too large (the limit is $size)\"}';" >"$out/too-large.conf"

case "$(printf '%s' "${HERD_METRICS_PUBLIC:-0}" | tr '[:upper:]' '[:lower:]')" in
    1 | true | yes | on)
        cat >"$out/metrics.conf" <<'CONF'
location = /metrics {
    include snippets/herd-proxy.conf;
}
CONF
        ;;
    "" | 0 | false | no | off)
        cat >"$out/metrics.conf" <<'CONF'
# Metrics are for the operator, not for every client of the public port (HERD_METRICS_PUBLIC=1).
location = /metrics {
    include snippets/herd-edge-headers.conf;
    return 404 '{"error": "not found"}';
}
CONF
        ;;
    *)
        echo "herd: invalid value '${HERD_METRICS_PUBLIC}' for HERD_METRICS_PUBLIC: 1/true/yes/on or 0/false/no/off" >&2
        exit 1
        ;;
esac
