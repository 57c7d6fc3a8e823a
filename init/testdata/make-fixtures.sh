#!/bin/sh
# Regenerates the fixtures of the init unit tests with the real tools
# (systemd-repart 254, veritysetup, mkfs.erofs). Run from this directory, as
# root. The outputs are committed; the tests never run the tools themselves.
set -eu
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. A disk as our image build makes it: ESP, erofs root with Verity=data,
#    its root-verity partition, and var. Keep the first 34 sectors (protective
#    MBR, GPT header, entry array) and the root hash repart computed.
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
systemd-repart --empty=create --size=auto --dry-run=no --json=short --seed=0c7e5c0e-0d6f-4b1e-9a36-91a6f1b3c2a1 \
    --definitions="$work/defs" --root="$work/root" "$work/disk.raw" > "$work/repart.json"
python3 -c 'import json,sys; print([p["roothash"] for p in json.load(open(sys.argv[1])) if p.get("roothash")][0])' \
    "$work/repart.json" > repart-disk-roothash.txt
head -c $((34 * 512)) "$work/disk.raw" > repart-disk-head.bin

# 2. A verity superblock from veritysetup format (SHA-256, 4 KiB blocks, a
#    fixed salt), with the root hash and the dm table veritysetup loads.
head -c $((64 * 4096)) /dev/zero | tr '\0' 'c' > "$work/data.img"
truncate -s $((4 * 4096)) "$work/hash.img"
veritysetup format --salt=5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed \
    --uuid=5f1c3c3e-7b0e-4a9e-8c55-1a2b3c4d5e6f "$work/data.img" "$work/hash.img" > "$work/format.txt"
cp "$work/format.txt" veritysetup-format.txt
sed -n 's/^Root hash:[[:space:]]*//p' "$work/format.txt" > verity-roothash.txt
head -c 512 "$work/hash.img" > verity-superblock.bin
cp "$work/hash.img" verity-hash.img
