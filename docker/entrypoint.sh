#!/bin/sh
# Entry point of Herd's images: trust the corporate CA(s) mounted in $HERD_CA_DIR, then run the command.
#
# The Ollama FAQ adds a proxy's CA to the image's trust store; the images do that at build time too
# (deploy/ca/ is copied in). This adds the CAs mounted at run time without root and without a rebuild:
# a bundle of the system's CAs plus those, handed by environment to OpenSSL, requests and curl.
set -eu

ca_dir="${HERD_CA_DIR:-/etc/herd/ca}"
system_bundle="${HERD_SYSTEM_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
bundle="${HERD_CA_BUNDLE_OUT:-${TMPDIR:-/tmp}/herd-ca-bundle.pem}"

found=0
if [ -d "$ca_dir" ]; then
    : >"$bundle.tmp"
    if [ -f "$system_bundle" ]; then
        cat "$system_bundle" >>"$bundle.tmp"
    fi
    for cert in "$ca_dir"/*.crt "$ca_dir"/*.pem; do
        [ -f "$cert" ] || continue
        if ! grep -q -- "-----BEGIN CERTIFICATE-----" "$cert"; then
            echo "herd: $cert is not a PEM certificate (HERD_CA_DIR=$ca_dir holds the corporate CA)" >&2
            exit 1
        fi
        printf '\n' >>"$bundle.tmp"
        cat "$cert" >>"$bundle.tmp"
        found=$((found + 1))
    done
    if [ "$found" -gt 0 ]; then
        mv "$bundle.tmp" "$bundle"
        # HERD_CA_BUNDLE: the CAs Herd's registry client trusts on top of the system's (workers/store/registry).
        export SSL_CERT_FILE="$bundle" REQUESTS_CA_BUNDLE="$bundle" CURL_CA_BUNDLE="$bundle" HERD_CA_BUNDLE="$bundle"
    else
        rm -f "$bundle.tmp"
    fi
fi

exec "$@"
