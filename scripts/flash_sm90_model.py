#!/usr/bin/env python3
"""CPU check of the index math of kernels/flash_attention_sm90.cu (the Hopper forward).

No GPU is needed. Beside flash_fragments.py's model of mma.m16n8k16 fragments, this
models what the Hopper kernel's own instructions do, from the PTX ISA and CUTLASS's
description of the canonical wgmma layouts (cute/atom/mma_traits_sm90_gmma.hpp):

- a shared-memory matrix descriptor (start address, leading and stride byte offsets,
  128-byte swizzle: address bits 4-6 XOR bits 7-9 of every byte address read);
  a K-major operand's element (mn, k) at start + (mn % 8)·128 + (mn // 8)·stride + 2k,
  an MN-major one's at start + 2·(mn % 64) + (mn // 64)·lead + (k % 8)·128 +
  (k // 8)·stride, both before the swizzle;
- wgmma.mma_async m64nNk16 (f32 accumulators: warp i of the warpgroup holds rows
  16i.. in the m16n8 C layout over N/8 column blocks; an A operand from registers in
  the m16n8k16 A layout a warp), SS with both operands K-major, RS with B MN-major;
- cp.async's 16-byte copies into the swizzled tiles, at a window start that is not a
  multiple of 1024 bytes (the kernel rounds it up).

On that model it replays fa_forward_wg line by line (sw_offset, cp_tile_sw,
next_kv_tile_sw, sw128_desc, the loops, masks and softmax shared with fa_fwd, the
output through store_rows) at the launch shapes the kernel file instantiates, and
checks output and lse against a float64 reference (every block, warpgroup and tile;
tail rows and keys, tq ≠ tk, causal or not), every copy inside the window, aligned,
and each tile covered once, both as fa_forward_wg copies (cp.async by every thread) and
as fa_forward_tma does (TMA boxes, written in the swizzle by the copy unit). Then it runs
fa_forward_tma's pipeline (producer, consumer warps, copies in flight and the stages'
barriers, with mbarrier's phase and parity rules) in random interleavings: it must end,
every consumer must read the tile it means, and no copy may land in a stage being read.
Last, the GPU test's probe (`probe_failures` in tests/cuda_flash_attention.rs) on the
model's kernels: none of its failure lines may appear. Values stay in float64: this
checks where each element goes, not precision. Run: python3 scripts/flash_sm90_model.py
(needs numpy); with --probe it prints only the probe's lines, in the test's words, for
setting a changed model beside what a GPU printed.
"""
import itertools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flash_fragments as ff  # noqa: E402

SW_ROW, SW_ATOM = 128, 1024


def instantiations(name="FA_SM90"):
    """The numeric arguments (after the dtype's two) of each `name(bf16, ...)` line of
    the kernel file: FA_SM90's (D, CWG, BS, ST), FA_DKDV_SM90's (D, BQ)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kernels",
                        "flash_attention_sm90.cu")
    out = []
    for line in open(path):
        line = line.strip()
        if line.startswith(name + "(bf16,") and line.endswith(")"):
            out.append(tuple(int(x) for x in line[len(name) + 1:-1].split(",")[2:]))
    assert out, f"no {name}(bf16, ...) line in {path}"
    return out


def smem_bytes(D, CWG, BS, ST=None):
    """Sm90Smem's bytes, or with ST stages TmaSmem's (barriers and the waits' deadline
    included)."""
    if ST is None:
        return 64 * CWG * D * 2 + 4 * BS * D * 2 + SW_ATOM
    return 64 * CWG * D * 2 + 2 * ST * BS * D * 2 + 8 * (2 + 4 * ST) + SW_ATOM


# ---- the hardware, modelled ----
def swizzle(addr):
    return addr ^ (((addr >> 7) & 7) << 4)


def decode(desc):
    start = (desc & 0x3FFF) << 4
    lead = ((desc >> 16) & 0x3FFF) << 4
    stride = ((desc >> 32) & 0x3FFF) << 4
    assert (desc >> 49) & 7 == 0, "base offset"
    assert desc >> 62 == 1, "not the 128-byte swizzle"
    assert (start >> 7) & 7 == 0, "start not at the beginning of a swizzle row group"
    return start, lead, stride


def read(sm, addr):
    addr = swizzle(np.asarray(addr))
    assert np.all(addr >= sm.lo) and np.all(addr + 2 <= sm.nbytes), "operand outside the window"
    return sm.h[addr // 2]


def k_major(sm, desc, n):
    """The [n, 16] operand (rows mn, columns k) a K-major descriptor names."""
    start, _, stride = decode(desc)
    mn, k = np.arange(n)[:, None], np.arange(16)[None, :]
    return read(sm, start + (mn % 8) * SW_ROW + (mn // 8) * stride + 2 * k)


def mn_major(sm, desc, n):
    """The [n, 16] operand (rows mn, columns k) an MN-major descriptor names."""
    start, lead, stride = decode(desc)
    mn, k = np.arange(n)[:, None], np.arange(16)[None, :]
    return read(sm, start + 2 * (mn % 64) + (mn // 64) * lead + (k % 8) * SW_ROW + (k // 8) * stride)


def from_frags(frags, N):
    """The warpgroup's 64×N accumulator from its 4 warps' fragments c[0][nb] (32, 4)."""
    d = np.full((64, N), np.nan)
    for w in range(4):
        for nb in range(N // 8):
            for e in range(4):
                d[16 * w + ff.G + 8 * (e >> 1), 8 * nb + 2 * ff.T + (e & 1)] = frags[w][0][nb][:, e]
    return d


def to_frags(frags, d, N):
    for w in range(4):
        for nb in range(N // 8):
            for e in range(4):
                frags[w][0][nb][:, e] = d[16 * w + ff.G + 8 * (e >> 1), 8 * nb + 2 * ff.T + (e & 1)]


def a_from_regs(a):
    """The warpgroup's 64×16 A operand from each warp's m16n8k16 A fragment (32, 4, 2)."""
    m = np.full((64, 16), np.nan)
    for w in range(4):
        for e in range(2):
            m[16 * w + ff.G, 2 * ff.T + e] = a[w][:, 0, e]
            m[16 * w + ff.G + 8, 2 * ff.T + e] = a[w][:, 1, e]
            m[16 * w + ff.G, 2 * ff.T + 8 + e] = a[w][:, 2, e]
            m[16 * w + ff.G + 8, 2 * ff.T + 8 + e] = a[w][:, 3, e]
    return m


def tma_tile(sm, D, R, dst, src, row0, n):
    """The TMA copies of tma_tile: a box of 64 columns × R rows a panel, written in the
    128-byte swizzle by the copy unit (the same address bits as wgmma reads), rows ≥ n
    zero-filled."""
    assert dst % SW_ATOM == 0, "a 128-byte-swizzled box must start on 1024 bytes"
    r, c = np.arange(R)[:, None], np.arange(64)[None, :]
    for p in range(D // 64):
        addr = swizzle(dst + p * R * SW_ROW + r * SW_ROW + 2 * c)
        assert np.all(addr >= sm.lo) and np.all(addr + 2 <= sm.nbytes)
        rows = row0 + np.arange(R)
        vals = np.where((rows < n)[:, None], src[np.minimum(rows, n - 1)][:, 64 * p: 64 * p + 64], 0.0)
        sm.h[addr // 2] = vals


def wgmma_ss(sm, frags, N, a, b, acc):
    d = from_frags(frags, N) if acc else np.zeros((64, N))
    to_frags(frags, d + k_major(sm, a, 64) @ k_major(sm, b, N).T, N)


def wgmma_rs_tn(sm, frags, N, a, b):
    to_frags(frags, from_frags(frags, N) + a_from_regs(a) @ mn_major(sm, b, N).T, N)


# ---- the kernel, transcribed ----
def block_window(window, size):
    """A block's shared memory of `size` bytes from byte `window` on, and the first
    1024-aligned address in it (each kernel's `base`: the window's start rounded up)."""
    return ff.Smem(window + size, lo=window), (window + SW_ATOM - 1) & ~(SW_ATOM - 1)


def sw_offset(R, r, col):
    return (col // 64) * R * SW_ROW + r * SW_ROW + ((((col // 8) & 7) ^ (r & 7)) << 4)


def cp_tile_sw(sm, D, R, NT, dst, src, row0, n):
    CPR = D // 8
    STEP = NT // CPR
    assert NT % CPR == 0 and R % STEP == 0 and STEP % 8 == 0
    covered = set()
    for x in range(NT):
        tr, col = x // CPR, x % CPR * 8
        d0 = dst + sw_offset(R, tr, col)
        for i in range(R // STEP):
            r = row0 + tr + i * STEP
            da = d0 + i * STEP * SW_ROW
            assert da % 16 == 0 and sm.lo <= da and da + 16 <= sm.nbytes
            sm.h[da // 2: da // 2 + 8] = src[r, col: col + 8] if r < n else 0.0
            covered.add(da)
    assert len(covered) == R * D // 8, "tile not covered once"


def next_kv_tile_sw(sm, D, BS, NT, stages, j, ntiles, k, v, nk):
    if j + 1 < ntiles:
        TILE = BS * D * 2
        nxt = stages + 2 * ((j + 1) & 1) * TILE
        cp_tile_sw(sm, D, BS, NT, nxt, k, (j + 1) * BS, nk)
        cp_tile_sw(sm, D, BS, NT, nxt + TILE, v, (j + 1) * BS, nk)


def sw128_desc(addr, lead, stride):
    return ((addr >> 4) & 0x3FFF) | ((lead >> 4) & 0x3FFF) << 16 | ((stride >> 4) & 0x3FFF) << 32 | 1 << 62


def scores(sm, D, M, N, qa, sk):
    """issue_scores and its wait: a warpgroup's 64 A rows at `qa` (in a tile of M rows a
    panel) times the N rows of the B tile at `sk`, as its 4 warps' fragments."""
    s = [ff.zeros(1, N) for _ in range(4)]
    for kk in range(D // 16):
        off = (kk % 4) * 32
        a = sw128_desc(qa + (kk // 4) * M * SW_ROW + off, 16, SW_ATOM)
        b = sw128_desc(sk + (kk // 4) * N * SW_ROW + off, 16, SW_ATOM)
        wgmma_ss(sm, s, N, a, b, kk > 0)
    return s


def issue_pv(sm, o, D, N, pf, sv):
    """issue_pv and its wait: a warpgroup's accumulators o (its 4 warps' fragments) +=
    A·B, A the warps' packed fragments pf over N rows of B, B the tile at `sv` read
    N-major."""
    for kk in range(N // 16):
        b = sw128_desc(sv + kk * 16 * SW_ROW, N * SW_ROW, SW_ATOM)
        wgmma_rs_tn(sm, o, D, [p[kk] for p in pf], b)


def pv(sm, grp, D, BS, sv):
    """The forward's O += P·V for a warpgroup, P its packed fragments."""
    issue_pv(sm, [w["o"] for w in grp["warps"]], D, BS, grp["pf"], sv)


def forward_sm90(q, k, v, scale, causal, D, CWG, BS, window, ST=None):
    """out, lse of one (b, h) as fa_forward_wg writes them, or with ST stages as
    fa_forward_tma does (its copies' order is pipeline_check's business: here every copy
    lands before its tile is used); `window`: the byte address of the dynamic shared
    window (the model's shared memory starts there)."""
    nq, nk = len(q), len(k)
    M, NT, Q, TILE = 64 * CWG, 128 * CWG, 64 * CWG * D * 2, BS * D * 2
    size = smem_bytes(D, CWG, BS, ST)
    assert M * (D + ff.PAD) * 2 <= size
    out, lse = np.full((nq, D), np.nan), np.full(nq, np.nan)
    written = set()
    for by in range((nq + M - 1) // M):
        sm, base = block_window(window, size)
        q0 = by * M
        sq, stages = base, base + Q
        kend = min(nk, q0 + M) if causal else nk
        ntiles = (kend + BS - 1) // BS
        if ST is None:
            cp_tile_sw(sm, D, M, NT, sq, q, q0, nq)
            cp_tile_sw(sm, D, BS, NT, stages, k, 0, nk)
            cp_tile_sw(sm, D, BS, NT, stages + TILE, v, 0, nk)
        else:
            assert stages + 2 * ST * TILE + 8 * (2 + 4 * ST) <= sm.nbytes, "barriers and deadline fit"
            tma_tile(sm, D, M, sq, q, q0, nq)
        groups = []
        for wg in range(CWG):
            warps = [dict(r0=q0 + 16 * (4 * wg + i), m=[[np.full(32, -np.inf), np.full(32, -np.inf)]],
                          l=[[np.zeros(32), np.zeros(32)]], o=ff.zeros(1, D)) for i in range(4)]
            groups.append(dict(w0=q0 + 64 * wg, qa=sq + 64 * wg * SW_ROW, warps=warps))
        for j in range(ntiles):
            k0 = j * BS
            if ST is None:
                sk = stages + 2 * (j & 1) * TILE
                next_kv_tile_sw(sm, D, BS, NT, stages, j, ntiles, k, v, nk)
            else:
                sk = stages + 2 * (j % ST) * TILE
                tma_tile(sm, D, BS, sk, k, j * BS, nk)
                tma_tile(sm, D, BS, sk + TILE, v, j * BS, nk)
            for grp in groups:
                # fa_fwd_sm90 skips a tile the causal mask hides from the warpgroup;
                # fa_fwd_tma computes it (masked to P = 0).
                if ST is None and causal and k0 > grp["w0"] + 63:
                    continue
                s = scores(sm, D, M, BS, grp["qa"], sk)
                # fa_fwd_tma adds the previous tile's P·V (at the previous running max)
                # before the softmax step rescales O; fa_fwd_sm90 adds this tile's after.
                if ST is not None and j > 0:
                    pv(sm, grp, D, BS, stages + (2 * ((j - 1) % ST) + 1) * TILE)
                grp["pf"] = []
                for w, sw in zip(grp["warps"], s):
                    ff.scaled_masked(sw, 1, BS, scale, w["r0"], k0, nk, causal)
                    ff.softmax_step(w, sw, 1, BS, D)
                    grp["pf"].append(ff.pack_a(sw, 1, BS)[0])
                if ST is None:
                    pv(sm, grp, D, BS, sk + TILE)
        if ST is not None and ntiles > 0:
            for grp in groups:
                pv(sm, grp, D, BS, stages + (2 * ((ntiles - 1) % ST) + 1) * TILE)
        for grp in groups:
            for w in grp["warps"]:
                inv = ff.finish_rows(w, 1, lse)
                warp = (w["r0"] - q0) // 16
                st = window + 16 * warp * (D + ff.PAD) * 2
                ff.store_rows(sm, out, w["o"], inv, 1, D, st, w["r0"], nq, written)
    assert len(written) == nq * D // 8
    return out, lse


def dkdv_sm90(q, k, v, do, lse, delta, scale, causal, D, BQ, window):
    """dk, dv of one (b, h) as fa_dkdv_wg writes them."""
    nq, nk = len(q), len(k)
    M, NT, KV, TILE = 128, 256, 128 * D * 2, BQ * D * 2
    ROWS = 2 * KV + 4 * TILE
    size = ROWS + 4 * BQ * 4 + SW_ATOM
    assert 2 * M * (D + ff.PAD) * 2 <= ROWS
    dk, dv = np.full((nk, D), np.nan), np.full((nk, D), np.nan)
    wk, wv = set(), set()
    for by in range((nk + M - 1) // M):
        sm, base = block_window(window, size)
        k0 = by * M
        sk, sv, stages, rows = base, base + KV, base + 2 * KV, base + ROWS
        qs = min(k0, nq) if causal else 0
        ntiles = (nq - qs + BQ - 1) // BQ
        cp_tile_sw(sm, D, M, NT, sk, k, k0, nk)
        cp_tile_sw(sm, D, M, NT, sv, v, k0, nk)
        acc = [dict(dk=[ff.zeros(1, D)[0] for _ in range(4)], dv=[ff.zeros(1, D)[0] for _ in range(4)])
               for _ in range(2)]
        for j in range(ntiles):
            qb, stage = qs + j * BQ, j & 1
            sq = stages + 2 * stage * TILE
            sdo = sq + TILE
            cp_tile_sw(sm, D, BQ, NT, sq, q, qb, nq)
            cp_tile_sw(sm, D, BQ, NT, sdo, do, qb, nq)
            # The lse and delta copies (4 bytes each, zero past nq), as f32 values.
            cols = qb + np.arange(BQ)
            sl = np.where(cols < nq, lse[np.minimum(cols, nq - 1)], 0.0)
            sd = np.where(cols < nq, delta[np.minimum(cols, nq - 1)], 0.0)
            assert rows + (2 * stage * BQ + 2 * BQ) * 4 <= sm.nbytes
            for wg in range(2):
                w0 = k0 + 64 * wg
                if causal and w0 > qb + BQ - 1:
                    continue
                s = scores(sm, D, M, BQ, sk + 64 * wg * SW_ROW, sq)
                dp = scores(sm, D, M, BQ, sv + 64 * wg * SW_ROW, sdo)
                pf, dsf = [], []
                for i in range(4):
                    r0 = k0 + 16 * (4 * wg + i)
                    full = qb + BQ <= nq and not (causal and r0 + 15 > qb)
                    for nb in range(BQ // 8):
                        c = 8 * nb + 2 * ff.T
                        for e in range(4):
                            kj = r0 + ff.G + 8 * (e >> 1)
                            col = qb + c + (e & 1)
                            lc = sl[c + (e & 1)] * ff.LOG2E
                            p = ff.ex2(s[i][0][nb][:, e] * scale * ff.LOG2E - lc)
                            if not full:
                                p = np.where((col >= nq) | (causal & (kj > col)), 0.0, p)
                            s[i][0][nb][:, e] = p
                            dp[i][0][nb][:, e] = p * (dp[i][0][nb][:, e] - sd[c + (e & 1)])
                    pf.append(ff.pack_a(s[i], 1, BQ)[0])
                    dsf.append(ff.pack_a(dp[i], 1, BQ)[0])
                issue_pv(sm, [[a] for a in acc[wg]["dv"]], D, BQ, pf, sdo)
                issue_pv(sm, [[a] for a in acc[wg]["dk"]], D, BQ, dsf, sq)
        for wg in range(2):
            for i in range(4):
                warp = 4 * wg + i
                r0 = k0 + 16 * warp
                st = window + 16 * warp * (D + ff.PAD) * 2
                ones, scl = [[np.ones(32), np.ones(32)]], [[np.full(32, scale), np.full(32, scale)]]
                ff.store_rows(sm, dk, [acc[wg]["dk"][i]], scl, 1, D, st, r0, nk, wk)
                ff.store_rows(sm, dv, [acc[wg]["dv"][i]], ones, 1, D, st + M * (D + ff.PAD) * 2,
                              r0, nk, wv)
    assert len(wk) == len(wv) == nk * D // 8
    return dk, dv


def dq_sm90(q, k, v, do, lse, delta, scale, causal, D, BK, window):
    """dq of one (b, h) as fa_dq_wg writes it."""
    nq, nk = len(q), len(k)
    M, NT, QD, TILE = 128, 256, 128 * D * 2, BK * D * 2
    size = 2 * QD + 4 * TILE + SW_ATOM
    dq = np.full((nq, D), np.nan)
    written = set()
    for by in range((nq + M - 1) // M):
        sm, base = block_window(window, size)
        q0 = by * M
        sq, sdo, stages = base, base + QD, base + 2 * QD
        kend = min(nk, q0 + M) if causal else nk
        ntiles = (kend + BK - 1) // BK
        cp_tile_sw(sm, D, M, NT, sq, q, q0, nq)
        cp_tile_sw(sm, D, M, NT, sdo, do, q0, nq)
        cp_tile_sw(sm, D, BK, NT, stages, k, 0, nk)
        cp_tile_sw(sm, D, BK, NT, stages + TILE, v, 0, nk)
        acc = [[ff.zeros(1, D)[0] for _ in range(4)] for _ in range(2)]
        for j in range(ntiles):
            k0 = j * BK
            sk = stages + 2 * (j & 1) * TILE
            sv = sk + TILE
            next_kv_tile_sw(sm, D, BK, NT, stages, j, ntiles, k, v, nk)
            for wg in range(2):
                if causal and k0 > q0 + 64 * wg + 63:
                    continue
                s = scores(sm, D, M, BK, sq + 64 * wg * SW_ROW, sk)
                dp = scores(sm, D, M, BK, sdo + 64 * wg * SW_ROW, sv)
                dsf = []
                for i in range(4):
                    r0 = q0 + 16 * (4 * wg + i)
                    full = k0 + BK <= nk and not (causal and k0 + BK - 1 > r0)
                    for nb in range(BK // 8):
                        for e in range(4):
                            h = e >> 1
                            row = r0 + ff.G + 8 * h
                            kj = k0 + 8 * nb + 2 * ff.T + (e & 1)
                            inside = row < nq
                            l2 = np.where(inside, lse[np.minimum(row, nq - 1)] * ff.LOG2E, 0.0)
                            dl = np.where(inside, delta[np.minimum(row, nq - 1)], 0.0)
                            p = ff.ex2(s[i][0][nb][:, e] * scale * ff.LOG2E - l2)
                            if not full:
                                p = np.where((kj >= nk) | (causal & (kj > row)), 0.0, p)
                            dp[i][0][nb][:, e] = p * (dp[i][0][nb][:, e] - dl)
                    dsf.append(ff.pack_a(dp[i], 1, BK)[0])
                issue_pv(sm, [[a] for a in acc[wg]], D, BK, dsf, sk)
        for wg in range(2):
            for i in range(4):
                warp = 4 * wg + i
                r0 = q0 + 16 * warp
                st = window + 16 * warp * (D + ff.PAD) * 2
                scl = [[np.full(32, scale), np.full(32, scale)]]
                ff.store_rows(sm, dq, [acc[wg][i]], scl, 1, D, st, r0, nq, written)
    assert len(written) == nq * D // 8
    return dq


# ---- fa_forward_tma's pipeline: the producer, the consumer warps and the barriers ----
class MBarrier:
    """mbarrier: `arrivals` expected a phase, a transaction count of bytes still to land;
    a phase completes when both are zero. try_wait.parity(P) passes while the phase in
    progress has the other parity than P, i.e. once phase P (mod 2) has completed."""

    def __init__(self, arrivals):
        self.arrivals, self.pending, self.tx, self.completed = arrivals, arrivals, 0, 0

    def _settle(self):
        if self.pending == 0 and self.tx == 0:
            self.completed += 1
            self.pending = self.arrivals

    def arrive(self, expect=0):
        assert self.pending > 0, "more arrivals than the barrier expects"
        self.tx += expect
        self.pending -= 1
        self._settle()

    def land(self, nbytes):
        self.tx -= nbytes
        assert self.tx >= 0, "bytes landed that no arrival expected"
        self._settle()

    def passes(self, parity, phase):
        """Whether a wait for `phase` (its parity given) passes now; checked not to pass
        on a later phase of the same parity (the barrier two phases ahead)."""
        ok = (self.completed & 1) != parity
        assert not ok or self.completed == phase + 1, "barrier two phases ahead of a waiter"
        return ok


class NamedBarrier:
    """bar.sync / bar.arrive with a thread count of `warps` warps: a generation completes
    when that many warps have arrived (a sync arrives, then waits for the generation it
    arrived in)."""

    def __init__(self, warps):
        self.warps, self.count, self.generation = warps, 0, 0

    def arrive(self):
        self.count += 1
        if self.count == self.warps:
            self.count, self.generation = 0, self.generation + 1

    def sync(self):
        mine = self.generation
        self.arrive()
        while self.generation == mine:
            yield


def pipeline_check(ntiles, ST, CWG, rng, pingpong=False):
    """Runs fa_forward_tma's copy and barrier protocol with the producer, the 4·CWG
    consumer warps and the copies in flight interleaved at random (with `pingpong`, the
    warpgroups' turns at issuing MMAs too). Checks that it ends (no deadlock), that every
    consumer reads the tile it means from each stage, that no copy lands in a stage a
    consumer still reads, and with `pingpong` that the warpgroups' turns never overlap
    and every arrival at the turn barriers is matched."""
    CW, TILE = 4 * CWG, 1
    q_full = MBarrier(1)
    bars = {(kind, s): MBarrier(1 if kind.endswith("full") else CW)
            for kind in ["k_full", "v_full", "k_free", "v_free"] for s in range(ST)}
    turn_bars = [NamedBarrier(CW), NamedBarrier(CW)]  # bar 2 and 3: warpgroup 0's, 1's turn
    in_turn = [0] * CWG  # warps of each warpgroup between their turn and its hand-over
    stage = {}  # ("k" or "v", s) -> the tile the buffer holds
    reading = set()  # (buffer, warp) pairs between a consumer's wait and its release
    flights = []  # copies in flight: (buffer, tile, barrier)

    def producer():
        q_full.arrive(expect=TILE)
        flights.append((("q", 0), 0, q_full))
        for j in range(ntiles):
            s, n = j % ST, j // ST
            for kind in ["k", "v"]:
                if n > 0:
                    while not bars[(kind + "_free", s)].passes((n - 1) & 1, n - 1):
                        yield
                bars[(kind + "_full", s)].arrive(expect=TILE)
                flights.append(((kind, s), j, bars[(kind + "_full", s)]))
                yield

    def consumer(w):
        wg = w // 4

        def wait(kind, j):
            s, n = j % ST, j // ST
            while not bars[(kind + "_full", s)].passes(n & 1, n):
                yield
            assert stage[(kind, s)] == j, f"warp {w} reads tile {stage[(kind, s)]} for {j}"
            reading.add(((kind, s), w))

        def release(kind, j):
            reading.discard(((kind, j % ST), w))
            bars[(kind + "_free", j % ST)].arrive()

        def issue(last):
            """take_turn, the MMAs issued, hand_over(last)."""
            if pingpong:
                yield from turn_bars[wg].sync()
                assert in_turn[1 - wg] == 0, "both warpgroups issuing at once"
            in_turn[wg] += 1
            yield
            in_turn[wg] -= 1
            if pingpong and (wg == 0 or not last):
                turn_bars[1 - wg].arrive()

        while not q_full.passes(0, 0):
            yield
        assert stage[("q", 0)] == 0
        if pingpong and wg == 1 and ntiles > 0:
            turn_bars[0].arrive()
        # fa_forward_tma's order: S_j issued with P_{j-1}·V_{j-1}; S_j waited for and
        # K_j released; the softmax; P_{j-1}·V_{j-1} waited for and V_{j-1} released.
        for j in range(ntiles):
            yield from wait("k", j)
            if j > 0:
                yield from wait("v", j - 1)
            yield from issue(last=False)
            release("k", j)
            yield
            if j > 0:
                release("v", j - 1)
            yield
        if ntiles > 0:
            yield from wait("v", ntiles - 1)
            yield from issue(last=True)
            release("v", ntiles - 1)

    agents = [producer()] + [consumer(w) for w in range(CW)]
    live = list(range(len(agents)))
    while live or flights:
        choices = [("agent", a) for a in live] + [("copy", i) for i in range(len(flights))]
        kind, i = choices[rng.integers(len(choices))]
        if kind == "copy":
            buf, tile, bar = flights.pop(i)
            assert not any(b == buf for b, _ in reading), f"copy into {buf} while it is read"
            stage[buf] = tile
            bar.land(TILE)
            continue
        try:
            next(agents[i])
        except StopIteration:
            live.remove(i)
        # A round where every agent waits and nothing is in flight is a deadlock: the
        # loop would spin forever; bounded by the check below.
        pipeline_check.steps += 1
        assert pipeline_check.steps < 10**6, "deadlock: the pipeline stopped moving"
    assert all(b.count == 0 for b in turn_bars), "an arrival at a turn barrier left unmatched"


pipeline_check.steps = 0


def probe(window=0):
    """The probe's lines (`ff.probe_lines`) on the model's Hopper kernels: the TMA
    forward and the two backward kernels. To test a guess at what a GPU got wrong,
    change the model that way and compare its lines with the GPU's (`--probe`)."""
    dkdv_tile = dict(instantiations("FA_DKDV_SM90"))
    dq_tile = dict(instantiations("FA_DQ_SM90"))
    lines = []
    for D, CWG, BS, ST in instantiations():
        def run(q, k, v, do):
            out, _ = forward_sm90(q, k, v, 1.0, False, D, CWG, BS, window, ST)
            _, lse, delta = ff.reference(q, k, v, do, 1.0, False)[:3]
            dq = dq_sm90(q, k, v, do, lse, delta, 1.0, False, D, dq_tile[D], window)
            dk, dv = dkdv_sm90(q, k, v, do, lse, delta, 1.0, False, D, dkdv_tile[D], window)
            return out, dq, dk, dv
        lines += ff.probe_lines(D, run)
    return lines


def main():
    rng = np.random.default_rng(1)
    lengths = [(1, 1), (49, 49), (130, 130), (65, 7), (7, 300), (300, 200), (257, 385)]
    worst = 0.0
    for (D, CWG, BS, ST), (tq, tk), causal, tma in itertools.product(
            instantiations(), lengths, [False, True], [False, True]):
        q, k, v = (rng.standard_normal((n, D)) for n in (tq, tk, tk))
        do = rng.standard_normal((tq, D))
        scale = -0.7 / np.sqrt(D) if (tq + tk) % 3 == 0 else 1 / np.sqrt(D)
        o_r, lse_r = ff.reference(q, k, v, do, scale, causal)[:2]
        # The window's start: aligned, and 16-byte aligned only (the kernel rounds up).
        window = 0 if (tq + tk) % 2 else 1040
        o, lse = forward_sm90(q, k, v, scale, causal, D, CWG, BS, window, ST if tma else None)
        case = f"d={D} tq={tq} tk={tk} causal={causal} tma={tma}"
        worst = max(worst, ff.compare(case, [("out", o, o_r), ("lse", lse, lse_r)]))
        print(f"ok {case}", flush=True)
    # The backward's two kernels, each at its instantiated tile (the same head dims).
    dkdv_tile = dict(instantiations("FA_DKDV_SM90"))
    dq_shapes = instantiations("FA_DQ_SM90")
    for (D, BK), (tq, tk), causal in itertools.product(dq_shapes, lengths, [False, True]):
        q, k, v, do = (rng.standard_normal((n, D)) for n in (tq, tk, tk, tq))
        scale = -0.7 / np.sqrt(D) if (tq + tk) % 3 == 0 else 1 / np.sqrt(D)
        _, lse_r, delta_r, dq_r, dk_r, dv_r = ff.reference(q, k, v, do, scale, causal)
        window = 0 if (tq + tk) % 2 else 1040
        dq = dq_sm90(q, k, v, do, lse_r, delta_r, scale, causal, D, BK, window)
        dk, dv = dkdv_sm90(q, k, v, do, lse_r, delta_r, scale, causal, D, dkdv_tile[D], window)
        case = f"backward d={D} tq={tq} tk={tk} causal={causal}"
        results = [("dq", dq, dq_r), ("dk", dk, dk_r), ("dv", dv, dv_r)]
        worst = max(worst, ff.compare(case, results))
        print(f"ok {case}", flush=True)
    # The pipeline at every stage count instantiated, with tiles enough to reuse every
    # stage several times, in many random interleavings each.
    for (_, CWG, _, ST), ntiles, pingpong, _ in itertools.product(
            instantiations(), [0, 1, 2, 5, 9], [False, True], range(30)):
        pipeline_check.steps = 0
        pipeline_check(ntiles, ST, CWG, rng, pingpong)
    print("ok pipeline: no deadlock, every tile read from its stage, no copy over a read,"
          " turns taken in turn (ping-pong)")
    # The GPU test's probe, whose failure lines a GPU run prints: none on the model.
    failures = probe(window=1040)
    for line in failures:
        print(line)
    if failures:
        sys.exit("the model fails the probe")
    print("ok probe: every read is the one meant")
    print(f"all match (worst relative error {worst:.1e})")


if __name__ == "__main__":
    if "--probe" in sys.argv[1:]:
        print("\n".join(probe()) or "probe: every read is the one meant")
    else:
        main()
