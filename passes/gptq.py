"""GPTQ weight quantization (Frantar et al. 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", Algorithm 1), on spikec's scale grid.

spikec stores a linear layer's weight as W [K, N] (y = x @ W: K input features, N output
channels). GPTQ quantizes the *input features* one at a time and spreads each one's
rounding error over the input features not yet quantized, so that the layer's output on
the calibration inputs X [n, K] moves as little as possible: it greedily minimises

    trace((W - W_q)^T H (W - W_q)),      H = 2 X^T X / n   (K x K)

where W_q = codes * s_w is the dequantized weight. GPTQ's "columns" are spikec's rows k.
Every output channel j (column of W) is independent given H, so the channels are
processed in chunks (bounded memory for a wide LM head) with one factorisation of H.

The scale grid is RTN's: per output channel, symmetric, s_w[j] = max_k |W[k, j]| / Qb
(`spikec.reference.scale_per_channel`, computed on the original weight), and a code is
clamp(rint(float32(w) / s_w), -Qb, +Qb) exactly as `spikec.reference.quantize` rounds, so
the codes format, scales and spiking numerics are unchanged: GPTQ only chooses different
integer codes, and every target runs them bit for bit as it runs RTN's.

The algorithm (`gptq_quantize`), as in the paper and its reference code:
1. inputs never active on the calibration data (H[k, k] == 0) get H[k, k] = 1: their
   rows decouple and they keep their RTN code (the reference code zeroes them instead;
   spikec keeps the RTN code so that an input silent in calibration is still served);
2. act-order (optional): process rows by decreasing H[k, k] (a stable sort, so ties keep
   their order); with per-channel scales no group index is needed;
3. dampening: H += damp * mean(diag(H)) * I (`--gptq-damp`, default 0.01);
4. U = upper Cholesky factor of H^-1 (H^-1 = U^T U, H^-1 through the Cholesky factor of H);
5. lazy batches of `block` rows (128; the group size instead when neither divides the other): inside a block, row i is quantized, its error
   err = (w_i - q_i s) / U[i, i] is subtracted from the block's later rows through U[i, i:];
   after the block the accumulated errors update all later rows at once through
   U[block, later] (one matrix product).
Groups (`group_size` G, `--group-size`): one scale per output channel and group of G
contiguous input rows (spikec.reference.dequantize_acc's group-wise form). Without
act-order a group's scale is taken when its first row is reached, from the group's rows
as updated so far (the errors of all earlier rows applied), as GPTQ's reference code does
("find_params" at each group start); with act-order the groups stay contiguous in the
original row order (the numeric has no g_idx), so the scales are fixed up front from the
original weight, GPTQ's `static_groups` option, and each row uses its own group's scale
whenever the permuted order reaches it.
This equals the sequential optimal-brain-surgeon update (quantize row k, then re-solve the
remaining rows by least squares for the damped objective); tests/test_gptq.py checks it
against that slow form.

Numerics and memory: H is accumulated and factored in float64 for K <= 4096
(H_FLOAT32_ABOVE) and in float32 above (K = 8960: 320 MB instead of 640 MB), as the
reference implementation does throughout. One layer input's H is held at a time (the
layers sharing an input, Q/K/V or gate/up, share one), plus a float copy of a chunk of
output channels of W ([K, cols] with K * cols <= 2**22 elements). Same inputs give the same
codes (no randomness; a stable act-order sort).
"""

from __future__ import annotations

import numpy as np

from spikec import reference as R
from spikec.errors import SpikecError

BLOCK = 128  # GPTQ's lazy-batch block size (rows of W updated together)
H_FLOAT32_ABOVE = 4096  # K above which H is accumulated and factored in float32
COLUMN_CHUNK_ELEMENTS = 1 << 22  # output channels quantized together: K * cols <= this
HESSIAN_BUDGET_BYTES = 1 << 30  # Hessians computed together (layer inputs fetched in one ORT pass)
METHODS = ("rtn", "gptq")


def hessian_dtype(K: int):
    return np.float64 if K <= H_FLOAT32_ABOVE else np.float32


class Hessian:
    """H = 2 X^T X / n accumulated over calibration activations (any shape [..., K])."""

    def __init__(self, K: int) -> None:
        self.K = int(K)
        self.dtype = hessian_dtype(self.K)
        self.xtx = np.zeros((self.K, self.K), self.dtype)
        self.n = 0

    def add(self, x: np.ndarray, rows_at_once: int = 4096) -> None:
        x = np.asarray(x).reshape(-1, self.K)
        for i in range(0, x.shape[0], rows_at_once):
            part = x[i:i + rows_at_once].astype(self.dtype)
            self.xtx += part.T @ part
        self.n += x.shape[0]

    def value(self) -> np.ndarray:
        if self.n == 0:
            raise SpikecError("gptq: no calibration tokens reached this layer")
        return (self.xtx * (2.0 / self.n)).astype(self.dtype)


def _inverse_cholesky_upper(H: np.ndarray, where: str) -> np.ndarray:
    """U upper triangular with H^-1 = U^T U (H symmetric positive definite)."""
    try:
        L = np.linalg.cholesky(H)  # H = L L^T
        L_inv = np.linalg.solve(L, np.eye(H.shape[0], dtype=H.dtype))
        H_inv = L_inv.T @ L_inv
        return np.linalg.cholesky(H_inv).T.copy()  # H^-1 = L2 L2^T = U^T U
    except np.linalg.LinAlgError:
        raise SpikecError(f"gptq{f' at {where}' if where else ''}: the damped Hessian is not positive definite "
                          f"(numerically); raise --gptq-damp") from None


def gptq_quantize(W: np.ndarray, H: np.ndarray, bits: int, damp: float = 0.01, act_order: bool = False,
                  block: int = BLOCK, where: str = "", group_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ of a weight W float32 [K, N] (y = x @ W) given H [K, K] = 2 X^T X / n.

    Returns (codes int8 [K, N], s_w) with |codes| <= Qb. s_w float32 [N] is the RTN
    per-channel scale (spikec.reference.scale_per_channel) when group_size is 0; with
    group_size G (dividing K) s_w is float32 [K / G, N], one scale per output channel and
    group of G input rows (see the module doc, "Groups"). SpikecError on a bad shape, a
    non-finite H, a bad damp or a G that does not divide K."""
    W = np.asarray(W)
    if W.ndim != 2:
        raise SpikecError(f"gptq at {where}: weight must be [K, N], got shape {W.shape}")
    K, N = W.shape
    G = int(group_size) or K
    if G < 1 or K % G:
        raise SpikecError(f"gptq at {where}: group size {group_size} does not divide K = {K}")
    H = np.asarray(H)
    if H.shape != (K, K):
        raise SpikecError(f"gptq at {where}: Hessian shape {H.shape} does not match the weight's K = {K}")
    if not np.isfinite(H).all():
        raise SpikecError(f"gptq at {where}: the Hessian holds NaN or inf (non-finite calibration inputs)")
    if not (np.isfinite(damp) and damp > 0):
        raise SpikecError(f"gptq at {where}: damp must be > 0, got {damp}")
    block = max(1, int(block))
    if block % G and G % block:
        block = G  # a group's rows are all up to date when its scale is taken (module doc)
    qb = R.qmax(bits)
    dtype = hessian_dtype(K)
    H = np.array(H, dtype=dtype, copy=True)
    diag = np.diagonal(H).copy()
    dead = ~(diag > 0)
    H[dead, :] = 0
    H[:, dead] = 0
    H[dead, dead] = 1
    diag[dead] = 1
    perm = np.argsort(-diag, kind="stable") if act_order else np.arange(K)
    H = H[perm][:, perm]
    idx = np.arange(K)
    H[idx, idx] += dtype(damp) * np.mean(np.diagonal(H))
    U = _inverse_cholesky_upper(H, where)
    del H

    codes = np.empty((K, N), np.int8)
    s_w = np.empty((K // G, N), np.float32)
    dynamic_groups = G < K and not act_order
    cols = max(1, COLUMN_CHUNK_ELEMENTS // max(K, 1))
    for j0 in range(0, N, cols):
        j1 = min(N, j0 + cols)
        w0 = np.asarray(W[:, j0:j1], dtype=np.float32)
        # RTN's scales on the original weight: per channel, or per group with act-order
        # (static groups); without act-order a group's scale is taken when it is reached.
        for g in range(K // G):
            s_w[g, j0:j1] = R.scale_per_channel(w0[g * G:(g + 1) * G], bits)
        Wc = w0[perm].astype(dtype)
        Q = np.empty(Wc.shape, np.int8)
        for i1 in range(0, K, block):
            i2 = min(i1 + block, K)
            W1 = Wc[i1:i2]  # a view: the block's rows are updated in place
            Err1 = np.empty_like(W1)
            U1 = U[i1:i2, i1:i2]
            for i in range(i2 - i1):
                k = i1 + i
                if dynamic_groups and k % G == 0:
                    s_w[k // G, j0:j1] = R.scale_per_channel(Wc[k:k + G].astype(np.float32), bits)
                s = s_w[perm[k] // G, j0:j1]
                s_d = s.astype(dtype)
                w = W1[i]
                # exactly spikec.reference.quantize: float32 division, half to even, clamp
                q = np.clip(np.rint(w.astype(np.float32) / s), -qb, qb)
                Q[i1 + i] = q.astype(np.int8)
                err = (w - q.astype(dtype) * s_d) / U1[i, i]
                if i + 1 < i2 - i1:
                    W1[i + 1:] -= np.outer(U1[i, i + 1:], err)
                Err1[i] = err
            if i2 < K:
                Wc[i2:] -= U[i1:i2, i2:].T @ Err1
        codes[perm, j0:j1] = Q
    return codes, (s_w if G < K else s_w[0])


def dequantized_weight(codes: np.ndarray, s_w: np.ndarray, dtype=np.float64) -> np.ndarray:
    """W_q = codes * s_w in `dtype` [K, N]: s_w [N] per output channel, or [K / G, N] per
    group of G input rows (each scale row repeated over its group's rows)."""
    s = np.asarray(s_w, np.float32).astype(dtype)
    if s.ndim == 2:
        s = np.repeat(s, codes.shape[0] // s.shape[0], axis=0)
    return codes.astype(dtype) * s


def proxy_loss(W: np.ndarray, codes: np.ndarray, s_w: np.ndarray, H: np.ndarray) -> float:
    """trace((W - W_q)^T H (W - W_q)) with W_q = codes * s_w (exact, in float64): with H = 2 X^T X / n,
    twice the mean over calibration tokens of the squared output error ||x (W - W_q)||^2."""
    K, N = W.shape
    dtype = hessian_dtype(K)
    Hd = np.asarray(H, dtype=dtype)
    cols = max(1, COLUMN_CHUNK_ELEMENTS // max(K, 1))
    total = 0.0
    for j0 in range(0, N, cols):
        j1 = min(N, j0 + cols)
        E = (np.asarray(W[:, j0:j1], np.float32).astype(dtype)
             - dequantized_weight(codes[:, j0:j1], np.asarray(s_w)[..., j0:j1], dtype))
        total += float(np.sum(E * (Hd @ E), dtype=np.float64))
    return total


class Hessians:
    """H of each linear layer's input, from the float graph's activations, on demand.

    `run(names)` gives those values on each calibration feed (a list of {name: array}); in
    a compile it is the float-activations analysis (passes/analyses.py), which serves what
    it already holds and otherwise runs the float graph on ONNX Runtime without keeping
    the chunk.

    `inputs` lists (activation name, K) in the order the layers are quantized (one entry
    per layer: layers sharing an input, Q/K/V or gate/up, share one H). `get(name)` fetches
    that input and the next not yet computed ones whose Hessians together stay within
    `budget_bytes` (at least one) in one ORT pass over the calibration feeds, accumulates
    each H = 2 X^T X / n over feeds and tokens (every token of every feed, as the static
    clips use), and drops the activations; `done(name)` frees an H once its last layer is
    quantized. `scale[name]` divides an input (SmoothQuant's X / s)."""

    def __init__(self, run, inputs: list[tuple[str, int]], scale: dict | None = None,
                 budget_bytes: int = HESSIAN_BUDGET_BYTES) -> None:
        self.run = run  # names -> list of {name: array} per feed
        self.order = list(dict.fromkeys(n for n, _ in inputs))
        self.K = dict(inputs)
        self.pending: dict[str, int] = {}
        for n, _ in inputs:
            self.pending[n] = self.pending.get(n, 0) + 1
        self.scale = scale or {}
        self.budget = budget_bytes
        self.ready: dict[str, Hessian] = {}
        self.computed: set[str] = set()

    def get(self, name: str) -> Hessian:
        if name not in self.ready:
            self._compute(name)
        return self.ready[name]

    def done(self, name: str) -> None:
        self.pending[name] -= 1
        if self.pending[name] <= 0:
            self.ready.pop(name, None)

    def _compute(self, name: str) -> None:
        chunk, used = [name], _h_bytes(self.K[name])
        for n in self.order[self.order.index(name) + 1:]:
            if n in self.computed or n in chunk:
                continue
            b = _h_bytes(self.K[n])
            if used + b > self.budget:
                break
            chunk.append(n)
            used += b
        hs = {n: Hessian(self.K[n]) for n in chunk}
        for i, acts in enumerate(self.run(chunk)):
            for n in chunk:
                x = acts[n]
                if n in self.scale:
                    x = (x / self.scale[n]).astype(np.float32)
                if not np.isfinite(x).all():
                    raise SpikecError(f"quantize (gptq): input '{n}' holds NaN or inf on calibration feed {i} "
                                      f"(the float model overflows or reads non-finite inputs there)")
                hs[n].add(x)
        for n in chunk:
            self.computed.add(n)
            self.ready[n] = hs[n]


def _h_bytes(K: int) -> int:
    return K * K * np.dtype(hessian_dtype(K)).itemsize
