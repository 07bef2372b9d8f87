#!/usr/bin/env python3
"""Writes the VMA fuzzer's seed corpus: small crafted archives, most of them
malformed in one way each, so that the fuzzer starts next to every check of
the reader. Uses the independent writer of scripts/golden/make-golden.py.

Usage: Fuzz/VMAReaderFuzz/make-seeds.py [OUTDIR]   (default: the seeds/ directory beside this script)
"""
import gzip
import hashlib
import importlib.util
import json
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("golden", os.path.join(HERE, "..", "..", "scripts", "golden", "make-golden.py"))
g = importlib.util.module_from_spec(spec)
spec.loader.exec_module(g)

UUID = bytes.fromhex("5eed5eed5eed5eed5eed5eed5eed5eed")
CONF = b"name: seed\nscsi0: local:100/vm-100-disk-0.raw,size=192K\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n"


def meta(devices, mode="snapshot", digest=None):
    return json.dumps({"version": 1, "mode": mode, "downtimeMs": 1, "startTime": 0, "snapdumpVersion": "seed",
                       "devices": [{"name": n, "size": s, "chunkSize": g.CHUNK,
                                    "sha256": digest or "ab" * 32} for n, s in devices]},
                      sort_keys=True, separators=(",", ":")).encode()


def reseal(h):
    h = bytearray(h)
    h[32:48] = bytes(16)
    h[32:48] = hashlib.md5(bytes(h)).digest()
    return bytes(h)


def with_size(h, dev_id, size):
    h = bytearray(h)
    struct.pack_into(">Q", h, 4096 + 32 * dev_id + 8, size)
    return reseal(h)


def renamed(h, old, new):
    """The last occurrence: device names come after the config blobs, which may mention them."""
    assert len(old) == len(new)
    i = h.rindex(old)
    return reseal(h[:i] + new + h[i + len(old):])


def data_cluster(dev_id, cluster, fill=1, mask=0b1):
    blocks = b"".join(bytes([fill + j]) * g.BLOCK for j in range(16) if mask & (1 << j))
    return (mask, dev_id, cluster, blocks)


def seeds():
    out = {}
    size = 3 * g.CLUSTER
    devs = [(1, "drive-scsi0", size)]
    content = bytearray(size)
    content[0:g.BLOCK] = bytes([1]) * g.BLOCK
    content[2 * g.CLUSTER + 5 * g.BLOCK:2 * g.CLUSTER + 6 * g.BLOCK] = bytes([9]) * g.BLOCK
    good_meta = meta([("drive-scsi0", size)], digest=g.device_digest(bytes(content)))
    head = g.header(UUID, 1700000000, [("qemu-server.conf", CONF), ("snapdump.json", good_meta)], devs)
    plain_head = g.header(UUID, 1700000000, [("qemu-server.conf", CONF)], devs)
    entries = [g.cluster_entry(1, size, bytes(content), c) for c in (2, 0, 1)]
    body = g.extent(UUID, entries) + g.extent(UUID, [])
    out["valid"] = head + body
    out["valid-no-metadata"] = plain_head + body
    out["valid.zst"] = subprocess.run(["zstd", "-q", "-c", "-3"], input=head + body, capture_output=True, check=True).stdout
    out["valid.gz"] = gzip.compress(head + body, mtime=0)
    out["digest-mismatch"] = g.header(UUID, 1, [("qemu-server.conf", CONF), ("snapdump.json", meta([("drive-scsi0", size)]))], devs) + body
    out["truncated"] = (head + body)[:len(head) + 700]
    out["duplicate-cluster"] = head + g.extent(UUID, entries + [entries[0]])
    out["missing-cluster"] = head + g.extent(UUID, entries[:2])
    out["block-past-end"] = g.header(UUID, 1, [], [(1, "drive-scsi0", 4608)]) + g.extent(UUID, [data_cluster(1, 0, mask=0b111)])
    out["unknown-device"] = head + g.extent(UUID, [data_cluster(7, 0)])
    for name, s in [("size-max", 2 ** 64 - 1), ("size-2p63", 2 ** 63), ("size-2p50", 2 ** 50), ("size-2p48", 2 ** 48)]:
        out[name] = with_size(plain_head, 1, s) + g.extent(UUID, [data_cluster(1, 2 ** 24), data_cluster(1, 0)]) + g.extent(UUID, [])
    many = [(i, "drive-scsi%d" % i, 2 ** 40) for i in range(1, 255)]
    out["254-devices-1TiB"] = g.header(UUID, 1, [("qemu-server.conf", CONF), ("snapdump.json", meta([(n, s) for _, n, s in many]))], many) \
        + g.extent(UUID, [data_cluster(i, 0, mask=1 if i == 1 else 0) for i in range(1, 60)])
    out["name-newline"] = renamed(plain_head, b"drive-scsi0", b"drive\nDEV:0") + body
    out["name-slash"] = renamed(plain_head, b"drive-scsi0", b"../../etc/x") + body
    out["config-name-control"] = renamed(plain_head, b"qemu-server.conf", b"qemu\x1b[2Jsrv.conf") + body
    out["metadata-mode-newline"] = g.header(UUID, 1, [("qemu-server.conf", CONF),
                                                       ("snapdump.json", meta([("drive-scsi0", size)], mode="stop\nDEV: x"))], devs) + body
    out["metadata-not-json"] = g.header(UUID, 1, [("snapdump.json", b"{\"version\":1,")], devs) + body
    out["ctime-min"] = reseal(bytearray(plain_head[:24]) + struct.pack(">q", -2 ** 63) + plain_head[32:]) + body
    # Clusters of 12 chunks dealt round-robin: more chunks open at once than the reader buffers.
    big = 12 * g.CHUNK
    order = [c * 64 + k for k in range(64) for c in range(12)]
    ext = []
    for i in range(0, len(order), g.SLOTS):
        ext.append(g.extent(UUID, [data_cluster(1, c, fill=c % 200 + 1, mask=1 if c % 3 == 0 else 0) for c in order[i:i + g.SLOTS]]))
    scattered = g.header(UUID, 1, [("qemu-server.conf", CONF)], [(1, "drive-scsi0", big)]) + b"".join(ext)
    # Compressed: 1 MiB of repetitive stream in a few hundred bytes.
    out["scattered-12-chunks.zst"] = subprocess.run(["zstd", "-q", "-c", "-19"], input=scattered, capture_output=True, check=True).stdout
    return out


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "seeds")
    os.makedirs(outdir, exist_ok=True)
    for name, data in sorted(seeds().items()):
        with open(os.path.join(outdir, name + ".vma"), "wb") as f:
            f.write(data)
        print("%s.vma: %d bytes" % (name, len(data)))


if __name__ == "__main__":
    main()
