"""Adversarial review of the [accept] quotas and the sparse digest records
(rev-quota): a host with an accepted certificate races HELLOs past max_vms,
and sends a block whose XXH3-128 is all zero bytes (the record of a block of
zeros)."""
import struct

import wireproto as wp
from harness import check, wait_for
from test_quota import Peer, status_vms, storage_dirs

# 16 bytes whose XXH3-128 is 16 zero bytes: XXH3's 9-to-16-byte path is an
# invertible map of its two 64-bit words, solved for a zero output.
ZERO_HASH_BLOCK = bytes.fromhex("91e873c807b90e59d8cb45fb078659f1")


def test_revquota_race_max_vms(env):
    """Six HELLOs for six new VMs sent at once, max_vms = 2: exactly two are
    welcomed, the others refused; at most two VMs exist afterwards."""
    rep = env.replica(extra="max_vms = 2\n").start()
    peer = Peer(env, rep)
    conns = []
    for i in range(6):
        c = wp.tls_connect(rep.port, peer.ctx)
        conns.append(c)
    for i, c in enumerate(conns):
        c.send(wp.hello("race%d" % i, [("a.img", 1 << 20)]))
    got = [c.recv_frame(30) for c in conns]
    welcomed = [i for i, fr in enumerate(got) if fr is not None and fr[0] == wp.WELCOME]
    check(len(welcomed) == 2, "max_vms = 2 but %d of 6 racing HELLOs were welcomed: %r"
          % (len(welcomed), [wp.describe(fr) for fr in got]))
    check(len(status_vms(rep)) <= 2, "status lists %r" % sorted(status_vms(rep)))
    for c in conns:
        c.close()
    wait_for(lambda: storage_dirs(rep) == [], 30, 0.1,
             what="unrecorded VMs dropped (storage %r)" % storage_dirs(rep))


def test_revquota_zero_hash_block(env):
    """A data block whose XXH3-128 is all zeros would be recorded as a block
    of zeros while the image holds data: verify would then accuse the
    replica (and a resync's repair would overwrite the newest point in
    place).  The replica refuses it (NACK bad-data), applies nothing, and
    the VM stays verifiable."""
    assert wp.xxh128(ZERO_HASH_BLOCK) == bytes(16)
    rep = env.replica().start()
    peer = Peer(env, rep)
    bs = 4096
    size = bs + len(ZERO_HASH_BLOCK)          # a short last block of 16 bytes
    c, w = peer.welcomed("zh", [("d0.img", size)], bs)
    try:
        fr = peer.cycle(c, 1, [size])          # zeros: the first point
        check(fr is not None and fr[0] == wp.ACK, "first cycle got %s" % wp.describe(fr))
        fr = peer.cycle(c, 2, [size], body=lambda dig:
                        wp.data_raw(0, bs, ZERO_HASH_BLOCK, digest=dig))
    finally:
        c.close()
    v = rep.ctl("verify", "zh", timeout=120)
    check(v.rc == 0, "verify of zh fails after the cycle got %s: %r"
          % (wp.describe(fr), v))
    check(fr is not None and fr[0] == wp.NACK and wp.decode_nack(fr[1])[0] == wp.NACK_BAD_DATA,
          "a block whose hash is all zeros got %s" % wp.describe(fr))
