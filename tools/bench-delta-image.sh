# shellcheck shell=bash
# bench-delta-image.sh: the reproducible ext4 image recipe shared by tools/bench-delta and
# tools/bench-delta-debian (sourced by both; defines functions only).

# build_image TREE IMAGE SIZE UUID EPOCH: ext4 from TREE, reproducible (fixed UUID, hash seed,
# times; the inode change times mkfs copies from the tree are set afterwards with debugfs).
build_image() {
    local tree=$1 image=$2 size=$3 uuid=$4 epoch=$5
    find "$tree" -exec touch -h -d "@$epoch" {} +
    rm -f "$image"
    truncate -s "$size" "$image"
    E2FSPROGS_FAKE_TIME=$epoch mkfs.ext4 -q -F -b 4096 -U "$uuid" -E "hash_seed=$uuid,root_owner=0:0" \
        -L rootfs -d "$tree" "$image"
    { (cd "$tree" && find . -mindepth 1) | sed "s|^\.||; s|.*|sif \"&\" ctime @$epoch|"
      echo "sif / ctime @$epoch"; } >"$image.debugfs"
    E2FSPROGS_FAKE_TIME=$epoch debugfs -w -f "$image.debugfs" "$image" >/dev/null 2>&1
    rm -f "$image.debugfs"
    e2fsck -fn "$image" >/dev/null 2>&1 || { echo "bench-delta: error: $image does not pass e2fsck" >&2; exit 1; }
}

img_used() {
    dumpe2fs -h "$1" 2>/dev/null | awk -F: '
        /^Block count/ { total = $2 } /^Free blocks/ { free = $2 } /^Block size/ { bs = $2 }
        END { printf "%.0f MiB", (total - free) * bs / 1048576 }'
}
