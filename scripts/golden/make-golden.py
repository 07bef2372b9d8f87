#!/usr/bin/env python3
"""Writes tiny VMA archives for snapdump's golden-file tests.

An independent implementation of the layout in
/work/shared/reference/vma-format.md (it shares no code with the Swift
writer). For each archive it writes NAME.vma (uncompressed) and NAME.json,
a manifest with the inputs (uuid, ctime, devices, configs, cluster order,
device content as non-zero runs) and expected values (SHA-256 of each
device's bytes, snapdump's chunked content digest).

Device content: zero except for runs (offset, length, seed); byte at device
offset i inside a run is (seed + 7*i + (i >> 12)) & 0xff.

Usage: scripts/golden/make-golden.py [OUTDIR]   (default Tests/ArchiveTests/Golden)
"""
import hashlib
import json
import os
import struct
import sys

BLOCK = 4096
CLUSTER = 65536
EXTENT_HEADER = 512
SLOTS = 59
FIXED_HEADER = 12288
CHUNK = 4 * 1024 * 1024


def content(size, runs):
    b = bytearray(size)
    for off, length, seed in runs:
        for i in range(off, off + length):
            b[i] = (seed + 7 * i + (i >> 12)) & 0xFF
    return bytes(b)


def device_digest(data):
    """SHA-256 over the SHA-256s of the 4 MiB chunks (last one may be short)."""
    digests = b""
    for start in range(0, len(data), CHUNK):
        digests += hashlib.sha256(data[start:start + CHUNK]).digest()
    return hashlib.sha256(digests).hexdigest()


def pad_json(text, size):
    raw = text.encode()
    assert len(raw) <= size
    close = raw.rindex(b"}")
    return raw[:close] + b" " * (size - len(raw)) + raw[close:]


def header(uuid, ctime, configs, devices):
    """configs: [(name, bytes)], devices: [(id, name, size)] sorted by id."""
    blobs = bytearray(b"\0")  # offset 0 means "none": first blob at 1

    def blob(data):
        pos = len(blobs)
        blobs.extend(struct.pack("<H", len(data)))  # little-endian length
        blobs.extend(data)
        return pos

    cfg_ptrs = [(blob(name.encode() + b"\0"), blob(data)) for name, data in configs]
    dev_ptrs = [blob(name.encode() + b"\0") for _, name, _ in devices]
    size = (FIXED_HEADER + len(blobs) + 511) // 512 * 512
    h = bytearray(size)
    h[0:4] = b"VMA\0"
    struct.pack_into(">I", h, 4, 1)
    h[8:24] = uuid
    struct.pack_into(">q", h, 24, ctime)
    struct.pack_into(">III", h, 48, FIXED_HEADER, len(blobs), size)
    for i, (np, dp) in enumerate(cfg_ptrs):
        struct.pack_into(">I", h, 2044 + 4 * i, np)
        struct.pack_into(">I", h, 3068 + 4 * i, dp)
    for (dev_id, _, dev_size), np in zip(devices, dev_ptrs):
        struct.pack_into(">IIQ", h, 4096 + 32 * dev_id, np, 0, dev_size)
    h[FIXED_HEADER:FIXED_HEADER + len(blobs)] = blobs
    h[32:48] = hashlib.md5(bytes(h)).digest()  # md5 field is still zero here
    return bytes(h)


def extent(uuid, entries):
    """entries: [(mask, dev_id, cluster, data)] with data = stored blocks."""
    assert len(entries) <= SLOTS
    data = b"".join(e[3] for e in entries)
    assert len(data) % BLOCK == 0
    h = bytearray(EXTENT_HEADER)
    h[0:4] = b"VMAE"
    struct.pack_into(">HH", h, 4, 0, len(data) // BLOCK)
    h[8:24] = uuid
    for i, (mask, dev_id, cluster, _) in enumerate(entries):
        struct.pack_into(">Q", h, 40 + 8 * i, mask << 48 | dev_id << 32 | cluster)
    h[24:40] = hashlib.md5(bytes(h)).digest()
    return bytes(h) + data


def cluster_entry(dev_id, size, data, cluster):
    """Mask and stored blocks of one cluster: zero blocks and blocks wholly
    past the device end are left out; a partial last block is zero-padded."""
    mask, stored = 0, b""
    for j in range(16):
        start = cluster * CLUSTER + j * BLOCK
        if start >= size:
            break
        block = data[start:min(start + BLOCK, size)]
        if any(block):
            mask |= 1 << j
            stored += block + b"\0" * (BLOCK - len(block))
    return (mask, dev_id, cluster, stored)


def archive(spec):
    uuid = bytes.fromhex(spec["uuid"])
    devices = sorted((d["id"], d["name"], d["size"]) for d in spec["devices"])
    # Proxmox's vma refuses or truncates a device that is not whole sectors.
    assert all(size % 512 == 0 for _, _, size in devices), spec["name"]
    data = {d["id"]: content(d["size"], d["runs"]) for d in spec["devices"]}
    for d in spec["devices"]:
        d["sha256"] = hashlib.sha256(data[d["id"]]).hexdigest()
        d["digest"] = device_digest(data[d["id"]])
    configs = [(c["name"], c["text"].encode()) for c in spec["configs"]]
    if spec.get("mode"):
        meta = {
            "version": 1,
            "devices": [{"name": d["name"], "size": d["size"], "sha256": d["digest"], "chunkSize": CHUNK}
                        for d in sorted(spec["devices"], key=lambda d: d["id"])],
            "mode": spec["mode"],
            "downtimeMs": 12,
            "startTime": spec["ctime"],
            "snapdumpVersion": "golden",
        }
        spec["snapdumpJSON"] = json.dumps(meta, sort_keys=True, separators=(",", ":"))
        configs.append(("snapdump.json", pad_json(spec["snapdumpJSON"], spec["reserved"])))
    else:
        spec["snapdumpJSON"] = None
        spec["reserved"] = None

    # Every cluster exactly once.
    expected = sorted((dev_id, c) for dev_id, _, size in devices for c in range((size + CLUSTER - 1) // CLUSTER))
    assert sorted((d, c) for d, c, _ in spec["order"]) == expected, spec["name"]

    out = header(uuid, spec["ctime"], configs, devices)
    sizes = {dev_id: size for dev_id, _, size in devices}
    pending = []
    for dev_id, cluster, kind in spec["order"]:
        e = cluster_entry(dev_id, sizes[dev_id], data[dev_id], cluster)
        if kind == "hole":
            assert e[0] == 0, "a hole must be zero"
        pending.append(e)
        if len(pending) == SLOTS:
            out += extent(uuid, pending)
            pending = []
    out += extent(uuid, pending)  # the last extent, empty if nothing is pending
    return out


def specs():
    conf1 = "boot: order=scsi0\ncores: 1\nmemory: 512\nname: golden\nscsi0: local:100/vm-100-disk-0.raw,size=200192\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n"
    one = {
        "name": "one-device",
        "uuid": "0123456789abcdef0123456789abcdef",
        "ctime": 1700000000,
        # A raw file of 200000 bytes, in the archive as QEMU presents it: whole 512-byte sectors.
        "devices": [{"id": 1, "name": "drive-scsi0", "size": 200192,
                     # cluster 0 has zero block 5; cluster 1 two data blocks; cluster 2 is
                     # a hole; cluster 3 ends in a partial block, blocks 1-15 past the end
                     "runs": [[0, 20480, 1], [24576, 40960, 2], [CLUSTER + 8192, 8192, 11], [196608, 3392, 3]]}],
        "configs": [{"name": "qemu-server.conf", "text": conf1}],
        "order": [[1, 0, "data"], [1, 1, "data"], [1, 2, "hole"], [1, 3, "data"]],
        "mode": "snapshot",
        "reserved": 1024,
    }
    size1 = 4 * 1024 * 1024 + 70144  # content ends at + 70000, padded to whole sectors
    order2 = [[1, c, "hole" if 20 <= c < 30 else "data"] for c in range(10, 66)]
    order2 += [[2, 0, "data"]] + [[1, c, "data"] for c in range(9, -1, -1)]
    conf2 = "name: two\nscsi0: local:101/vm-101-disk-0.raw,size=%d\nscsi1: local:101/vm-101-disk-1.raw,size=12288\n" \
            "#qmdump#map:scsi0:drive-scsi0:local:raw:\n#qmdump#map:scsi1:drive-scsi1:local:raw:\n" % size1
    two = {
        "name": "two-devices",
        "uuid": "fedcba98765432100123456789abcdef",
        "ctime": 1700003600,
        "devices": [
            {"id": 1, "name": "drive-scsi0", "size": size1,
             "runs": [[3 * CLUSTER + 100, 5000, 4], [CHUNK - 4096, 8192, 5], [65 * CLUSTER, 4464, 6]]},
            {"id": 2, "name": "drive-scsi1", "size": 12288, "runs": [[0, 4096, 7], [8192, 4096, 8]]},
        ],
        "configs": [{"name": "qemu-server.conf", "text": conf2}],
        "order": order2,
        "mode": None,
    }
    size3 = 59 * CLUSTER
    three = {
        "name": "two-configs",
        "uuid": "00112233445566778899aabbccddeeff",
        "ctime": 1700007200,
        "devices": [{"id": 1, "name": "drive-virtio0", "size": size3,
                     "runs": [[0, 4096, 9], [58 * CLUSTER + 61440, 4096, 10]]}],
        "configs": [
            {"name": "qemu-server.conf", "text": "name: three\nvirtio0: local:102/vm-102-disk-0.raw,size=%d\n#qmdump#map:virtio0:drive-virtio0:local:raw:\n" % size3},
            {"name": "qemu-server.fw", "text": "[OPTIONS]\nenable: 1\n\n[RULES]\nIN ACCEPT -p tcp -dport 22\n"},
        ],
        # 59 clusters fill one extent exactly; an empty extent follows.
        "order": [[1, c, "hole" if 5 <= c < 50 else "data"] for c in range(59)],
        "mode": "stop",
        "reserved": 2048,
    }
    return [one, two, three]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "Tests", "ArchiveTests", "Golden")
    os.makedirs(outdir, exist_ok=True)
    for spec in specs():
        vma = archive(spec)
        with open(os.path.join(outdir, spec["name"] + ".vma"), "wb") as f:
            f.write(vma)
        spec.pop("mode", None)
        with open(os.path.join(outdir, spec["name"] + ".json"), "w") as f:
            json.dump(spec, f, indent=1, sort_keys=True)
            f.write("\n")
        print("%s.vma: %d bytes" % (spec["name"], len(vma)))


if __name__ == "__main__":
    main()
