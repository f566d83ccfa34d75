# Power cuts on a real machine: sourced by tools/qemu-test for --power-cuts N (docs/reliability.md,
# "Power cuts on a real machine"). Everything here runs inside one scenario's subshell, except
# cut_assets (once, before the scenarios) and cut_control (the control experiment).
#
# The cut. The guest's disk is served by nbdkit (file plugin) through its cache filter in
# `cache=writeback` mode: every write the guest submits stays in nbdkit's cache until the guest
# flushes (virtio-blk FLUSH → NBD_CMD_FLUSH), and only then reaches the disk file. QEMU reaches it
# over a Unix socket with its own NBD client (no nbd kernel module). A cut SIGKILLs nbdkit and QEMU
# at the same instant: what the guest had not flushed is gone, as on a disk whose volatile write
# cache loses power; what it had flushed is in the file. Killing QEMU alone would not do: with a
# raw file every write the guest submitted is already in the host's page cache, flushed or not.
# cut_control proves both (one run each way).
#
# A cut scenario is a chain of updates of one machine. The first boot installs a bundle that
# writes every slot (uncut); then each cut, of seed S:
#   boot 1  checks the machine (below), confirms the group the last update made primary, starts
#           an update of kind K (chosen by S) and is cut at the point S chooses in its progress;
#   boot 2  checks the machine again, then runs the same `ferry install`/`ferry update` again
#           unless the cut came after the switch (the new group booted); it must finish;
#   the next cut's boot 1 (or a last boot) must boot the new group, which must confirm.
# Every boot is checked: the firmware booted a complete group (each slot of the booted group has
# the SHA-256 of the image the host knows it holds, and the one Ferry recorded), the old group or
# the new one only if the update had reached its switch; the data partition mounted; `ferry status
# --json` names the group the bootloader chose, and its primary, boot order and group states are
# what the boot environment (`ferry env list`) says; the environment reads whole; GRUB is the old
# one or the new one (bios-switch, uefi-switch). One JSON line per cut (seed, kind, the point
# planned, the stage and byte offset reached, what booted after, resumed or not, the result).

readonly CUT_GROUP_DEVICES='A /dev/vda3 /dev/vda6
B /dev/vda4 /dev/vda7'
readonly CONTENTS=(1.0.0 1.1.0 1.3.0)
readonly MODEMS=(m0 m1 m2)

# The kinds of update each bootloader's chain cycles through (seed modulo their number), so that
# the short profile (seeds 1 and 2 on grub and uboot, seed 1 on bios-switch and uefi-switch)
# covers every kind. Half of the grub and uboot cuts are `update`: `ferry update` over HTTPS of a
# bundle encrypted to the guest's device key with zstd payloads (cut_bundle).
cut_kinds() { # TARGET (--kinds: those given, checked by qemu-test)
    [[ -z ${only_kinds:-} ]] || { echo "$only_kinds"; return; }
    case $1 in
        grub) echo update delta module update mixed update full update ;;
        uboot) echo update mixed update delta update module full update ;;
        bios-switch) echo full bootloader ;;
        uefi-switch) echo bootloader full ;;
    esac
}
# The stages of each kind's progress, in order (stage:slot class, from `--progress json`); the
# seed picks one, and a fraction of its bytes. "start" is the time between the command's start
# and its first progress line (TLS, manifest and signatures, planning, the target marked bad).
cut_stages() { # KIND BOOTLOADER-SLOT
    case $1 in
        full|update) echo start write:rootfs read-back:rootfs verify:modem write:modem read-back:modem switch ;;
        delta) echo start verify:rootfs write:rootfs read-back:rootfs verify:modem write:modem read-back:modem switch ;;
        module) echo start write:modem read-back:modem verify:rootfs write:rootfs read-back:rootfs switch ;;
        mixed) echo start write:rootfs read-back:rootfs write:modem read-back:modem write:carrier.json switch ;;
        bootloader) echo start "write:$2" write:rootfs read-back:rootfs verify:modem write:modem read-back:modem switch ;;
    esac
}
# How long after the chosen progress line the power goes, at most (ms): progress lines come every
# 250 ms within a stage; the start and the switch have one line each.
cut_delay_bound() { # STAGE
    case $1 in start) echo 2500 ;; switch) echo 1500 ;; *) echo 250 ;; esac
}
# A number in [0, MODULUS) from the seed and a field name: the same seed gives the same cut.
seed_number() { # SEED FIELD MODULUS
    local h
    h=$(printf 'ferry-power-cut %s %s' "$1" "$2" | sha256sum | cut -c1-12)
    echo $((16#$h % $3))
}

# ---- assets: modem images, the hashes of every image a slot may hold ---------------------------
declare -A CONTENT_SHA   # rootfs:<release>, modem:<m>, grub:<release> → SHA-256
cut_assets() {
    local m
    head -c $((modem_mib * MiB)) /dev/zero >"$work/modem-m0.img"
    for m in m1 m2; do
        # Distinct, incompressible-looking content (AES-CTR of zeros under a key per image).
        openssl enc -aes-128-ctr -nosalt -pass "pass:ferry-qemu-$m" -pbkdf2 -in "$work/modem-m0.img" \
            -out "$work/modem-$m.img" 2>/dev/null
    done
    for m in "${MODEMS[@]}"; do CONTENT_SHA[modem:$m]=$(sha256sum "$work/modem-$m.img" | cut -d' ' -f1); done
    for m in "${CONTENTS[@]}"; do CONTENT_SHA[rootfs:$m]=$(sha256sum "${SLOT_IMAGE[$m]}" | cut -d' ' -f1); done
}
content_name() { # SHA-256: the image it is (rootfs:1.1.0, modem:m2), or "unknown"
    local key
    for key in "${!CONTENT_SHA[@]}"; do
        [[ ${CONTENT_SHA[$key]} == "$1" ]] && { echo "$key"; return; }
    done
    echo unknown
}

# ---- one boot through nbdkit's write cache, read live from the serial console ------------------
# pc_boot TARGET NAME STEP [CUT-STAGES CUT-INDEX CUT-PERMILLE CUT-DELAY-MS]
# Without a cut, runs until the guest powers off. With one, cuts the power (SIGKILL to nbdkit and
# QEMU together) CUT-DELAY-MS after the first progress line at or past stage CUT-INDEX of
# CUT-STAGES (and past CUT-PERMILLE of that stage's bytes), or at once when the update ends first.
# Sets: log, boot_seconds, cut_stage, cut_bytes, cut_at ("" when not cut), boot_timed_out.
# nbd_serve FILE SOCKET: nbdkit serving FILE on SOCKET through its write cache (its cache file,
# deleted at once, in the scenario's folder); prints its process ID once it accepts connections.
nbd_serve() {
    local pidfile="$2.pid"
    rm -f "$pidfile"
    TMPDIR=$(dirname "$2") nbdkit --pidfile "$pidfile" -U "$2" --filter=cache file "$1" cache=writeback ||
        die "nbdkit could not serve $1"
    local _
    for _ in $(seq 250); do [[ -s $pidfile && -S $2 ]] && break; sleep 0.02; done
    [[ -s $pidfile ]] || die "nbdkit did not start for $1"
    cat "$pidfile"
}
CUT_SCRATCH=none   # cut_control: both (two scratch disks: one through the cache, one a raw file)
pc_boot() {
    local target=$1 name=$2 step=$3 stages=(${4:-}) index=${5:-} permille=${6:-} delay=${7:-}
    local dir="$work/$target" disk=${CUT_DISK:-$work/$1/disk.img}
    boot_number=$((boot_number + 1))
    log="$out/$target/$(printf %02d "$boot_number")-$name.log"
    rm -f "$dir/control.img" "$dir/nbd.sock" "$dir/scratch.sock" "$dir/serial.fifo"
    truncate -s $MiB "$dir/control.img"
    printf '%s\n%s\n' "$step" "$CUT_GROUP_DEVICES" | dd of="$dir/control.img" conv=notrunc status=none
    mkfifo "$dir/serial.fifo"
    local firmware=(-smp 2) scratch=()
    [[ $target == uboot ]] && firmware=(-smp 1 -bios "$UBOOT_ROM")
    [[ $target == uefi-switch ]] && firmware=(-smp 2 -bios "$OVMF")
    nbd_pid=$(nbd_serve "$disk" "$dir/nbd.sock")
    if [[ $CUT_SCRATCH == both ]]; then
        scratch_pid=$(nbd_serve "$dir/scratch-nbd.img" "$dir/scratch.sock")
        scratch=(-drive "if=none,id=scratch,format=raw,file=nbd+unix:///?socket=$dir/scratch.sock"
                 -device virtio-blk-pci,drive=scratch,addr=0x8
                 -drive "if=none,id=raw,format=raw,file=$dir/scratch-raw.img" -device virtio-blk-pci,drive=raw,addr=0x9)
    fi
    : >"$log"
    local t0=$EPOCHREALTIME
    qemu-system-x86_64 -machine pc "${accel[@]}" -m 1024 "${firmware[@]}" -display none -monitor none \
        -no-reboot -serial "file:$dir/serial.fifo" \
        -drive "if=none,id=disk,format=raw,file=nbd+unix:///?socket=$dir/nbd.sock" -device virtio-blk-pci,drive=disk,addr=0x5 \
        -drive "if=none,id=control,format=raw,readonly=on,file=$dir/control.img" -device virtio-blk-pci,drive=control,addr=0x6 \
        "${scratch[@]}" -netdev user,id=net -device virtio-net-pci,netdev=net,romfile=,addr=0x7 &
    qemu_pid=$!
    local fd line="" chunk status now armed=0 at=0 event class bytes total position i
    exec {fd}<>"$dir/serial.fifo"
    cut_stage="" cut_bytes=0 cut_at="" boot_timed_out=0
    local last="start" last_bytes=0 deadline=$(( ${t0/./} / 1000 + boot_timeout * 1000 ))
    while :; do
        status=0
        if ((at)); then IFS= read -r -t 0.01 -u "$fd" chunk || status=$?; else IFS= read -r -t 0.5 -u "$fd" chunk || status=$?; fi
        now=$(( ${EPOCHREALTIME/./} / 1000 ))
        if ((status == 0)); then
            line="$line$chunk"
            printf '%s\n' "$line" >>"$log"
            line=${line//$'\r'/}
            if [[ $line == "FERRY-QEMU: update begin"* && -n $index ]]; then
                armed=1
                ((index > 0)) || at=$((now + delay))
            elif ((armed)) && [[ $line == "{"*'"stage":"'* ]]; then
                event=$(sed -n 's/.*"stage":"\([a-z-]*\)".*/\1/p' <<<"$line")
                class=$(sed -n 's/.*"slot":"\([^"]*\)".*/\1/p' <<<"$line")
                class=${class%_[ab]}
                bytes=$(sed -n 's/.*"bytesDone":\([0-9]*\).*/\1/p' <<<"$line")
                total=$(sed -n 's/.*"bytesTotal":\([0-9]*\).*/\1/p' <<<"$line")
                last="$event${class:+:$class}" last_bytes=${bytes:-0}
                position=-1
                for i in "${!stages[@]}"; do [[ ${stages[$i]} == "$last" ]] && position=$i; done
                [[ $event != done ]] || position=${#stages[@]}
                if ((at == 0 && (position > index || (position == index && ${bytes:-0} * 1000 >= permille * ${total:-0})))); then
                    at=$((now + delay))
                fi
            elif [[ $line == "FERRY-QEMU: control written" && $CUT_SCRATCH == both ]]; then
                last="control" at=$now
            elif ((armed)) && [[ $line == "FERRY-QEMU: update exit="* ]]; then
                # The update ended before the point chosen (a delay past its last line): the power
                # goes now, before the guest powers off by itself.
                last="after-exit"
                ((at && at <= now)) || at=$now
            fi
            line=""
        elif ((status > 128)); then
            line="$line$chunk"
        fi
        if ((at && now >= at)); then
            kill -KILL "$nbd_pid" "$qemu_pid" 2>/dev/null || true
            cut_stage=$last cut_bytes=$last_bytes cut_at=$(elapsed "$t0")
            [[ -z $line ]] || printf '%s\n' "$line" >>"$log"
            break
        fi
        if ((status != 0 && status <= 128)) || ! kill -0 "$qemu_pid" 2>/dev/null; then
            # QEMU ended: what it wrote before is still in the pipe.
            while IFS= read -r -t 0.05 -u "$fd" chunk; do printf '%s\n' "$line$chunk" >>"$log"; line=""; done
            [[ -z $line$chunk ]] || printf '%s\n' "$line$chunk" >>"$log"
            break
        fi
        if ((now > deadline)); then
            boot_timed_out=1
            echo "   boot $boot_number ($name): no power-off within ${boot_timeout}s" >&2
            kill -KILL "$qemu_pid" 2>/dev/null || true
            break
        fi
    done
    exec {fd}<&-
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=""
    # The guest synced before it powered off: whatever it had not flushed is lost here too.
    kill -KILL "$nbd_pid" ${scratch_pid:-} 2>/dev/null || true
    nbd_pid="" scratch_pid=""
    rm -f "$dir/serial.fifo"
    boot_seconds=$(elapsed "$t0")
}

# ---- checks on the last boot's console ----------------------------------------------------------
# (Pipelines read their input to the end: under pipefail, a `head` or `grep -q` that stops early
# would kill the writer with SIGPIPE and fail the pipeline.)
first_line() { awk 'NR == 1'; }
report_block() { # BEGIN-MARKER END-MARKER-PREFIX: the lines between them
    console | sed -n "/^FERRY-QEMU: $1\$/,/^FERRY-QEMU: $2/p" | sed '1d;$d'
}
env_get() { report_block "env begin" "env exit=" | sed -n "s/^$1=//p" | tail -n 1; }
fail() { echo "   FAIL: $*" >&2; failures=$((failures + 1)); }
# The groups the environment lets boot, in boot order (Ferry's reading: GRUB X_OK=1, U-Boot
# BOOT_X_LEFT>0, each only when in the order).
env_bootable() {
    local order group value
    if [[ $target == uboot ]]; then order=$(env_get BOOT_ORDER); else order=$(env_get ORDER); fi
    for group in $order; do
        if [[ $target == uboot ]]; then
            value=$(env_get "BOOT_${group}_LEFT")
            [[ $value =~ ^[0-9]+$ ]] && ((value > 0)) && echo "$group"
        else
            [[ $(env_get "${group}_OK") == 1 ]] && echo "$group"
        fi
    done
    return 0
}
# pc_check "ALLOWED-GROUPS" "ALLOWED-GRUBS" CUT(0|1): the machine booted one of the groups, whole
# (EXP_ROOT, EXP_MODEM: the image each group must hold), and Ferry agrees with its environment.
# Sets pc_booted.
pc_check() {
    local allowed=$1 grubs=$2 was_cut=$3 chosen device hash want name status order
    pc_booted=$(console | sed -n 's/^FERRY-QEMU: booted=\([AB]\) .*/\1/p' | first_line)
    chosen=$(console | sed -n 's/.*ferry: booting slot group \([AB]\)$/\1/p' | first_line)
    if [[ -z $pc_booted ]]; then fail "no group booted ($log)"; return 1; fi
    [[ " $allowed " == *" $pc_booted "* ]] || fail "group $pc_booted booted; only $allowed may"
    [[ $chosen == "$pc_booted" ]] || fail "the bootloader chose '${chosen:-nothing}', the kernel says $pc_booted"
    if [[ -n $grubs ]]; then
        name=$(console | grep -ao 'FERRY-GRUB-CORE-[0-9.]*' | first_line | sed 's/FERRY-GRUB-CORE-//' || true)
        [[ " $grubs " == *" $name "* ]] || fail "GRUB ${name:-(none)} ran; only $grubs may (the bootloader is torn or wrong)"
    fi
    local devices=(${CUT_GROUP_DEVICES#*"$pc_booted "})
    devices=("${devices[@]:0:2}")
    for device in "${devices[@]}"; do
        hash=$(console | sed -n "s#^FERRY-QEMU: slot $device sha256=\\([0-9a-f]*\\)\$#\\1#p" | first_line)
        if [[ $device == "${devices[0]}" ]]; then want=rootfs:${EXP_ROOT[$pc_booted]:-none}; else want=modem:${EXP_MODEM[$pc_booted]:-none}; fi
        [[ -n $hash ]] || { fail "no hash of $device"; continue; }
        [[ $hash == "${CONTENT_SHA[$want]:-}" ]] ||
            fail "$device of group $pc_booted holds $(content_name "$hash") (sha256 ${hash:0:12}…), not $want"
        # What Ferry recorded for the slot (nothing for the factory image).
        local recorded
        recorded=$(report_block "status-json begin" "status-json exit=" | jq -r --arg g "$pc_booted" --arg d "$device" \
            '.groups[] | select(.bootname == $g) | .slots[] | select(.location == $d) | .installed.sha256 // empty' 2>/dev/null)
        [[ -z $recorded || $recorded == "$hash" ]] || fail "$device holds sha256 ${hash:0:12}…, Ferry recorded ${recorded:0:12}…"
    done
    expect "boot-check exited 0" "^FERRY-QEMU: boot-check exit=0\$" || true
    expect "the data partition mounted" "^FERRY-QEMU: data mounted 1\$" || true
    expect "ferry env list read the environment" "^FERRY-QEMU: env exit=0\$" || true
    expect "ferry status --json succeeded" "^FERRY-QEMU: status-json exit=0\$" || true
    ((was_cut)) || expect "the guest powered off" "^FERRY-QEMU: power-off\$" || true
    # ferry status against the environment.
    status=$(report_block "status-json begin" "status-json exit=")
    if ! jq -e . >/dev/null 2>&1 <<<"$status"; then fail "ferry status --json printed no JSON"; return 0; fi
    local got expected
    got=$(jq -r '.booted // "none"' <<<"$status")
    [[ $got == "$pc_booted" ]] || fail "ferry status says group $got is booted; the bootloader booted $pc_booted"
    got=$(jq -r '.bootError // ""' <<<"$status")
    [[ -z $got ]] || fail "ferry status could not read the boot environment: $got"
    local bootable
    bootable=$(env_bootable | tr '\n' ' ')
    expected=${bootable%% *}
    got=$(jq -r '.primary // "none"' <<<"$status")
    [[ $got == "${expected:-none}" ]] || fail "ferry status says primary $got; the environment boots ${expected:-nothing} next"
    if [[ $target == uboot ]]; then order=$(env_get BOOT_ORDER); else order=$(env_get ORDER); fi
    got=$(jq -r '(.bootOrder // []) | join(" ")' <<<"$status")
    [[ $got == "$order" ]] || fail "ferry status says boot order '$got'; the environment '$order'"
    local group state
    while read -r group state; do
        if [[ " $bootable " == *" $group "* ]]; then
            [[ $state != bad ]] || fail "ferry status says group $group is bad; the environment lets it boot"
        else
            [[ $state == bad ]] || fail "ferry status says group $group is $state; the environment does not let it boot"
        fi
    done < <(jq -r '.groups[] | "\(.bootname) \(.boot // "unknown")"' <<<"$status")
}

# ---- the bundles of a chain, made as it goes (the version grows with every update) --------------
# cut_bundle KIND VERSION NEW-ROOT NEW-MODEM NEW-GRUB BOOTED-ROOT: prints the URL the guest uses.
cut_bundle() {
    local kind=$1 version=$2 dir="$work/server/www/$target/$2" args=()
    mkdir -p "$dir"
    case $kind in
        full|update) args=(--image rootfs="${SLOT_IMAGE[$3]}") ;;
        delta) args=(--image rootfs="${SLOT_IMAGE[$3]}" --delta-from rootfs="${SLOT_IMAGE[$6]}") ;;
        module) args=(--image modem="$work/modem-$4.img") ;;
        prepare) args=(--image rootfs="${SLOT_IMAGE[$3]}" --image modem="$work/modem-$4.img") ;;
        mixed)
            printf '{ "carrier": "ferry-qemu", "release": "%s" }\n' "$version" >"$dir/carrier.json"
            args=(--image rootfs="${SLOT_IMAGE[$3]}" --image modem="$work/modem-$4.img" --settings carrier.json="$dir/carrier.json") ;;
        bootloader)
            if [[ $target == bios-switch ]]; then
                args=(--bootloader bootloader="$work/core-$5.img" --bootloader-strategy mbr-switch)
            else
                args=(--bootloader esp="$work/esp-$5.img" --bootloader-strategy gpt-switch)
            fi
            args+=(--boots-groups A,B --image rootfs="${SLOT_IMAGE[$3]}") ;;
    esac
    # The HTTPS update and the delta are encrypted to the guest's device key (docs/encryption.md).
    if [[ $(cut_encrypted "$kind") == true ]]; then args+=(--encrypt-to "$work/device.pem"); fi
    # The HTTPS update has zstd payloads, the others are stored uncompressed (quick to make).
    if [[ $(cut_codec "$kind") == zstd ]]; then args+=(--codec zstd --level 3); else args+=(--no-compress); fi
    "$ferry" bundle create --compatible ferry-qemu-x86_64 --version "$version" --cert "$pki/signer1.pem" \
        --key "$pki/signer1.key" "${args[@]}" --output "$dir/ferry-qemu-$version.ferry" >/dev/null ||
        die "ferry bundle create ($kind $version) failed"
    if [[ $kind == update ]]; then
        "$ferry" bundle index -o "$dir/index.json" --serial "${version##*.}" --cert "$pki/signer1.pem" \
            --key "$pki/signer1.key" "$dir/ferry-qemu-$version.ferry" >/dev/null || die "ferry bundle index failed"
        echo "$guest_url/$target/$version/index.json"
    else
        echo "$guest_url/$target/$version/ferry-qemu-$version.ferry"
    fi
}
cut_encrypted() { # KIND: whether its bundles are encrypted
    case $1 in update|delta) echo true ;; *) echo false ;; esac
}
cut_codec() { # KIND: the codec of its payloads (none: stored as they are)
    case $1 in update) echo zstd ;; *) echo none ;; esac
}
pick() { # CANDIDATES… -- TAKEN…: the first candidate not taken
    local candidates=() taken=" " c
    while (($#)) && [[ $1 != -- ]]; do candidates+=("$1"); shift; done
    shift
    taken+="$* "
    for c in "${candidates[@]}"; do [[ $taken == *" $c "* ]] || { echo "$c"; return; }; done
}
other() { if [[ $1 == A ]]; then echo B; else echo A; fi; }

# The state of the machine as the host knows it: which image each group holds, the group booted
# next, whether it is on trial, GRUB's regions (bios-switch, uefi-switch), the settings pending.
declare -A ROOT MODEM GRUB_IN EXP_ROOT EXP_MODEM
expect_confirmation() { # when the booted group was on trial: it confirmed, with its settings
    ((trial)) || return 0
    expect "group $pc_booted confirmed" "Booted group $pc_booted; health check passed; confirmed\\." || true
    if [[ -n $pending_settings ]]; then
        expect "the settings of $pending_settings are active" \
            "^FERRY-QEMU: settings carrier.json .*\"release\": \"$pending_settings\"" || true
        pending_settings=""
    fi
    trial=0
}

cut_scenario() { # TARGET
    local target=$1 t0=$EPOCHREALTIME bl="" seed i cycle=0 trial=0 pending_settings="" primary=A gsel=1
    local cuts=${CUTS[$1]:-$cuts_default}
    [[ $target == bios-switch ]] && bl=bootloader
    [[ $target == uefi-switch ]] && bl=esp
    mkdir -p "$out/$target" "$work/server/www/$target"
    build_disk "$target" "$work/$target/disk.img"
    echo "== $target: $cuts power cut(s), seeds $first_seed-$((first_seed + cuts - 1)), $(disk_mib "$target") MiB disk ($(elapsed "$t0") s to build)"
    boot_number=0 failures_before=$failures
    ROOT=([A]=1.0.0 [B]=none) MODEM=([A]=m0 [B]=m0) GRUB_IN=([1]=1.0.0 [2]=none)
    ((control == 0)) || cut_control || return 1
    grubs() { [[ -z $bl ]] || echo "${GRUB_IN[$gsel]}"; }

    # The first update writes every slot of group B, uncut: from then on every member has a record.
    cycle=1
    local version=2.0.$cycle root modem url
    root=$(pick "${CONTENTS[@]}" -- "${ROOT[A]}" "${ROOT[B]}")
    modem=$(pick "${MODEMS[@]}" -- "${MODEM[A]}" "${MODEM[B]}")
    url=$(cut_bundle prepare "$version" "$root" "$modem" "" "")
    EXP_ROOT=([A]=${ROOT[A]}) EXP_MODEM=([A]=${MODEM[A]})
    pc_boot "$target" "prepare-$version" "powercut install $url"
    pc_check A "$(grubs)" 0 && expect "the first update installed" "^FERRY-QEMU: update exit=0\$" || true
    report "A (factory) installs $version (rootfs $root, modem $modem) into B, uncut" || return 1
    ROOT[B]=$root MODEM[B]=$modem primary=B trial=1
    rm -rf "${work:?}/server/www/$target/$version"

    for ((i = 0; i < cuts; i++)); do
        cut_once $((first_seed + i)) || return 1
    done

    EXP_ROOT=([$primary]=${ROOT[$primary]}) EXP_MODEM=([$primary]=${MODEM[$primary]})
    pc_boot "$target" "last" "powercut check"
    pc_check "$primary" "$(grubs)" 0 && expect_confirmation || true
    report "$primary boots and confirms the last update" || return 1
    echo "== $target: $cuts cut(s), $boot_number boots in $(elapsed "$t0") s, $failures check(s) failed; console logs in $out/$target/"
    ((failures == 0))
}

cut_once() { # SEED
    local seed=$1 kinds kind booted target_group root modem grub="" url version action stages index permille delay
    kinds=($(cut_kinds "$target"))
    kind=${kinds[seed % ${#kinds[@]}]}
    booted=$primary target_group=$(other "$primary")
    cycle=$((cycle + 1)) version=2.0.$cycle
    root=$(pick "${CONTENTS[@]}" -- "${ROOT[A]}" "${ROOT[B]}")
    modem=${MODEM[$booted]}
    case $kind in
        module) root=${ROOT[$booted]} modem=$(pick "${MODEMS[@]}" -- "${MODEM[A]}" "${MODEM[B]}") ;;
        mixed) modem=$(pick "${MODEMS[@]}" -- "${MODEM[A]}" "${MODEM[B]}") ;;
        bootloader) grub=$(pick "${CONTENTS[@]}" -- "${GRUB_IN[1]}" "${GRUB_IN[2]}") ;;
    esac
    url=$(cut_bundle "$kind" "$version" "$root" "$modem" "$grub" "${ROOT[$booted]}")
    action=install
    [[ $kind != update ]] || action=update
    stages=($(cut_stages "$kind" "$bl"))
    index=$(seed_number "$seed" stage ${#stages[@]})
    permille=$(seed_number "$seed" fraction 1000)
    delay=$(seed_number "$seed" delay "$(cut_delay_bound "${stages[$index]}")")
    local planned="${stages[$index]} ≥$((permille / 10)).$((permille % 10))% +${delay} ms"

    # Boot 1: the machine as the last update left it; then the update, cut.
    EXP_ROOT=([$booted]=${ROOT[$booted]}) EXP_MODEM=([$booted]=${MODEM[$booted]})
    pc_boot "$target" "cut-$seed-$kind" "powercut $action $url" "${stages[*]}" "$index" "$permille" "$delay"
    pc_check "$booted" "$(grubs)" 1 && expect_confirmation || true
    [[ -n $cut_at ]] || fail "the power was never cut (the update did not start?)"
    if console | grep '^FERRY-QEMU: update exit=[1-9]' >/dev/null; then fail "the update failed before the cut: $(console | grep '^ferry: error' | first_line)"; fi
    local stage=$cut_stage bytes=$cut_bytes at=${cut_at:-0} after="" rerun=no resumed=no
    if ! report "seed $seed: $booted installs $kind $version; cut: $stage at $bytes B (${at} s)"; then
        record_cut failed
        return 1
    fi

    # Boot 2: the old group, or the new one only if the update had reached its switch; the same
    # command again, unless the new group booted.
    local allowed=$booted allowed_grubs
    [[ $stage != switch && $stage != done && $stage != after-exit ]] || allowed="$booted $target_group"
    allowed_grubs=$(grubs)
    [[ $kind != bootloader || $stage == start ]] || allowed_grubs+=" $grub"
    EXP_ROOT=([$booted]=${ROOT[$booted]} [$target_group]=$root) EXP_MODEM=([$booted]=${MODEM[$booted]} [$target_group]=$modem)
    pc_boot "$target" "after-cut-$seed" "powercut $action $url $target_group"
    [[ $kind != mixed ]] || pending_settings=$version
    pc_check "$allowed" "$allowed_grubs" 0 || true
    after=$pc_booted
    if [[ $after == "$target_group" ]]; then
        trial=1
        expect_confirmation || true
        expect "nothing run again" "^FERRY-QEMU: update skipped: group $target_group booted\$" || true
        trial=0
    else
        rerun=yes
        expect "the update run again finished" "^FERRY-QEMU: update exit=0\$" || true
        console | grep "Resumed and installed" >/dev/null && resumed=yes
        trial=1
    fi
    ROOT[$target_group]=$root MODEM[$target_group]=$modem primary=$target_group
    if [[ $kind == bootloader ]]; then
        gsel=$((3 - gsel))
        GRUB_IN[$gsel]=$grub
    fi
    local result=ok
    report "seed $seed: after the cut $after booted; run again: $rerun, resumed: $resumed" || result=failed
    record_cut "$result"
    rm -rf "${work:?}/server/www/$target/$version"
    [[ $result == ok ]]
}
record_cut() { # RESULT: the cut's JSON line (variables of cut_once)
    jq -nc --arg target "$target" --argjson seed "$seed" --arg kind "$kind" --arg version "$version" \
        --arg planned "$planned" --arg stage "$stage" --argjson bytes "${bytes:-0}" --arg at "$at" \
        --arg old "$booted" --arg new "$target_group" --arg after "$after" --arg rerun "$rerun" \
        --arg resumed "$resumed" --arg result "$1" --arg commit "$commit" --arg log "${log#"$root"/}" \
        --argjson encrypted "$(cut_encrypted "$kind")" --arg codec "$(cut_codec "$kind")" \
        '{kind: "power-cut", target: $target, seed: $seed, update: $kind, encrypted: $encrypted, codec: $codec, version: $version, planned: $planned,
          cut: {stage: $stage, bytes: $bytes, seconds: ($at | tonumber)}, oldGroup: $old, newGroup: $new,
          bootedAfter: $after, ranAgain: ($rerun == "yes"), resumed: ($resumed == "yes"),
          result: $result, commit: $commit, log: $log}' >>"$results"
}

# ---- the control experiment: flushed data survives a cut, unflushed data does not ---------------
# On a copy of the disk, with two scratch disks (one through nbdkit's cache like the real disk, one
# a raw file): the guest writes one block on each and flushes it, writes another with O_DIRECT
# (into the disk's cache, never flushed) and says so; the host cuts at once. Through the cache the
# flushed block must be in the scratch file and the other must not; on the raw file (QEMU killed
# alone) both are there, which is why a raw file cannot model a power cut.
cut_control() {
    local dir="$work/$target" nonce mode flushed unflushed ok=1
    nonce=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
    cp --sparse=always "$dir/disk.img" "$dir/control-disk.img"
    rm -f "$dir/scratch-nbd.img" "$dir/scratch-raw.img"
    truncate -s $MiB "$dir/scratch-nbd.img" "$dir/scratch-raw.img"
    CUT_DISK="$dir/control-disk.img" CUT_SCRATCH=both pc_boot "$target" "control" "powercut control $nonce"
    [[ $cut_stage == control ]] || { fail "control: the guest never said it had written"; ok=0; }
    for mode in nbd raw; do
        flushed=$(head -c 512 "$dir/scratch-$mode.img" | grep -ac "FLUSHED-$nonce" || true)
        unflushed=$(tail -c +4097 "$dir/scratch-$mode.img" | head -c 512 | grep -ac "UNFLUSHED-$nonce" || true)
        if [[ $mode == nbd ]]; then
            ((flushed == 1 && unflushed == 0)) || { fail "control through nbdkit's cache: flushed block ${flushed}×, unflushed ${unflushed}× (want 1, 0)"; ok=0; }
        else
            ((flushed == 1 && unflushed == 1)) || { fail "control on a raw file: flushed ${flushed}×, unflushed ${unflushed}× (want 1, 1)"; ok=0; }
        fi
        printf '   control %-4s the block written and flushed: %s; the block written, not flushed: %s\n' "$mode" \
            "$( ((flushed)) && echo kept || echo lost)" "$( ((unflushed)) && echo kept || echo lost)"
        jq -nc --arg mode "$mode" --argjson flushed "$flushed" --argjson unflushed "$unflushed" --arg commit "$commit" \
            --arg target "$target" '{kind: "power-cut-control", target: $target, disk: $mode, flushedKept: ($flushed == 1),
              unflushedKept: ($unflushed == 1), commit: $commit}' >>"$results"
    done
    rm -f "$dir/control-disk.img" "$dir/scratch-nbd.img" "$dir/scratch-raw.img"
    ((ok))
}
