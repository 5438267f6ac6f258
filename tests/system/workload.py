"""Seeded random writes into disk images, the way a guest would make them."""
import os


def random_write(rng, path, max_len=3 << 20):
    """One write: 512 B .. max_len, random or zero, anywhere (often across
    block boundaries).  Returns (offset, length, kind)."""
    size = os.path.getsize(path)
    kind = rng.choices(["random", "zero", "pattern"], [6, 2, 2])[0]
    length = min(size, int(512 * (2 ** rng.uniform(0, 13))))   # 512 B .. 4 MiB
    length = max(1, min(length, max_len))
    if rng.random() < 0.5:
        off = rng.randrange(0, max(1, size - length + 1))
    else:  # straddle a 64 KiB boundary
        b = rng.randrange(1, max(2, size // 65536)) * 65536
        off = max(0, min(size - length, b - length // 2))
    if kind == "random":
        data = rng.randbytes(length)
    elif kind == "zero":
        data = bytes(length)
    else:
        data = bytes([rng.randrange(256)]) * length
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)
    return off, length, kind


def snapshot(paths, dest_dir, tag):
    """Copy each disk to dest_dir/tag-NAME (sparse); returns the copies."""
    os.makedirs(dest_dir, exist_ok=True)
    out = []
    for p in paths:
        d = os.path.join(dest_dir, "%s-%s" % (tag, os.path.basename(p)))
        os.system("cp --sparse=always '%s' '%s'" % (p, d))
        out.append(d)
    return out


def random_fill(rng, paths, total, min_len=64 << 10, max_len=4 << 20):
    """Random-content writes (incompressible) totalling at least total
    bytes, spread over paths at random offsets (often overlapping, so the
    changed area is smaller).  Returns the number of bytes written."""
    done = 0
    while done < total:
        p = rng.choice(paths)
        size = os.path.getsize(p)
        length = min(size, rng.randrange(min_len, max_len + 1), max(1, total - done))
        off = rng.randrange(0, max(1, size - length + 1))
        with open(p, "r+b") as f:
            f.seek(off)
            f.write(rng.randbytes(length))
        done += length
    return done
