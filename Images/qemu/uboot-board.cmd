# Board part of the U-Boot script on the QEMU test disk (tools/qemu-test, docs/real-boot.md).
# tools/qemu-test puts this in front of the shipped Images/uboot/boot.cmd (unchanged) and compiles
# both with mkimage into /boot.scr on the boot partition, which U-Boot's distro boot finds and runs.
# Debian's QEMU x86 U-Boot keeps no environment of its own (ENV_IS_NOWHERE): the boot state lives
# in /uboot.env on the boot partition (virtio 0:2), the file Ferry edits on Linux
# (fw_env.config: "/boot/uboot.env 0x0 0x4000"). Partition 3 is rootfs_a, 4 is rootfs_b; each
# holds /vmlinuz and /initrd.img.
setenv ferry_env_file /uboot.env
setenv ferry_env_dev virtio
setenv ferry_env_part 0:2
setenv ferry_env_size 0x4000
setenv ferry_tries 3
# ferry_boot runs after boot.cmd chose ${ferry_slot}. Hush expands a command's variables before
# the command runs, so each step that needs a value set by an earlier one is a separate `run`.
# The initramfs goes above the kernel's decompression area (16 MiB + its init_size, about 64 MiB
# for Debian's kernel), which the default ramdisk_addr_r (64 MiB) overlaps.
setenv ferry_initrd_addr 0x10000000
setenv ferry_load_A 'load virtio 0:3 ${kernel_addr_r} /vmlinuz && load virtio 0:3 ${ferry_initrd_addr} /initrd.img'
setenv ferry_load_B 'load virtio 0:4 ${kernel_addr_r} /vmlinuz && load virtio 0:4 ${ferry_initrd_addr} /initrd.img'
setenv ferry_zboot 'zboot ${kernel_addr_r} 0 ${ferry_initrd_addr} ${filesize}'
setenv ferry_boot 'setenv bootargs "console=ttyS0,115200 quiet panic=-1 ferry.slot=${ferry_slot}"; run ferry_load_${ferry_slot} && run ferry_zboot'
