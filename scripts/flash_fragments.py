#!/usr/bin/env python3
"""CPU check of the index math of kernels/flash_attention.cu's bf16/f16 kernels.

No GPU is needed. The script models, per the PTX ISA, what a warp's instructions do:
ldmatrix.x4 (with and without .trans), mma.m16n8k16 (A, B and C fragment layouts),
cp.async (16 bytes, zero-fill) and the packing of two f32 into a 32-bit pair. On that
model it replays the kernels' own address and fragment arithmetic (a_lane, bnk_lane,
bkn_lane, load_a, mma_rs_nk, mma_ss_nk, mma_rs_kn, pack_a, cp_tile, store_rows, store_ds,
dq_share and the kernels' tile loops, shared layouts, masks and softmax, transcribed line
by line: forward, dQ, dK/dV, the single-pass backward (dK/dV with dQ's shares in f32
parts per split, summed in order) and the forward with its JVP) and checks:

- every ldmatrix row address is 16-byte aligned and each 8-lane phase touches all 32
  banks once (no bank conflicts), and every cp.async and 16-byte store stays inside
  the kernel's shared window;
- the forward, dQ, dK/dV, the single-pass backward (one to three splits) and JVP
  (output, lse and tangent) of whole launches (every block, warp and tile, with tail
  rows and keys, tq ≠ tk, causal or not) equal a float64 reference of attention and of
  its JVP;
- the GPU attention test's probe (`probe_failures` in tests/cuda_flash_attention.rs,
  the same inputs) prints none of its failure lines on the forward and both backwards.

Values are kept in float64 (no bf16 rounding): this checks where each element goes, not
precision. Run: python3 scripts/flash_fragments.py (needs numpy); with --probe it prints
only the probe's lines, in the test's words, to set a changed model beside a GPU's.
"""
import itertools
import os
import sys

import numpy as np

LANE = np.arange(32)
G, T = LANE >> 2, LANE & 3
PAD = 8
LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453


class Smem:
    """A block's dynamic shared memory as 16-bit elements (float64 values): the bytes
    [lo, nbytes) of the shared window (lo > 0 models a dynamic window that does not
    start at address 0)."""

    def __init__(self, nbytes, lo=0):
        self.nbytes, self.lo = nbytes, lo
        self.h = np.full(nbytes // 2, np.nan)

    def rows8(self, addr):
        """The 8 elements at each byte address in addr (checked: aligned, inside)."""
        addr = np.asarray(addr)
        assert np.all(addr % 16 == 0), "ldmatrix row address not 16-byte aligned"
        assert np.all(addr >= self.lo) and np.all(addr + 16 <= self.nbytes), "outside shared memory"
        return self.h[(addr // 2)[:, None] + np.arange(8)]


def check_banks(addr):
    # 8 lanes per phase read 16 bytes each: conflict-free iff the 8 rows cover the 32
    # banks exactly once.
    for ph in range(4):
        a = np.asarray(addr[8 * ph : 8 * ph + 8])
        banks = ((a // 4)[:, None] + np.arange(4)) % 32
        assert len(set(banks.ravel().tolist())) == 32, f"bank conflict: {a.tolist()}"


def ldsm_x4(sm, addr, trans=False):
    """ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: r[lane, i] = (lo, hi)."""
    check_banks(addr)
    rows = sm.rows8(addr)  # [32 lanes, 8]: lane 8i + r gives row r of matrix i
    r = np.empty((32, 4, 2))
    for i in range(4):
        m = rows[8 * i : 8 * i + 8]  # m[row][col]
        if not trans:  # (row g, cols 2t, 2t+1)
            r[:, i, 0], r[:, i, 1] = m[G, 2 * T], m[G, 2 * T + 1]
        else:  # (rows 2t, 2t+1, col g)
            r[:, i, 0], r[:, i, 1] = m[2 * T, G], m[2 * T + 1, G]
    return r


def mma16816(c, a, b0, b1):
    """c[32, 4] += A·B with A from a[32, 4, 2], B from b0, b1[32, 2] (mma layouts)."""
    A = np.full((16, 16), np.nan)
    B = np.full((16, 8), np.nan)
    for e in range(2):
        A[G, 2 * T + e] = a[:, 0, e]
        A[G + 8, 2 * T + e] = a[:, 1, e]
        A[G, 2 * T + 8 + e] = a[:, 2, e]
        A[G + 8, 2 * T + 8 + e] = a[:, 3, e]
        B[2 * T + e, G] = b0[:, e]
        B[2 * T + 8 + e, G] = b1[:, e]
    C = A @ B
    c[:, 0] += C[G, 2 * T]
    c[:, 1] += C[G, 2 * T + 1]
    c[:, 2] += C[G + 8, 2 * T]
    c[:, 3] += C[G + 8, 2 * T + 1]


# ---- the kernel's helpers, transcribed ----
def a_lane(LD):
    return ((LANE & 15) * LD + ((LANE >> 4) << 3)) * 2


def bnk_lane(LD):
    return (((LANE & 7) + ((LANE >> 4) << 3)) * LD + (((LANE >> 3) & 1) << 3)) * 2


def bkn_lane(LD):
    return (((LANE & 7) + (((LANE >> 3) & 1) << 3)) * LD + ((LANE >> 4) << 3)) * 2


def load_a(sm, MT, K, LD, a):
    return [[ldsm_x4(sm, a + (16 * m * LD + 16 * ks) * 2) for ks in range(K // 16)] for m in range(MT)]


def mma_rs_nk(sm, c, a, MT, K, N, LD, b):
    for ks in range(K // 16):
        for np_ in range(N // 16):
            f = ldsm_x4(sm, b + (16 * np_ * LD + 16 * ks) * 2)
            for m in range(MT):
                mma16816(c[m][2 * np_], a[m][ks], f[:, 0], f[:, 1])
                mma16816(c[m][2 * np_ + 1], a[m][ks], f[:, 2], f[:, 3])


def mma_ss_nk(sm, c, MT, K, N, LD, a, b):
    for ks in range(K // 16):
        af = [ldsm_x4(sm, a + (16 * m * LD + 16 * ks) * 2) for m in range(MT)]
        for np_ in range(N // 16):
            f = ldsm_x4(sm, b + (16 * np_ * LD + 16 * ks) * 2)
            for m in range(MT):
                mma16816(c[m][2 * np_], af[m], f[:, 0], f[:, 1])
                mma16816(c[m][2 * np_ + 1], af[m], f[:, 2], f[:, 3])


def mma_rs_kn(sm, c, a, MT, K, N, LD, b):
    for ks in range(K // 16):
        for np_ in range(N // 16):
            f = ldsm_x4(sm, b + (16 * ks * LD + 16 * np_) * 2, trans=True)
            for m in range(MT):
                mma16816(c[m][2 * np_], a[m][ks], f[:, 0], f[:, 1])
                mma16816(c[m][2 * np_ + 1], a[m][ks], f[:, 2], f[:, 3])


def pack2(lo, hi):
    return np.stack([lo, hi], axis=-1)


def pack_a(c, MT, N):
    a = [[np.empty((32, 4, 2)) for _ in range(N // 16)] for _ in range(MT)]
    for m in range(MT):
        for kk in range(N // 16):
            a[m][kk][:, 0] = pack2(c[m][2 * kk][:, 0], c[m][2 * kk][:, 1])
            a[m][kk][:, 1] = pack2(c[m][2 * kk][:, 2], c[m][2 * kk][:, 3])
            a[m][kk][:, 2] = pack2(c[m][2 * kk + 1][:, 0], c[m][2 * kk + 1][:, 1])
            a[m][kk][:, 3] = pack2(c[m][2 * kk + 1][:, 2], c[m][2 * kk + 1][:, 3])
    return a


def cp_tile(sm, D, R, NT, dst, src, row0, n):
    """src: the [n, D] matrix (numpy). Every thread's cp.async, applied at once."""
    CPR, LD = D // 8, D + PAD
    STEP = NT // CPR
    assert NT % CPR == 0 and R % STEP == 0
    written = set()
    for x in range(NT):
        tr, col = x // CPR, x % CPR * 8
        d0 = dst + (tr * LD + col) * 2
        for i in range(R // STEP):
            inside = row0 + tr + i * STEP < n
            da = d0 + i * STEP * LD * 2
            assert da % 16 == 0 and sm.lo <= da and da + 16 <= sm.nbytes
            r = row0 + tr + i * STEP
            sm.h[da // 2 : da // 2 + 8] = src[r, col : col + 8] if inside else 0.0
            written.add((tr + i * STEP, col))
    assert written == {(r, c) for r in range(R) for c in range(0, D, 8)}, "tile not covered once"


def next_kv_tile(sm, D, BS, NT, stages, j, ntiles, k, v, nk):
    """The kernels' next_kv_tile: tile j + 1 of K and V into the stage tile j − 1 used."""
    if j + 1 < ntiles:
        TILE = BS * (D + PAD) * 2
        nxt = stages + 2 * ((j + 1) & 1) * TILE
        cp_tile(sm, D, BS, NT, nxt, k, (j + 1) * BS, nk)
        cp_tile(sm, D, BS, NT, nxt + TILE, v, (j + 1) * BS, nk)


def zeros(MT, N):
    return [[np.zeros((32, 4)) for _ in range(N // 8)] for _ in range(MT)]


def store_rows(sm, dst, c, mul, MT, D, st, row0, n, written):
    """st: shared byte address of the warp's scratch rows; dst: [n, D] numpy output."""
    LD, CPR, R = D + PAD, D // 8, 16 * MT
    for m in range(MT):
        for h in range(2):
            for nb in range(D // 8):
                e = st // 2 + (16 * m + G + 8 * h) * LD + 8 * nb + 2 * T
                assert np.all(e >= sm.lo // 2) and np.all(e + 2 <= sm.nbytes // 2)
                sm.h[e] = c[m][nb][:, 2 * h] * mul[m][h][:]
                sm.h[e + 1] = c[m][nb][:, 2 * h + 1] * mul[m][h][:]
    lr, col = LANE // CPR, LANE % CPR * 8
    for i in range(R // (32 // CPR)):
        r = lr + i * (32 // CPR)
        for lane in range(32):
            if row0 + r[lane] < n:
                s = st // 2 + r[lane] * LD + col[lane]
                assert (s * 2) % 16 == 0
                key = (row0 + r[lane], col[lane])
                assert key not in written, "output chunk written twice"
                written.add(key)
                dst[row0 + r[lane], col[lane] : col[lane] + 8] = sm.h[s : s + 8]


def row_max(v):
    v = v.reshape(8, 4)
    return np.repeat(v.max(axis=1), 4)


def row_sum(v):
    v = v.reshape(8, 4)
    return np.repeat(v.sum(axis=1), 4)


def ex2(x):
    with np.errstate(over="ignore"):
        return np.exp2(x)


# ---- the forward's softmax, per warp (fa_fwd; fa_fwd_sm90 runs the same code) ----
def scaled_masked(s, MT, BS, scale, r0, k0, nk, causal):
    """The score fragments s (rows r0.., keys k0..) scaled to log2 units and masked."""
    sl2 = scale * LOG2E
    for m in range(MT):
        for nb in range(BS // 8):
            s[m][nb] *= sl2
    if k0 + BS > nk or (causal and k0 + BS - 1 > r0):
        for m in range(MT):
            for nb in range(BS // 8):
                for e in range(4):
                    i = r0 + 16 * m + G + 8 * (e >> 1)
                    kj = k0 + 8 * nb + 2 * T + (e & 1)
                    masked = (kj >= nk) | (causal & (kj > i))
                    s[m][nb][masked, e] = -np.inf


def new_max(w, s, m, h, BS):
    """Row (m, h)'s running max taken over the tile's scores s; returns the reference the
    probabilities are taken at (0 while every key so far is masked) and the factor for
    what was summed at the old max."""
    mx = w["m"][m][h].copy()
    for nb in range(BS // 8):
        mx = np.maximum(mx, np.maximum(s[m][nb][:, 2 * h], s[m][nb][:, 2 * h + 1]))
    mx = row_max(mx)
    ref = np.where(mx == -np.inf, 0.0, mx)
    corr = ex2(w["m"][m][h] - ref)
    w["m"][m][h] = mx
    return ref, corr


def softmax_step(w, s, MT, BS, D):
    """One tile of the online softmax: s becomes P, w's max, sums and output rescaled."""
    for m in range(MT):
        for h in range(2):
            ref, corr = new_max(w, s, m, h, BS)
            tot = np.zeros(32)
            for nb in range(BS // 8):
                s[m][nb][:, 2 * h] = ex2(s[m][nb][:, 2 * h] - ref)
                s[m][nb][:, 2 * h + 1] = ex2(s[m][nb][:, 2 * h + 1] - ref)
                tot += s[m][nb][:, 2 * h] + s[m][nb][:, 2 * h + 1]
            w["l"][m][h] = w["l"][m][h] * corr + tot
            for nb in range(D // 8):
                w["o"][m][nb][:, 2 * h] *= corr
                w["o"][m][nb][:, 2 * h + 1] *= corr


def finish_rows(w, MT, lse):
    """The warp's lse written (rows < len(lse)); the reciprocal row sums returned."""
    inv = [[None, None] for _ in range(MT)]
    for m in range(MT):
        for h in range(2):
            l = row_sum(w["l"][m][h])
            with np.errstate(divide="ignore"):
                inv[m][h] = 1.0 / l
            i = w["r0"] + 16 * m + G + 8 * h
            for lane in range(32):
                if T[lane] == 0 and i[lane] < len(lse):
                    lse[i[lane]] = w["m"][m][h][lane] * LN2 + np.log(l[lane])
    return inv


# ---- the kernels ----
def fwd_smem(D, M, BS, QREG):
    rows = 2 * BS + max(M, 2 * BS) if QREG else M + 4 * BS
    return rows * (D + PAD) * 2


def bwd_smem(D, M, BS, dkdv):
    return (2 * M + 4 * BS) * (D + PAD) * 2 + (4 * BS * 4 if dkdv else 0)


def forward(q, k, v, scale, causal, D, MT, W, BS, QREG):
    """q [tq, D], k, v [tk, D] of one (b, h): (out, lse) as the kernel writes them."""
    nq, nk = len(q), len(k)
    LD, M, NT, TILE = D + PAD, 16 * MT * W, 32 * W, BS * (D + PAD) * 2
    rows = fwd_smem(D, M, BS, QREG) // (LD * 2)
    assert M <= rows, "output rows fit the shared window"
    out, lse = np.full((nq, D), np.nan), np.full(nq, np.nan)
    written = set()
    for by in range((nq + M - 1) // M):
        sm = Smem(fwd_smem(D, M, BS, QREG))
        q0 = by * M
        base = 0
        stages = base if QREG else base + M * LD * 2
        sq = base + 2 * TILE if QREG else base
        kend = min(nk, q0 + M) if causal else nk
        ntiles = (kend + BS - 1) // BS
        cp_tile(sm, D, M, NT, sq, q, q0, nq)
        cp_tile(sm, D, BS, NT, stages, k, 0, nk)
        cp_tile(sm, D, BS, NT, stages + TILE, v, 0, nk)
        warps = []
        for warp in range(W):
            r0 = q0 + 16 * MT * warp
            aq = sq + 16 * MT * warp * LD * 2 + a_lane(LD)
            qf = load_a(sm, MT, D, LD, aq) if QREG else None
            mrow = [[np.full(32, -np.inf), np.full(32, -np.inf)] for _ in range(MT)]
            lrow = [[np.zeros(32), np.zeros(32)] for _ in range(MT)]
            warps.append(dict(r0=r0, aq=aq, qf=qf, m=mrow, l=lrow, o=zeros(MT, D)))
        for j in range(ntiles):
            k0 = j * BS
            sk = stages + 2 * (j & 1) * TILE
            sv = sk + TILE
            next_kv_tile(sm, D, BS, NT, stages, j, ntiles, k, v, nk)
            for w in warps:
                r0 = w["r0"]
                if causal and k0 > r0 + 16 * MT - 1:
                    continue
                s = zeros(MT, BS)
                if QREG:
                    mma_rs_nk(sm, s, w["qf"], MT, D, BS, LD, sk + bnk_lane(LD))
                else:
                    mma_ss_nk(sm, s, MT, D, BS, LD, w["aq"], sk + bnk_lane(LD))
                scaled_masked(s, MT, BS, scale, r0, k0, nk, causal)
                softmax_step(w, s, MT, BS, D)
                pf = pack_a(s, MT, BS)
                mma_rs_kn(sm, w["o"], pf, MT, BS, D, LD, sv + bkn_lane(LD))
        for warp, w in enumerate(warps):
            inv = finish_rows(w, MT, lse)
            store_rows(sm, out, w["o"], inv, MT, D, (16 * MT * warp * LD) * 2, w["r0"], nq, written)
    assert len(written) == nq * D // 8
    return out, lse


def dq_kernel(q, k, v, do, lse, delta, scale, causal, D, MT, W, BS, QREG):
    nq, nk = len(q), len(k)
    LD, M, NT, TILE = D + PAD, 16 * MT * W, 32 * W, BS * (D + PAD) * 2
    dq = np.full((nq, D), np.nan)
    written = set()
    for by in range((nq + M - 1) // M):
        sm = Smem(bwd_smem(D, M, BS, False))
        q0 = by * M
        base = 0
        sq, sdo = base, base + M * LD * 2
        stages = base + 2 * M * LD * 2
        kend = min(nk, q0 + M) if causal else nk
        ntiles = (kend + BS - 1) // BS
        cp_tile(sm, D, M, NT, sq, q, q0, nq)
        cp_tile(sm, D, M, NT, sdo, do, q0, nq)
        cp_tile(sm, D, BS, NT, stages, k, 0, nk)
        cp_tile(sm, D, BS, NT, stages + TILE, v, 0, nk)
        warps = []
        for warp in range(W):
            r0 = q0 + 16 * MT * warp
            l2 = [[None, None] for _ in range(MT)]
            dl = [[None, None] for _ in range(MT)]
            for m in range(MT):
                for h in range(2):
                    i = r0 + 16 * m + G + 8 * h
                    ok = i < nq
                    l2[m][h] = np.where(ok, lse[np.minimum(i, nq - 1)] * LOG2E, 0.0)
                    dl[m][h] = np.where(ok, delta[np.minimum(i, nq - 1)], 0.0)
            aq = sq + 16 * MT * warp * LD * 2 + a_lane(LD)
            ado = sdo + 16 * MT * warp * LD * 2 + a_lane(LD)
            wd = dict(r0=r0, l2=l2, dl=dl, aq=aq, ado=ado, acc=zeros(MT, D))
            if QREG:
                wd["qf"] = load_a(sm, MT, D, LD, aq)
                wd["dof"] = load_a(sm, MT, D, LD, ado)
            warps.append(wd)
        for j in range(ntiles):
            k0 = j * BS
            sk = stages + 2 * (j & 1) * TILE
            sv = sk + TILE
            next_kv_tile(sm, D, BS, NT, stages, j, ntiles, k, v, nk)
            for w in warps:
                r0 = w["r0"]
                if causal and k0 > r0 + 16 * MT - 1:
                    continue
                s, dp = zeros(MT, BS), zeros(MT, BS)
                if QREG:
                    mma_rs_nk(sm, s, w["qf"], MT, D, BS, LD, sk + bnk_lane(LD))
                    mma_rs_nk(sm, dp, w["dof"], MT, D, BS, LD, sv + bnk_lane(LD))
                else:
                    mma_ss_nk(sm, s, MT, D, BS, LD, w["aq"], sk + bnk_lane(LD))
                    mma_ss_nk(sm, dp, MT, D, BS, LD, w["ado"], sv + bnk_lane(LD))
                full = k0 + BS <= nk and not (causal and k0 + BS - 1 > r0)
                sl2 = scale * LOG2E
                for m in range(MT):
                    for nb in range(BS // 8):
                        for e in range(4):
                            h = e >> 1
                            i = r0 + 16 * m + G + 8 * h
                            kj = k0 + 8 * nb + 2 * T + (e & 1)
                            p = ex2(s[m][nb][:, e] * sl2 - w["l2"][m][h])
                            if not full:
                                p = np.where((kj >= nk) | (causal & (kj > i)), 0.0, p)
                            dp[m][nb][:, e] = p * (dp[m][nb][:, e] - w["dl"][m][h])
                df = pack_a(dp, MT, BS)
                mma_rs_kn(sm, w["acc"], df, MT, BS, D, LD, sk + bkn_lane(LD))
        for warp, w in enumerate(warps):
            mul = [[np.full(32, scale), np.full(32, scale)] for _ in range(MT)]
            store_rows(sm, dq, w["acc"], mul, MT, D, (16 * MT * warp * LD) * 2, w["r0"], nq, written)
    assert len(written) == nq * D // 8
    return dq


def key_blocks(nk, M, splits):
    """(shared memory, key block, split) in the order the blocks run them: one block per
    key block (`fa_dkdv`), or one per split taking every splits-th key block in turn,
    its shared memory kept from one to the next (`fa_bwd`)."""
    nkb = (nk + M - 1) // M
    if splits is None:
        return [(None, by, None) for by in range(nkb)]
    order = []
    for y in range(splits):
        order += [(y, by, y) for by in range(y, nkb, splits)]
    return order


def dkdv_kernel(q, k, v, do, lse, delta, scale, causal, D, MT, W, BS, splits=None):
    """dK, dV (and with `splits`, the single-pass kernel's dQ: each split's f32 part,
    then fa_dq_sum's ordered sum) as the kernels write them."""
    nq, nk = len(q), len(k)
    LD, M, NT, TILE = D + PAD, 16 * MT * W, 32 * W, BS * (D + PAD) * 2
    LDS, MQ = BS + PAD, BS // 16
    assert 2 * BS <= NT and MT == 1 and W % MQ == 0
    CW = D // (W // MQ)  # dQ columns a warp adds up per query tile
    dk, dv = np.full((nk, D), np.nan), np.full((nk, D), np.nan)
    parts = np.zeros((splits or 0, nq, D))
    wk, wv = set(), set()
    smem = bwd_smem(D, M, BS, True) + (M * LDS * 2 if splits else 0)
    blocks = {}
    for block, by, split in key_blocks(nk, M, splits):
        if block is None or block not in blocks:
            blocks[block] = Smem(smem)
        sm = blocks[block]
        k0 = by * M
        base = 0
        sk, sv = base, base + M * LD * 2
        stages = base + 2 * M * LD * 2
        rows = stages + 4 * TILE
        f32 = {}  # the lse/delta stages: byte address → value (4-byte cp.async)
        qs = min(k0, nq) if causal else 0
        ntiles = (nq - qs + BS - 1) // BS

        def issue(qb, stage):
            sq = stages + 2 * stage * TILE
            cp_tile(sm, D, BS, NT, sq, q, qb, nq)
            cp_tile(sm, D, BS, NT, sq + TILE, do, qb, nq)
            for x in range(NT):
                if x < 2 * BS:
                    c = x if x < BS else x - BS
                    i = qb + c
                    arr = lse if x < BS else delta
                    a = rows + (2 * stage * BS + x) * 4
                    assert a + 4 <= sm.nbytes and a >= 2 * M * LD * 2 + 4 * TILE
                    f32[a] = arr[i] if i < nq else 0.0

        cp_tile(sm, D, M, NT, sk, k, k0, nk)
        cp_tile(sm, D, M, NT, sv, v, k0, nk)
        if ntiles > 0:
            issue(qs, 0)
        warps = []
        for warp in range(W):
            r0 = k0 + 16 * MT * warp
            warps.append(dict(r0=r0, ak=sk + 16 * MT * warp * LD * 2 + a_lane(LD),
                              av=sv + 16 * MT * warp * LD * 2 + a_lane(LD),
                              dka=zeros(MT, D), dva=zeros(MT, D)))
        for j in range(ntiles):
            qb, stage = qs + j * BS, j & 1
            sq = stages + 2 * stage * TILE
            sdo = sq + TILE
            sl = rows + 2 * stage * BS * 4  # byte addresses of the f32 stages
            sd = sl + BS * 4
            if j + 1 < ntiles:
                issue(qb + BS, stage ^ 1)
            sds = rows + 4 * BS * 4  # the dSᵀ tile (fa_bwd only)
            for warp, w in enumerate(warps):
                r0 = w["r0"]
                masked = causal and r0 > qb + BS - 1
                s, dp = zeros(MT, BS), zeros(MT, BS)
                if masked:
                    if splits:
                        store_ds(sm, sds, dp, MT, BS, 16 * MT * warp)
                    continue
                mma_ss_nk(sm, s, MT, D, BS, LD, w["ak"], sq + bnk_lane(LD))
                mma_ss_nk(sm, dp, MT, D, BS, LD, w["av"], sdo + bnk_lane(LD))
                full = qb + BS <= nq and not (causal and r0 + 16 * MT - 1 > qb)
                sl2 = scale * LOG2E
                for nb in range(BS // 8):
                    c = 8 * nb + 2 * T
                    assert np.all((sl + c * 4) % 8 == 0)
                    lc = [np.array([f32[a] for a in sl + (c + e) * 4]) * LOG2E for e in range(2)]
                    dc = [np.array([f32[a] for a in sd + (c + e) * 4]) for e in range(2)]
                    for m in range(MT):
                        for e in range(4):
                            kj = r0 + 16 * m + G + 8 * (e >> 1)
                            i = qb + c + (e & 1)
                            p = ex2(s[m][nb][:, e] * sl2 - lc[e & 1])
                            if not full:
                                p = np.where((i >= nq) | (causal & (kj > i)), 0.0, p)
                            s[m][nb][:, e] = p
                            dp[m][nb][:, e] = p * (dp[m][nb][:, e] - dc[e & 1])
                if splits:
                    store_ds(sm, sds, dp, MT, BS, 16 * MT * warp)
                af = pack_a(s, MT, BS)
                mma_rs_kn(sm, w["dva"], af, MT, BS, D, LD, sdo + bkn_lane(LD))
                af = pack_a(dp, MT, BS)
                mma_rs_kn(sm, w["dka"], af, MT, BS, D, LD, sq + bkn_lane(LD))
            if not splits:
                continue
            # __syncthreads: every warp's dSᵀ rows are in; then warp w adds dS·K for
            # its 16 queries (m-tile w % MQ) and CW columns (group w / MQ) of the tile.
            CC = min(CW, 32)  # columns a pass
            for warp in range(W):
                mq = warp % MQ
                for c0 in range(warp // MQ * CW, (warp // MQ + 1) * CW, CC):
                    acc = [np.zeros((32, 4)) for _ in range(CC // 8)]
                    for ks in range(M // 16):
                        af = ldsm_x4(sm, sds + bnk_lane(LDS) + 16 * mq * 2 + 16 * ks * LDS * 2,
                                     trans=True)
                        for np_ in range(CC // 16):
                            b = sk + bkn_lane(LD) + c0 * 2 + (16 * ks * LD + 16 * np_) * 2
                            f = ldsm_x4(sm, b, trans=True)
                            mma16816(acc[2 * np_], af, f[:, 0], f[:, 1])
                            mma16816(acc[2 * np_ + 1], af, f[:, 2], f[:, 3])
                    for nb in range(CC // 8):
                        for e in range(4):
                            i = qb + 16 * mq + G + 8 * (e >> 1)
                            col = c0 + 8 * nb + 2 * T + (e & 1)
                            ok = i < nq
                            parts[split, i[ok], col[ok]] += acc[nb][ok, e]
        for warp, w in enumerate(warps):
            mk = [[np.full(32, scale), np.full(32, scale)] for _ in range(MT)]
            mv = [[np.ones(32), np.ones(32)] for _ in range(MT)]
            st = (16 * MT * warp * LD) * 2
            store_rows(sm, dk, w["dka"], mk, MT, D, st, w["r0"], nk, wk)
            store_rows(sm, dv, w["dva"], mv, MT, D, st + M * LD * 2, w["r0"], nk, wv)
    assert len(wk) == len(wv) == nk * D // 8
    if splits is None:
        return dk, dv
    dq = np.zeros((nq, D))
    for part in parts:  # fa_dq_sum: the splits in order
        dq += part
    return dq * scale, dk, dv


def store_ds(sm, sds, dp, MT, BS, row0):
    """A warp's dSᵀ accumulator (keys row0.. as rows, the tile's queries as columns)
    into the shared dSᵀ tile, a pair of elements per lane and row as the kernel stores
    them."""
    LDS = BS + PAD
    for m in range(MT):
        for nb in range(BS // 8):
            for h in range(2):
                e = sds // 2 + (row0 + 16 * m + G + 8 * h) * LDS + 8 * nb + 2 * T
                assert np.all(e >= sm.lo // 2) and np.all(e + 2 <= sm.nbytes // 2)
                sm.h[e] = dp[m][nb][:, 2 * h]
                sm.h[e + 1] = dp[m][nb][:, 2 * h + 1]


def jvp_smem(D, M, BS):
    return (2 * M + 8 * BS) * (D + PAD) * 2


def next_jvp_tile(sm, D, BS, NT, stages, j, ntiles, k, v, kd, vd, nk):
    """The JVP kernel's next_jvp_tile: four tiles a stage (K, V, tK, tV)."""
    if j + 1 < ntiles:
        TILE = BS * (D + PAD) * 2
        nxt = stages + 4 * ((j + 1) & 1) * TILE
        row0 = (j + 1) * BS
        cp_tile(sm, D, BS, NT, nxt, k, row0, nk)
        cp_tile(sm, D, BS, NT, nxt + TILE, v, row0, nk)
        cp_tile(sm, D, BS, NT, nxt + 2 * TILE, kd, row0, nk)
        cp_tile(sm, D, BS, NT, nxt + 3 * TILE, vd, row0, nk)


def jvp_kernel(q, k, v, qd, kd, vd, scale, causal, D, MT, W, BS, QREG):
    """fa_jvp_tc of one (b, h): (out, lse, out_dot) as the kernel writes them."""
    nq, nk = len(q), len(k)
    LD, M, NT, TILE = D + PAD, 16 * MT * W, 32 * W, BS * (D + PAD) * 2
    out, od_out, lse = np.full((nq, D), np.nan), np.full((nq, D), np.nan), np.full(nq, np.nan)
    wo, wod = set(), set()
    for by in range((nq + M - 1) // M):
        sm = Smem(jvp_smem(D, M, BS))
        q0 = by * M
        base = 0
        sq, sqd = base, base + M * LD * 2
        stages = base + 2 * M * LD * 2
        kend = min(nk, q0 + M) if causal else nk
        ntiles = (kend + BS - 1) // BS
        cp_tile(sm, D, M, NT, sq, q, q0, nq)
        cp_tile(sm, D, M, NT, sqd, qd, q0, nq)
        cp_tile(sm, D, BS, NT, stages, k, 0, nk)
        cp_tile(sm, D, BS, NT, stages + TILE, v, 0, nk)
        cp_tile(sm, D, BS, NT, stages + 2 * TILE, kd, 0, nk)
        cp_tile(sm, D, BS, NT, stages + 3 * TILE, vd, 0, nk)
        warps = []
        for warp in range(W):
            r0 = q0 + 16 * MT * warp
            aq = sq + 16 * MT * warp * LD * 2 + a_lane(LD)
            aqd = sqd + 16 * MT * warp * LD * 2 + a_lane(LD)
            wd = dict(r0=r0, aq=aq, aqd=aqd, o=zeros(MT, D), od=zeros(MT, D),
                      m=[[np.full(32, -np.inf), np.full(32, -np.inf)] for _ in range(MT)],
                      l=[[np.zeros(32), np.zeros(32)] for _ in range(MT)],
                      mu=[[np.zeros(32), np.zeros(32)] for _ in range(MT)])
            if QREG:
                wd["qf"] = load_a(sm, MT, D, LD, aq)
                wd["qdf"] = load_a(sm, MT, D, LD, aqd)
            warps.append(wd)
        for j in range(ntiles):
            k0 = j * BS
            sk = stages + 4 * (j & 1) * TILE
            sv = sk + TILE
            skd, svd = sk + 2 * TILE, sk + 3 * TILE
            next_jvp_tile(sm, D, BS, NT, stages, j, ntiles, k, v, kd, vd, nk)
            for w in warps:
                r0 = w["r0"]
                if causal and k0 > r0 + 16 * MT - 1:
                    continue
                s, sd = zeros(MT, BS), zeros(MT, BS)
                if QREG:
                    mma_rs_nk(sm, s, w["qf"], MT, D, BS, LD, sk + bnk_lane(LD))
                    mma_rs_nk(sm, sd, w["qdf"], MT, D, BS, LD, sk + bnk_lane(LD))
                    mma_rs_nk(sm, sd, w["qf"], MT, D, BS, LD, skd + bnk_lane(LD))
                else:
                    mma_ss_nk(sm, s, MT, D, BS, LD, w["aq"], sk + bnk_lane(LD))
                    mma_ss_nk(sm, sd, MT, D, BS, LD, w["aqd"], sk + bnk_lane(LD))
                    mma_ss_nk(sm, sd, MT, D, BS, LD, w["aq"], skd + bnk_lane(LD))
                scaled_masked(s, MT, BS, scale, r0, k0, nk, causal)
                for m in range(MT):
                    for nb in range(BS // 8):
                        sd[m][nb] *= scale
                for m in range(MT):
                    for h in range(2):
                        ref, corr = new_max(w, s, m, h, BS)
                        tot, mutot = np.zeros(32), np.zeros(32)
                        for nb in range(BS // 8):
                            for c in range(2):
                                p = ex2(s[m][nb][:, 2 * h + c] - ref)
                                pd = p * sd[m][nb][:, 2 * h + c]
                                s[m][nb][:, 2 * h + c] = p
                                sd[m][nb][:, 2 * h + c] = pd
                                tot += p
                                mutot += pd
                        w["l"][m][h] = w["l"][m][h] * corr + tot
                        w["mu"][m][h] = w["mu"][m][h] * corr + mutot
                        for nb in range(D // 8):
                            for c in range(2):
                                w["o"][m][nb][:, 2 * h + c] *= corr
                                w["od"][m][nb][:, 2 * h + c] *= corr
                pf = pack_a(s, MT, BS)
                mma_rs_kn(sm, w["o"], pf, MT, BS, D, LD, sv + bkn_lane(LD))
                mma_rs_kn(sm, w["od"], pf, MT, BS, D, LD, svd + bkn_lane(LD))
                pf = pack_a(sd, MT, BS)
                mma_rs_kn(sm, w["od"], pf, MT, BS, D, LD, sv + bkn_lane(LD))
        for warp, w in enumerate(warps):
            r0 = w["r0"]
            inv = [[None, None] for _ in range(MT)]
            for m in range(MT):
                for h in range(2):
                    l = row_sum(w["l"][m][h])
                    with np.errstate(divide="ignore", invalid="ignore"):
                        mu = row_sum(w["mu"][m][h]) / l
                        inv[m][h] = 1.0 / l
                    for nb in range(D // 8):
                        for c in range(2):
                            w["od"][m][nb][:, 2 * h + c] -= mu * w["o"][m][nb][:, 2 * h + c]
                    i = r0 + 16 * m + G + 8 * h
                    for lane in range(32):
                        if T[lane] == 0 and i[lane] < nq:
                            lse[i[lane]] = w["m"][m][h][lane] * LN2 + np.log(l[lane])
            st = (16 * MT * warp * LD) * 2
            store_rows(sm, out, w["o"], inv, MT, D, st, r0, nq, wo)
            store_rows(sm, od_out, w["od"], inv, MT, D, st + M * LD * 2, r0, nq, wod)
    assert len(wo) == len(wod) == nq * D // 8
    return out, lse, od_out


def jvp_reference(q, k, v, qd, kd, vd, scale, causal):
    """(out, lse, tangent) by the CPU's formula: tP = P∘(tS − rowsum(P∘tS))."""
    s = q @ k.T * scale
    ts = (qd @ k.T + q @ kd.T) * scale
    if causal:
        s = np.where(np.arange(len(k))[None, :] > np.arange(len(q))[:, None], -np.inf, s)
    mx = s.max(axis=1, keepdims=True)
    e = np.exp(s - mx)
    lse = (mx + np.log(e.sum(axis=1, keepdims=True)))[:, 0]
    p = e / e.sum(axis=1, keepdims=True)
    tp = p * (ts - (p * ts).sum(axis=1, keepdims=True))
    return p @ v, lse, tp @ v + p @ vd


def reference(q, k, v, do, scale, causal):
    s = q @ k.T * scale
    if causal:
        s = np.where(np.arange(len(k))[None, :] > np.arange(len(q))[:, None], -np.inf, s)
    mx = s.max(axis=1, keepdims=True)
    e = np.exp(s - mx)
    lse = (mx + np.log(e.sum(axis=1, keepdims=True)))[:, 0]
    p = e / e.sum(axis=1, keepdims=True)
    o = p @ v
    delta = (do * o).sum(axis=1)
    dp = do @ v.T
    ds = p * (dp - delta[:, None])
    return o, lse, delta, ds @ k * scale, ds.T @ q * scale, p.T @ do


def instantiations(name):
    """The arguments of each `name(...)` line of kernels/flash_attention.cu (the bf16
    ones), so that the replay runs the launch shapes the kernel file instantiates."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kernels",
                        "flash_attention.cu")
    lines = [l.strip() for l in open(path)]
    calls = [l[len(name) + 1:-1].split(",") for l in lines
             if l.startswith(name + "(") and l.endswith(")")]
    args = [[a.strip() for a in c] for c in calls if c[0].strip() == "bf16"]
    assert args, f"no {name}(bf16, ...) line in {path}"
    return args


def flag(a):
    return {"true": True, "false": False}[a]


# FA_TC(S, T, D, MT, FW, FBS, FQREG, BW, BBS, BQREG): D → (MT, FW, FBS, FQREG) forward,
# (BW, BBS, BQREG) backward.
CONFIGS = {int(a[2]): ((int(a[3]), int(a[4]), int(a[5]), flag(a[6])),
                       (int(a[7]), int(a[8]), flag(a[9])))
           for a in instantiations("FA_TC")}


# FA_TC_JVP(S, T, D, MT, W, BS, QREG): D → (MT, W, BS, QREG).
JVP_CONFIGS = {int(a[2]): (int(a[3]), int(a[4]), int(a[5]), flag(a[6]))
               for a in instantiations("FA_TC_JVP")}


def compare(case, results):
    """The worst relative error of (name, got, want) results; exits on one above 1e-9."""
    worst = 0.0
    for name, got, want in results:
        err = np.max(np.abs(got - want)) / max(1.0, np.max(np.abs(want)))
        worst = max(worst, err)
        if not err < 1e-9:
            print(f"FAIL {case} {name}: {err:e}")
            sys.exit(1)
    return worst


def probe_inputs(D, h, pairs):
    """Head h of the probe of tests/cuda_flash_attention.rs (`probe_inputs`), value for
    value: q and k rows are ± Hadamard rows (key j's code; query i carries key σ(i)'s,
    and with `pairs` also the next row's of the same sign), v's column 0 its row index
    (mod 64 with `pairs`) and column c the value c, the output gradient's column 0 the
    row index (1 with `pairs`); σ is the test's shuffle, by the same generator."""
    t = 2 * D
    hadamard = np.array([[(-1.0) ** bin(i & j).count("1") for j in range(D)] for i in range(D)])
    code = np.concatenate([hadamard, -hadamard])
    sigma, state = list(range(t)), 0x9E3779B9 + h
    for i in range(t - 1, 0, -1):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        j = (state >> 33) % (i + 1)
        sigma[i], sigma[j] = sigma[j], sigma[i]
    q = code[sigma]
    if pairs:
        q = q + code[[a // D * D + (a % D + 1) % D for a in sigma]]
    v = np.tile(np.arange(D, dtype=float), (t, 1))
    v[:, 0] = np.arange(t) % 64 if pairs else np.arange(t)
    do = np.zeros((t, D))
    do[:, 0] = 1.0 if pairs else np.arange(t)
    return q, code, v, do


def probe_lines(D, run):
    """The test's failure lines for head dim D (without its dtype), with `run(q, k, v,
    do) -> (out, dq, dk, dv)` one (b, h) through a model's kernels (scale 1, no mask),
    against the float64 reference: one line per result with mismatches, in the test's
    words; none when every value is the one meant."""
    lines = []
    for pairs in (False, True):
        wrong = {what: [] for what in ("out", "dq", "dk", "dv")}
        for h in range(2):
            q, k, v, do = probe_inputs(D, h, pairs)
            o, _, _, dq, dk, dv = reference(q, k, v, do, 1.0, False)
            for (what, got), value, want in zip(wrong.items(), run(q, k, v, do),
                                                (o, dq, dk, dv)):
                for r, c in zip(*np.nonzero(~(np.abs(value - want) <= 1e-2))):
                    got.append(f"h{h} r{r} c{c}: {value[r, c]:.3f} (want {want[r, c]:.3f})")
        kind = "probe in pairs" if pairs else "probe"
        lines += [f"{kind} d={D} {what}: {len(got)} wrong, e.g. {', '.join(got[:6])}"
                  for what, got in wrong.items() if got]
    return lines


def probe():
    """The probe's lines on this model's kernels: the forward, the two-kernel backward
    and the single-pass one (two splits), at head dims 64 and 128."""
    lines = []
    for D in (64, 128):
        (MT, FW, FBS, FQREG), (BW, BBS, BQREG) = CONFIGS[D]
        def run(q, k, v, do, splits=None):
            out, _ = forward(q, k, v, 1.0, False, D, MT, FW, FBS, FQREG)
            _, lse, delta = reference(q, k, v, do, 1.0, False)[:3]
            if splits:
                dq, dk, dv = dkdv_kernel(q, k, v, do, lse, delta, 1.0, False, D, 1, BW, BBS,
                                         splits)
                return out, dq, dk, dv
            dq = dq_kernel(q, k, v, do, lse, delta, 1.0, False, D, 1, BW, BBS, BQREG)
            dk, dv = dkdv_kernel(q, k, v, do, lse, delta, 1.0, False, D, 1, BW, BBS)
            return out, dq, dk, dv
        lines += probe_lines(D, run)
        lines += [f"single-pass {line}" for line in probe_lines(D, lambda *x: run(*x, 2))]
    return lines


def main():
    rng = np.random.default_rng(0)
    lengths = [(1, 1), (7, 7), (49, 49), (65, 65), (130, 130), (65, 7), (7, 257), (200, 90)]
    worst = 0.0
    for D, (tq, tk), causal in itertools.product(CONFIGS, lengths, [False, True]):
        (MT, FW, FBS, FQREG), (BW, BBS, BQREG) = CONFIGS[D]
        q, k, v = (rng.standard_normal((n, D)) for n in (tq, tk, tk))
        do = rng.standard_normal((tq, D))
        scale = -0.7 / np.sqrt(D) if (tq + tk) % 3 == 0 else 1 / np.sqrt(D)
        o_r, lse_r, delta_r, dq_r, dk_r, dv_r = reference(q, k, v, do, scale, causal)
        o, lse = forward(q, k, v, scale, causal, D, MT, FW, FBS, FQREG)
        dq = dq_kernel(q, k, v, do, lse_r, delta_r, scale, causal, D, 1, BW, BBS, BQREG)
        dk, dv = dkdv_kernel(q, k, v, do, lse_r, delta_r, scale, causal, D, 1, BW, BBS)
        splits = 1 + (tq + tk) % 3
        dq1, dk1, dv1 = dkdv_kernel(q, k, v, do, lse_r, delta_r, scale, causal, D, 1, BW, BBS,
                                    splits)
        case = f"d={D} tq={tq} tk={tk} causal={causal}"
        worst = max(worst, compare(case, [
            ("out", o, o_r), ("lse", lse, lse_r), ("dq", dq, dq_r), ("dk", dk, dk_r),
            ("dv", dv, dv_r), (f"single-pass dq ({splits} splits)", dq1, dq_r),
            ("single-pass dk", dk1, dk_r), ("single-pass dv", dv1, dv_r)]))
        (MT, W, BS, QREG) = JVP_CONFIGS[D]
        qd, kd, vd = (rng.standard_normal((n, D)) for n in (tq, tk, tk))
        o_r, lse_r, to_r = jvp_reference(q, k, v, qd, kd, vd, scale, causal)
        o, lse, to = jvp_kernel(q, k, v, qd, kd, vd, scale, causal, D, MT, W, BS, QREG)
        worst = max(worst, compare(case, [("jvp out", o, o_r), ("jvp lse", lse, lse_r),
                                          ("jvp tangent", to, to_r)]))
        print(f"ok {case}", flush=True)
    # The GPU test's probe, whose failure lines a GPU run prints: none on the model.
    failures = probe()
    for line in failures:
        print(line)
    if failures:
        sys.exit("the model fails the probe")
    print("ok probe: every read is the one meant")
    print(f"all match (worst relative error {worst:.1e}); no misaligned or conflicting ldmatrix")


if __name__ == "__main__":
    if "--probe" in sys.argv[1:]:
        print("\n".join(probe()) or "probe: every read is the one meant")
    else:
        main()
