#!/usr/bin/env python3
"""Re-creates the hand-made seeds in fuzz/corpus/ (mini-*.bnet, mini-*.safetensors).

    cd /work/main   # the repository root
    ./target/release/bitnet-pack fixtures/bitnet-packed /tmp/packed-notok.bnet --no-tokenizer --force -q
    python3 fuzz/tools/make_seeds.py /tmp/packed-notok.bnet

The .bnet seeds take their file:config.json and metadata from the given container; the
fixture-*.bnet seeds are plain bitnet-pack output (see fuzz/README.md).
"""
import os
import struct, sys, json
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b3
def h(x): return b3.blake3(x)[:32]
def parse(d):
    io, cnt, nl, mo, ml = struct.unpack_from('<QQQQQ', d, 24)
    names = d[io+128*cnt: io+128*cnt+nl]
    out = {}
    for i in range(cnt):
        e = d[io+128*i: io+128*i+128]
        no, nlen = struct.unpack_from('<II', e, 0)
        off, ln = struct.unpack_from('<QQ', e, 48)
        out[names[no:no+nlen].decode()] = (e, d[off:off+ln])
    return out, d[mo:mo+ml]
def write(tensors, meta, minor=0):
    # tensors: (name, dtype, shape, scale_op, scale_dtype, scale_f32, data)
    body = bytearray(); entries = []; names = bytearray()
    pos = 128
    for (name, dt, shape, op, sdt, sc, data) in tensors:
        pad = (-pos) % 64; body += b'\0'*pad; pos += pad
        e = bytearray(128)
        struct.pack_into('<IIBBBB', e, 0, len(names), len(name.encode()), dt, len(shape), op, sdt)
        for i, s in enumerate(shape): struct.pack_into('<Q', e, 16+8*i, s)
        struct.pack_into('<QQf', e, 48, pos, len(data), sc)
        e[96:128] = h(data)
        entries.append(bytes(e)); names += name.encode()
        body += data; pos += len(data)
    pad = (-pos) % 8; body += b'\0'*pad; pos += pad
    io = pos
    body += b''.join(entries) + names
    mo = 128 + len(body)
    body += meta
    fl = 128 + len(body)
    hd = bytearray(128)
    hd[:8] = b'\x89BNET\r\n\x1a'
    struct.pack_into('<HHI', hd, 8, 1, minor, 128)
    struct.pack_into('<QQQQQQ', hd, 16, fl, io, len(entries), len(names), mo, len(meta))
    struct.pack_into('<II', hd, 64, 64, 0)
    hd[72:104] = h(bytes(body))
    hd[112:128] = h(bytes(hd[:112]))[:16]
    return bytes(hd) + bytes(body)
src, meta = parse(open(sys.argv[1],'rb').read())
cfg = src['file:config.json'][1]
here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, '..', 'corpus', 'bnet_open')
st_out = os.path.join(here, '..', 'corpus', 'safetensors_import')
cfgt = ('file:config.json', 4, [len(cfg)], 0, 0, 0.0, cfg)
def f32(v): return struct.pack('<%df' % len(v), *v)
# T2 [3, 300]: 2 blocks per row, canonical (code 1 = 0x55 everywhere, a few +-1 in range)
t2 = bytearray(b'\x55' * (3*2*64)); t2[0] = 0x56; t2[64+3] = 0x54
# B1 [2, 5]: one 32-byte block per row, padding bits 0
b1 = bytearray(2*32); b1[0] = 0x01; b1[32+4] = 0x01
tens = [cfgt,
    ('model.embed_tokens.weight', 1, [4, 2], 0, 0, 0.0, bytes(range(16))),
    ('model.norm.weight', 0, [3], 0, 0, 0.0, f32([1.0, 0.5, -2.0])),
    ('q', 16, [3, 300], 1, 2, 0.25, bytes(t2)),
    ('b', 17, [2, 5], 2, 1, 3.0, bytes(b1)),
    ('lm_head.weight', 3, [2, 3], 0, 0, 0.0, bytes([1, 255, 0, 127, 128, 2])),
    ('lm_head.weight.row_scale', 0, [2], 0, 0, 0.0, f32([0.1, 0.2])),
    ('x', 2, [1, 1, 1, 2], 0, 0, 0.0, b'\x80\x3f\x00\x40'),
]
open(out+'/mini-config-only.bnet','wb').write(write([cfgt], meta))
open(out+'/mini-all-dtypes.bnet','wb').write(write(tens, meta))
open(out+'/mini-empty-meta.bnet','wb').write(write([cfgt], b'{}'))
open(out+'/mini-tiny-config.bnet','wb').write(write([('file:config.json', 4, [2], 0, 0, 0.0, b'{}')], b'{}'))
# non-canonical: T2 with a code 3 (verify must report a problem, not panic)
bad = bytearray(t2); bad[5] = 0xff
open(out+'/mini-t2-code3.bnet','wb').write(write([cfgt, ('q', 16, [3, 300], 1, 0, 0.5, bytes(bad))], b'{}'))

# format 1.1: a Q4 tensor [2, 40] (2 blocks of 18 bytes per row; d = 0.5 as f16 0x3800;
# the 24 padding nibbles of each row's last block are 8)
def q4_row(codes):
    row = bytearray()
    for b in range(2):
        c = codes[32*b:32*b+32] + [8] * (32 - len(codes[32*b:32*b+32]))
        row += b'\x00\x38' + bytes(c[j] | c[j+16] << 4 for j in range(16))
    return bytes(row)
q4 = q4_row([(3*i) % 16 for i in range(40)]) + q4_row([15 - i % 16 for i in range(40)])
open(out+'/mini-q4.bnet','wb').write(write([cfgt, ('lm_head.weight', 5, [2, 40], 0, 0, 0.0, q4)], b'{}', minor=1))

# non-zero alignment padding (one 0x41 after file:config.json), every checksum right:
# opens, but verify must reject it (formats/bnet.md section 3)
d = bytearray(write(tens, meta))
io = struct.unpack_from('<Q', d, 24)[0]
off, ln = struct.unpack_from('<QQ', d, io + 48)
d[off + ln] = 0x41
d[72:104] = b3.blake3(bytes(d[128:]))[:32]
d[112:128] = b3.blake3(bytes(d[:112]))[:16]
open(out+'/mini-nonzero-padding.bnet','wb').write(d)

def st(tensors, meta=None, pad=True, extra=b''):
    h = {}; data = b''
    for name, dt, shape, raw in tensors:
        h[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data)+len(raw)]}
        data += raw
    if meta is not None: h["__metadata__"] = meta
    hb = json.dumps(h, separators=(',', ':')).encode()
    if pad: hb += b' ' * ((-len(hb)) % 8)
    return struct.pack('<Q', len(hb)) + hb + data + extra
def put(name, b): open(os.path.join(st_out, name), 'wb').write(b)
put('mini-all-dtypes.safetensors', st([
  ("a.f32", "F32", [2, 2], struct.pack('<4f', 1, 2, 3, 4)),
  ("b.f16", "F16", [3], b'\x00\x3c\x00\x40\x00\xc0'),
  ("c.bf16", "BF16", [1, 1, 2], b'\x80\x3f\x00\x40'),
  ("d.u8", "U8", [2, 2], b'\x01\x02\x03\x04'),
  ("e.scalar", "F32", [], struct.pack('<f', 0.5)),
  ("f.empty", "F16", [0, 4], b''),
], meta={"format": "pt"}))
put('mini-one.safetensors', st([("w", "F32", [1], struct.pack('<f', 1.0))]))
put('mini-empty.safetensors', st([]))
put('mini-unsupported-i32.safetensors', st([("i", "I32", [2], b'\0'*8)]))
put('mini-truncated.safetensors', st([("w", "F32", [4], b'\0'*16)])[:-5])
put('mini-unpadded-header.safetensors', st([("w", "U8", [3], b'abc')], pad=False))
