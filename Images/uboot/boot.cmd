# Ferry A/B slot selection for U-Boot (RAUC-compatible variables).
# Compile with: mkimage -A arm -T script -C none -d boot.cmd boot.scr   (use your -A architecture)
#
# Variables (written by Ferry on Linux, counted here):
#   BOOT_ORDER   "A B" - groups in the order they are tried
#   BOOT_A_LEFT  boot attempts left for group A, hexadecimal (0 = never boot)
#   BOOT_B_LEFT  likewise for group B
# Board settings (set them in the default environment or before running this script):
#   ferry_env_file   if set, the environment lives in this file on ${ferry_env_dev} ${ferry_env_part}
#                    (for boards whose U-Boot keeps no environment of its own: ENV_IS_NOWHERE).
#                    Otherwise the script uses U-Boot's own storage (saveenv).
#   ferry_env_dev, ferry_env_part   e.g. "virtio" and "0:1"
#   ferry_env_size   size of that file (must match the fw_env.config line), e.g. 0x4000
#   ferry_tries      tries a group gets when all have run out (default 3)
#   ferry_boot       a command that boots group ${ferry_slot}; it should add
#                    "ferry.slot=${ferry_slot}" to the kernel command line.
# The counting uses only if/elif (no setexpr, which many builds lack).

test -n "${ferry_tries}" || setenv ferry_tries 3

if test -n "${ferry_env_file}"; then
    if load ${ferry_env_dev} ${ferry_env_part} ${loadaddr} ${ferry_env_file}; then
        env import -c ${loadaddr} ${filesize}
    else
        echo "ferry: no environment file ${ferry_env_file}, using defaults"
    fi
fi

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT ${ferry_tries}
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT ${ferry_tries}

setenv ferry_slot
for BOOT_SLOT in "${BOOT_ORDER}"; do
    if test -n "${ferry_slot}"; then
        # Already chosen.
        true
    elif test "x${BOOT_SLOT}" = "xA"; then
        if test "${BOOT_A_LEFT}" != "0"; then
            setenv ferry_slot A
            if test "${BOOT_A_LEFT}" = "f"; then setenv BOOT_A_LEFT e
            elif test "${BOOT_A_LEFT}" = "e"; then setenv BOOT_A_LEFT d
            elif test "${BOOT_A_LEFT}" = "d"; then setenv BOOT_A_LEFT c
            elif test "${BOOT_A_LEFT}" = "c"; then setenv BOOT_A_LEFT b
            elif test "${BOOT_A_LEFT}" = "b"; then setenv BOOT_A_LEFT a
            elif test "${BOOT_A_LEFT}" = "a"; then setenv BOOT_A_LEFT 9
            elif test "${BOOT_A_LEFT}" = "9"; then setenv BOOT_A_LEFT 8
            elif test "${BOOT_A_LEFT}" = "8"; then setenv BOOT_A_LEFT 7
            elif test "${BOOT_A_LEFT}" = "7"; then setenv BOOT_A_LEFT 6
            elif test "${BOOT_A_LEFT}" = "6"; then setenv BOOT_A_LEFT 5
            elif test "${BOOT_A_LEFT}" = "5"; then setenv BOOT_A_LEFT 4
            elif test "${BOOT_A_LEFT}" = "4"; then setenv BOOT_A_LEFT 3
            elif test "${BOOT_A_LEFT}" = "3"; then setenv BOOT_A_LEFT 2
            elif test "${BOOT_A_LEFT}" = "2"; then setenv BOOT_A_LEFT 1
            else setenv BOOT_A_LEFT 0
            fi
        fi
    elif test "x${BOOT_SLOT}" = "xB"; then
        if test "${BOOT_B_LEFT}" != "0"; then
            setenv ferry_slot B
            if test "${BOOT_B_LEFT}" = "f"; then setenv BOOT_B_LEFT e
            elif test "${BOOT_B_LEFT}" = "e"; then setenv BOOT_B_LEFT d
            elif test "${BOOT_B_LEFT}" = "d"; then setenv BOOT_B_LEFT c
            elif test "${BOOT_B_LEFT}" = "c"; then setenv BOOT_B_LEFT b
            elif test "${BOOT_B_LEFT}" = "b"; then setenv BOOT_B_LEFT a
            elif test "${BOOT_B_LEFT}" = "a"; then setenv BOOT_B_LEFT 9
            elif test "${BOOT_B_LEFT}" = "9"; then setenv BOOT_B_LEFT 8
            elif test "${BOOT_B_LEFT}" = "8"; then setenv BOOT_B_LEFT 7
            elif test "${BOOT_B_LEFT}" = "7"; then setenv BOOT_B_LEFT 6
            elif test "${BOOT_B_LEFT}" = "6"; then setenv BOOT_B_LEFT 5
            elif test "${BOOT_B_LEFT}" = "5"; then setenv BOOT_B_LEFT 4
            elif test "${BOOT_B_LEFT}" = "4"; then setenv BOOT_B_LEFT 3
            elif test "${BOOT_B_LEFT}" = "3"; then setenv BOOT_B_LEFT 2
            elif test "${BOOT_B_LEFT}" = "2"; then setenv BOOT_B_LEFT 1
            else setenv BOOT_B_LEFT 0
            fi
        fi
    fi
done

if test -z "${ferry_slot}"; then
    # No group has tries left: give every group its tries again and start over.
    echo "ferry: no bootable slot group; resetting tries to ${ferry_tries}"
    setenv BOOT_A_LEFT ${ferry_tries}
    setenv BOOT_B_LEFT ${ferry_tries}
fi

# Persist the new counters before booting, so a crash counts as a try.
if test -n "${ferry_env_file}"; then
    env export -c -s ${ferry_env_size} ${loadaddr} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
    save ${ferry_env_dev} ${ferry_env_part} ${loadaddr} ${ferry_env_file} ${ferry_env_size}
else
    saveenv
fi

if test -z "${ferry_slot}"; then
    reset
fi

echo "ferry: booting slot group ${ferry_slot}"
run ferry_boot
