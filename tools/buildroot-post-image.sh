#!/usr/bin/env bash
# Buildroot post-image script: make a signed Ferry bundle from the images in $BINARIES_DIR.
#
#   BR2_ROOTFS_POST_IMAGE_SCRIPT=".../tools/buildroot-post-image.sh"
#
# Settings (environment):
#   FERRY_COMPATIBLE  the device type (required)        FERRY_VERSION   the release, SemVer (required)
#   FERRY_CERT, FERRY_KEY  signer certificate and key   FERRY_SECURITY_VERSION  (default 0)
#   FERRY_KEYRING     if set, the bundle is verified against it
#   FERRY             the ferry binary (default: ferry on PATH)
set -euo pipefail
out=${BINARIES_DIR:?BINARIES_DIR is not set: run this as a Buildroot post-image script}
ferry=${FERRY:-ferry}
: "${FERRY_COMPATIBLE:?set FERRY_COMPATIBLE}" "${FERRY_VERSION:?set FERRY_VERSION}"
: "${FERRY_CERT:?set FERRY_CERT}" "${FERRY_KEY:?set FERRY_KEY}"

images=(--image "rootfs=$out/rootfs.ext4")
[[ -f $out/modem.bin ]] && images+=(--image "modem=$out/modem.bin")
[[ -f $out/tee.bin ]] && images+=(--image "tee=$out/tee.bin")

bundle="$out/update-$FERRY_VERSION.ferry"
"$ferry" bundle create --compatible "$FERRY_COMPATIBLE" --version "$FERRY_VERSION" \
    --security-version "${FERRY_SECURITY_VERSION:-0}" \
    --cert "$FERRY_CERT" --key "$FERRY_KEY" "${images[@]}" --output "$bundle"
if [[ -n ${FERRY_KEYRING:-} ]]; then
    "$ferry" bundle verify "$bundle" --keyring "$FERRY_KEYRING"
fi
echo "Ferry bundle: $bundle"
