#!/bin/sh
# Regenerates the fixtures of carapace-disk's unit tests (gpt, verity,
# verity_tree; carapace-init's stage1 and xtask's bundle tests include some
# too) with the real tools, so that the tests check our parsers against
# what those tools write and read:
#   systemd-repart 254, sfdisk (util-linux 2.38), veritysetup (cryptsetup 2.6),
#   mkfs.erofs, mkfs.ext4, mkfs.vfat, losetup.
# Run as root (systemd-repart and losetup use loop devices), from anywhere:
#   sudo sh crates/carapace-disk/testdata/make-fixtures.sh
# The outputs are committed; the tests never run these tools. A rerun gives
# new root hashes (mkfs.erofs picks a random filesystem UUID), so commit all
# outputs of one run together.
#
# Outputs (all small):
#   repart-512.head.bin        first 34 sectors (protective MBR, GPT header,
#                              128-entry array) of a 512-byte-sector disk made
#                              by systemd-repart: ESP, erofs root with
#                              Verity=data, root-verity with Verity=hash, var
#   repart-512.sfdisk.json     `sfdisk --json` of that disk
#   repart-512.roothash        the root hash systemd-repart reported
#   repart-512.verity-superblock.bin
#                              the first 512 bytes of its root-verity partition
#   repart-512.veritysetup-dump.txt
#                              `veritysetup dump` of that partition
#   repart-4096.head.bin       first 6 sectors (MBR, header, entry array) of the
#                              same disk built with --sector-size=4096
#   repart-4096.sfdisk.json    `sfdisk --json` of it, through a loop device with
#                              4096-byte sectors
#   repart-4096.roothash, repart-4096.verity-superblock.bin,
#   repart-4096.veritysetup-dump.txt
#                              as for the 512-byte disk
#   (systemd-repart 254 makes the verity block sizes equal to the sector size:
#   512-byte data and hash blocks on a 512-byte-sector disk.)
#   veritysetup-sha256.superblock.bin, veritysetup-sha256.txt
#                              superblock and report of `veritysetup format` of
#                              64 blocks of 4 KiB, SHA-256, a fixed salt
#   veritysetup-sha512.superblock.bin, veritysetup-sha512.txt
#                              the same for 16 blocks of 1 KiB, SHA-512, 512-byte
#                              hash blocks, no salt
# Each repart disk is checked with `veritysetup verify` against its root hash
# before anything is kept.
set -eu
out=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
loop=
cleanup() {
    if [ -n "$loop" ]; then losetup -d "$loop"; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The start sector of the first partition of type $2 in `sfdisk --json` file $1.
start_of() {
    python3 -c 'import json,sys
t = json.load(open(sys.argv[1]))["partitiontable"]
print([p["start"] for p in t["partitions"] if p["type"] == sys.argv[2]][0])' "$1" "$2"
}
ROOT=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709
ROOT_VERITY=2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5

# Partition definitions as image/mkosi.repart/ has them, smaller.
mkdir -p "$work/root/usr/lib" "$work/defs"
echo "fixture" > "$work/root/usr/lib/hello"
cat > "$work/defs/00-esp.conf" <<'CONF'
[Partition]
Type=esp
Format=vfat
SizeMinBytes=32M
CONF
cat > "$work/defs/10-root.conf" <<'CONF'
[Partition]
Type=root
Format=erofs
CopyFiles=/usr:/usr
Verity=data
VerityMatchKey=root
SizeMinBytes=8M
SizeMaxBytes=8M
CONF
cat > "$work/defs/11-root-verity.conf" <<'CONF'
[Partition]
Type=root-verity
Verity=hash
VerityMatchKey=root
SizeMinBytes=1M
SizeMaxBytes=1M
CONF
cat > "$work/defs/20-var.conf" <<'CONF'
[Partition]
Type=var
Format=ext4
SizeMinBytes=16M
CONF

for sector in 512 4096; do
    disk="$work/disk-$sector.raw"
    systemd-repart --empty=create --size=auto --dry-run=no --json=short \
        --sector-size="$sector" --seed=0c7e5c0e-0d6f-4b1e-9a36-91a6f1b3c2a1 \
        --definitions="$work/defs" --root="$work/root" "$disk" > "$work/repart-$sector.json"
    python3 -c 'import json,sys
print([p["roothash"] for p in json.load(open(sys.argv[1])) if p.get("roothash")][0])' \
        "$work/repart-$sector.json" > "$work/roothash-$sector"
    if [ "$sector" = 512 ]; then
        (cd "$work" && sfdisk --json "disk-$sector.raw") > "$work/sfdisk-$sector.json"
    else
        # sfdisk assumes 512-byte sectors for a file: give it a loop device.
        loop=$(losetup --show -f -b "$sector" -r "$disk")
        sfdisk --json "$loop" > "$work/sfdisk-$sector.json"
        losetup -d "$loop"
        loop=
    fi
    # Check the disk before keeping anything of it.
    data_start=$(start_of "$work/sfdisk-$sector.json" $ROOT)
    hash_start=$(start_of "$work/sfdisk-$sector.json" $ROOT_VERITY)
    dd if="$disk" of="$work/data-$sector" bs="$sector" skip="$data_start" count=$((8 * 1048576 / sector)) status=none
    dd if="$disk" of="$work/hash-$sector" bs="$sector" skip="$hash_start" count=$((1048576 / sector)) status=none
    veritysetup verify "$work/data-$sector" "$work/hash-$sector" "$(cat "$work/roothash-$sector")"

    head -c $(( (2 + 16384 / sector) * sector )) "$disk" > "$out/repart-$sector.head.bin"
    cp "$work/sfdisk-$sector.json" "$out/repart-$sector.sfdisk.json"
    cp "$work/roothash-$sector" "$out/repart-$sector.roothash"
    head -c 512 "$work/hash-$sector" > "$out/repart-$sector.verity-superblock.bin"
    (cd "$work" && veritysetup dump "hash-$sector") > "$out/repart-$sector.veritysetup-dump.txt"
done

# veritysetup format of small data files, with fixed salt and UUID.
head -c $((64 * 4096)) /dev/zero | tr '\0' 'c' > "$work/sha256.data"
truncate -s $((4 * 4096)) "$work/sha256.hash"
(cd "$work" && veritysetup format \
    --salt=5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed \
    --uuid=5f1c3c3e-7b0e-4a9e-8c55-1a2b3c4d5e6f sha256.data sha256.hash) > "$out/veritysetup-sha256.txt"
head -c 512 "$work/sha256.hash" > "$out/veritysetup-sha256.superblock.bin"

head -c $((16 * 1024)) /dev/zero | tr '\0' 'd' > "$work/sha512.data"
truncate -s 8192 "$work/sha512.hash"
(cd "$work" && veritysetup format --hash=sha512 --salt=- \
    --data-block-size=1024 --hash-block-size=512 \
    --uuid=0d5e11a5-5a1e-4000-8000-000000000512 sha512.data sha512.hash) > "$out/veritysetup-sha512.txt"
head -c 512 "$work/sha512.hash" > "$out/veritysetup-sha512.superblock.bin"

echo "fixtures written to $out"
