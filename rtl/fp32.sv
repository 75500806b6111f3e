// spikec_fp32: the float32 arithmetic of the vector unit (docs/isa.md section 4).
//
// DECISION (how other RTL uses this package; checked with Yosys 0.23 and Verilator 5.48):
//   * This stays ONE package (no include file): Yosys 0.23 parses, elaborates and
//     synthesises its functions. But Yosys 0.23 has no `import`: `import spikec_fp32::*;`
//     is a syntax error in a module body, in a module header and at file scope alike.
//     So call every function FULLY QUALIFIED, which both tools accept:
//         assign y = spikec_fp32::f32_add(a, b);
//     Never write an import of this package anywhere.
//   * Read this file before the modules that use it (yosys: `read_verilog -sv
//     rtl/fp32.sv rtl/<core>.sv ...`; verilator: list it first).
//   * Call the functions from continuous assigns (or straight-line code at the top of an
//     always_comb), one call per wire, and select between results afterwards. Yosys
//     builds a mux per variable per enclosing `if`/`case` level, so a call placed inside
//     branches multiplies elaboration time (the reason for the coding style below).
//     rtl/tests/fp32_tb.sv (module fp32_ops) shows the pattern.
//   * synth_ecp5 and f32_exp: Yosys 0.23's `share` pass (SAT resource sharing, run by
//     synth_ecp5 with no option to turn it off) runs out of memory (> 22 GB) on a
//     combinational f32_exp: exp's 20-odd chained operations make its activation
//     patterns explode. Synthesise designs that use f32_exp without `share`: run
//     `synth_ecp5 -top T -run begin:coarse`, then synth_ecp5's coarse commands minus
//     `share` (proc; flatten; tribuf -logic; deminout; opt_expr; opt_clean; check;
//     opt -nodffe -nosdff; fsm; opt; wreduce; peepopt; opt_clean;
//     techmap -map +/cmp2lut.v -D LUT_WIDTH=4; opt_expr; opt_clean;
//     techmap -map +/mul2dsp.v -map +/ecp5/dsp_map.v -D DSP_A_MAXWIDTH=18
//       -D DSP_B_MAXWIDTH=18 -D DSP_A_MINWIDTH=2 -D DSP_B_MINWIDTH=2 -D DSP_NAME=$__MUL18X18;
//     chtype -set $mul t:$__soft_mul; alumacc; opt; memory -nomap; opt_clean), then
//     `synth_ecp5 -top T -run map_ram:`. (Generic `synth` has -noshare.) That takes
//     about 2 minutes and 0.75 GB for one f32_exp: 18.6k LUT4 + 38 MULT18X18D, so a
//     combinational exp per lane is expensive. add+mul+div together: 3.3k LUT4 + 4 DSPs.
//   * Yosys 0.23 also rejects `return`; functions here assign their own name instead.
//     Code inside the functions is plain Verilog-2005 style (blocking assignments,
//     `for` loops with constant bounds, no structs, no casts), all declarations at the
//     top of each function.
//
// Numerics: IEEE-754 binary32, round to nearest ties to even, subnormals kept as inputs
// and outputs (no flush to zero), no fused multiply-add. Every NaN result is the
// canonical quiet NaN 32'h7fc00000 (the ISA only asks for "a NaN"). The functional
// simulator (runtime/simulator.py, numpy float32) is the bit-exact reference;
// tests/test_rtl_fp32.py checks these functions against it.
//
// Every function is `automatic` and purely combinational; nothing here holds state.
// f32_add and f32_mul are each the composition of two stage functions (f32_add_s1 /
// f32_add_s2, f32_mul_s1 / f32_mul_s2): the vector unit (rtl/spikec_vecu.sv) calls the
// stages once per lane with a pipeline register between them, and the small operators; its divide and square root are iterative copies of f32_div's and
// f32_sqrt's loops (a few bits per cycle), and exp is a microprogram of f32_exp's steps.
// f32_div, f32_sqrt and f32_exp themselves serve tests/test_rtl_fp32.py.
//
// Public functions:
//   f32_add, f32_sub, f32_mul, f32_div, f32_sqrt   correctly rounded
//   f32_add_s1/_s2, f32_mul_s1/_s2                 the two pipeline stages of add, mul
//   f32_from_i32(signed v)                         int32 -> float32, RNE
//   f32_rint_clamp(x, qmax) -> signed int32        clamp(rint(x), -qmax, qmax); NaN -> 0
//   f32_abs, f32_is_nan, f32_is_finite, f32_gt, f32_max
//   f32_rint(x)                                    round to integral float, half to even
//   f32_to_i32_exact(x) -> signed int32            for integral floats in int32 range
//   f32_ldexp(y, signed k)                         y * 2**k, one rounding
//   f32_exp(x)                                     the Cephes formula of docs/isa.md 4
// Helpers (also f32_-prefixed so they cannot clash with names in other modules):
//   f32_norm32, f32_shr_sticky27, f32_unpack, f32_round, f32_pack, f32_is_inf, f32_is_zero

// The file name is fixed by the project layout; many functions look at only some bits of
// their arguments (e.g. the sign is irrelevant to is_nan).
/* verilator lint_off DECLFILENAME */
/* verilator lint_off UNUSEDSIGNAL */
package spikec_fp32;

  localparam logic [31:0] F32_QNAN = 32'h7fc00000;  // canonical quiet NaN
  localparam logic [31:0] F32_ONE = 32'h3f800000;

  // exp constants: the float32 nearest to the decimals in docs/isa.md section 4
  // (runtime/simulator.py EXP_*), as bit patterns.
  localparam logic [31:0] F32_EXP_LO = 32'hc2d00000;      // -104.0
  localparam logic [31:0] F32_EXP_HI = 32'h42b20000;      // 89.0
  localparam logic [31:0] F32_EXP_LOG2E = 32'h3fb8aa3b;   // 1.44269504088896341
  localparam logic [31:0] F32_EXP_LN2_HI = 32'h3f318000;  // 0.693359375
  localparam logic [31:0] F32_EXP_LN2_LO = 32'hb95e8083;  // -2.12194440e-4
  localparam logic [31:0] F32_EXP_P0 = 32'h39506967;      // 1.9875691500e-4
  localparam logic [31:0] F32_EXP_P1 = 32'h3ab743ce;      // 1.3981999507e-3
  localparam logic [31:0] F32_EXP_P2 = 32'h3c088908;      // 8.3334519073e-3
  localparam logic [31:0] F32_EXP_P3 = 32'h3d2aa9c1;      // 4.1665795894e-2
  localparam logic [31:0] F32_EXP_P4 = 32'h3e2aaaaa;      // 1.6666665459e-1
  localparam logic [31:0] F32_EXP_P5 = 32'h3f000000;      // 5.0000001201e-1

  // Coding style, for Yosys: each function first computes its datapath with straight-line
  // code and picks the special-case result (NaN, inf, zero) only at the very end. Yosys
  // builds a mux for every variable assigned under an `if` at every enclosing level, so a
  // function called inside an `if` / `else` branch multiplies its cost (f32_exp written
  // that way took 7x longer to elaborate, 49 s against 7 s). Conditions here only guard
  // plain assignments.

  // ---------------------------------------------------------------- classification

  function automatic logic f32_is_nan(logic [31:0] x);
    f32_is_nan = (x[30:23] == 8'hff) && (x[22:0] != 23'd0);
  endfunction

  function automatic logic f32_is_inf(logic [31:0] x);
    f32_is_inf = (x[30:23] == 8'hff) && (x[22:0] == 23'd0);
  endfunction

  function automatic logic f32_is_finite(logic [31:0] x);
    f32_is_finite = (x[30:23] != 8'hff);
  endfunction

  function automatic logic f32_is_zero(logic [31:0] x);
    f32_is_zero = (x[30:0] == 31'd0);
  endfunction

  function automatic logic [31:0] f32_abs(logic [31:0] x);
    f32_abs = {1'b0, x[30:0]};
  endfunction

  // Ordered a > b: false when either is NaN; +0 and -0 are equal.
  function automatic logic f32_gt(logic [31:0] a, logic [31:0] b);
    logic unordered, zeros, order;
    unordered = f32_is_nan(a) || f32_is_nan(b);
    zeros = f32_is_zero(a) && f32_is_zero(b);
    if (a[31] != b[31]) order = !a[31];  // signs differ (a zero may be either)
    else if (!a[31]) order = (a[30:0] > b[30:0]);  // both positive: magnitude order
    else order = (a[30:0] < b[30:0]);  // both negative: reversed
    f32_gt = !unordered && !zeros && order;
  endfunction

  // max with NaN propagation (np.max). Which zero max(+0, -0) returns is unspecified
  // by the ISA; this returns a.
  function automatic logic [31:0] f32_max(logic [31:0] a, logic [31:0] b);
    logic unordered, b_gt;
    unordered = f32_is_nan(a) || f32_is_nan(b);
    b_gt = f32_gt(b, a);
    f32_max = unordered ? F32_QNAN : (b_gt ? b : a);
  endfunction

  // ---------------------------------------------------------------- helpers

  // Normalise: shift x left until bit 31 is set; returns {shift count, shifted x}.
  // Five stages (16, 8, 4, 2, 1), each a zero test and a mux: count and shift at once,
  // far smaller than a counting loop followed by a barrel shifter. x = 0 gives {31, 0};
  // callers do not use that result.
  function automatic logic [37:0] f32_norm32(logic [31:0] x);
    logic [31:0] v;
    logic [5:0] n;
    v = x;
    n = 6'd0;
    if (v[31:16] == 16'd0) begin
      v = {v[15:0], 16'd0};
      n[4] = 1'b1;
    end
    if (v[31:24] == 8'd0) begin
      v = {v[23:0], 8'd0};
      n[3] = 1'b1;
    end
    if (v[31:28] == 4'd0) begin
      v = {v[27:0], 4'd0};
      n[2] = 1'b1;
    end
    if (v[31:30] == 2'd0) begin
      v = {v[29:0], 2'd0};
      n[1] = 1'b1;
    end
    if (!v[31]) begin
      v = {v[30:0], 1'b0};
      n[0] = 1'b1;
    end
    f32_norm32 = {n, v};
  endfunction

  // Right shift keeping a sticky bit: the OR of every bit shifted out is ORed into bit 0
  // (the "jam" that keeps one later rounding exact, see f32_round). A log shifter that
  // collects the sticky bit stage by stage; sh >= 27 leaves only the sticky bit.
  function automatic logic [26:0] f32_shr_sticky27(logic [26:0] m, logic [11:0] sh);
    logic [26:0] v;
    logic st;
    v = m;
    st = 1'b0;
    if (sh[0]) begin
      st = st | v[0];
      v = {1'd0, v[26:1]};
    end
    if (sh[1]) begin
      st = st | (|v[1:0]);
      v = {2'd0, v[26:2]};
    end
    if (sh[2]) begin
      st = st | (|v[3:0]);
      v = {4'd0, v[26:4]};
    end
    if (sh[3]) begin
      st = st | (|v[7:0]);
      v = {8'd0, v[26:8]};
    end
    if (sh[4]) begin
      st = st | (|v[15:0]);
      v = {16'd0, v[26:16]};
    end
    f32_shr_sticky27 = (sh >= 12'd27) ? {26'd0, |m} : {v[26:1], v[0] | st};
  endfunction

  // Unpack a finite nonzero x into {e, m}: m[23] = 1 (subnormals are normalised here,
  // with e going below 1), value = m * 2**(e - 150), e a 12-bit signed biased exponent.
  function automatic logic [35:0] f32_unpack(logic [31:0] x);
    logic [37:0] nz;
    logic [11:0] e_sub;
    nz = f32_norm32({x[22:0], 9'd0});  // for a subnormal: frac != 0, shift 0..22
    e_sub = 12'd0 - {6'd0, nz[37:32]};  // 1 - (shift + 1): the hidden bit was missing
    if (x[30:23] != 8'd0) f32_unpack = {4'd0, x[30:23], 1'b1, x[22:0]};
    else f32_unpack = {e_sub, nz[31:8]};
  endfunction

  // Round to nearest even and assemble. m is already positioned for exponent field ef:
  // m[26] is the hidden bit (0 when ef = 0, a subnormal), m[25:3] the fraction, m[2] the
  // guard bit and m[1:0] the bits below, where m[0] may be a sticky bit (the OR of
  // everything further down). ef >= 255 is an overflow and gives inf.
  function automatic logic [31:0] f32_round(logic s, logic [8:0] ef, logic [26:0] m);
    logic inc;
    logic [30:0] body;
    inc = m[2] & (m[1] | m[0] | m[3]);  // above half, or a tie with an odd lsb
    // Adding inc to {exponent, fraction} lets a fraction carry bump the exponent: a
    // subnormal rounding up to 2**-126 becomes normal, 0x7f7fffff+ becomes inf.
    body = {ef[7:0], m[25:3]} + {30'd0, inc};
    f32_round = (ef >= 9'd255) ? {s, 8'hff, 23'd0} : {s, body};
  endfunction

  // Round and pack a NORMALISED value: sign s, 12-bit signed biased exponent e and m with
  // m[26] = 1, meaning value = m * 2**(e - 153) (m[0] may be sticky, as in f32_round).
  // Below the normal range m is first shifted right (with sticky) into the subnormal
  // format, so the one rounding happens there: no double rounding. Callers handle zero,
  // inf and NaN themselves.
  function automatic logic [31:0] f32_pack(logic s, logic signed [11:0] e, logic [26:0] m);
    logic tiny;
    logic [26:0] md;
    tiny = (e <= 12'sd0);
    md = f32_shr_sticky27(m, 12'd1 - e);  // subnormal: field 0 has exponent 1's scale
    if (e >= 12'sd255) f32_pack = {s, 8'hff, 23'd0};
    else f32_pack = f32_round(s, tiny ? 9'd0 : e[8:0], tiny ? md : m);
  endfunction

  // ---------------------------------------------------------------- add / sub

  // Two pipeline stages (the vector unit registers the 71-bit value between them):
  //   f32_add_s1: order by magnitude, align (sticky shift), add or subtract, and the
  //               special cases (NaN, inf) -> {spec, spec value, sign, sub, ex, sum}
  //   f32_add_s2: normalise, round, pack; exact zero; the special value
  // f32_add(a, b) = f32_add_s2(f32_add_s1(a, b)), bit for bit.
  function automatic logic [70:0] f32_add_s1(logic [31:0] a, logic [31:0] b);
    logic swap, sub, spec;
    logic [31:0] x, y, specv;  // |x| >= |y|
    logic [7:0] ex, ey, d;
    logic [26:0] ax, by;
    logic [27:0] sum;
    swap = (a[30:0] < b[30:0]);
    x = swap ? b : a;
    y = swap ? a : b;
    // Subnormals (and zeros) use exponent 1 without the hidden bit.
    ex = (x[30:23] == 8'd0) ? 8'd1 : x[30:23];
    ey = (y[30:23] == 8'd0) ? 8'd1 : y[30:23];
    ax = {x[30:23] != 8'd0, x[22:0], 3'b000};
    by = {y[30:23] != 8'd0, y[22:0], 3'b000};
    d = ex - ey;
    // Three extra bits (guard, round, sticky) are enough: when the alignment shift
    // d >= 2 loses bits, the result needs at most one left shift, so the jammed sticky
    // bit stays below the guard; when d <= 1 nothing is lost at all.
    by = f32_shr_sticky27(by, {4'd0, d});
    sub = x[31] ^ y[31];
    sum = sub ? ({1'b0, ax} - {1'b0, by}) : ({1'b0, ax} + {1'b0, by});
    spec = 1'b1;
    specv = F32_QNAN;
    if (f32_is_nan(a) || f32_is_nan(b)) specv = F32_QNAN;
    else if (f32_is_inf(a) && f32_is_inf(b)) specv = (a[31] != b[31]) ? F32_QNAN : a;
    else if (f32_is_inf(a)) specv = a;
    else if (f32_is_inf(b)) specv = b;
    else spec = 1'b0;
    f32_add_s1 = {spec, specv, x[31], sub, ex, sum};
  endfunction

  function automatic logic [31:0] f32_add_s2(logic [70:0] st);
    logic spec, sx, sub;
    logic [31:0] specv;
    logic [7:0] ex, budget;
    logic [27:0] sum;
    logic [26:0] m;
    logic [8:0] ef;
    logic [31:0] res;
    {spec, specv, sx, sub, ex, sum} = st;
    // Normalise left, but by at most ex - 1 places: a result below 2**-126 stops at
    // exponent 1 and is then a subnormal (field 0, same scale). Such a shift is exact
    // (only cancellation, d <= 1, shifts by more than one), so the rounding after it is
    // correct. Stages of 16, 8, 4, 2, 1: shift when the top bits are zero and the budget
    // allows, which adds up to exactly min(leading zeros, ex - 1).
    m = sum[26:0];
    budget = ex - 8'd1;
    if (m[26:11] == 16'd0 && budget >= 8'd16) begin
      m = {m[10:0], 16'd0};
      budget = budget - 8'd16;
    end
    if (m[26:19] == 8'd0 && budget >= 8'd8) begin
      m = {m[18:0], 8'd0};
      budget = budget - 8'd8;
    end
    if (m[26:23] == 4'd0 && budget >= 8'd4) begin
      m = {m[22:0], 4'd0};
      budget = budget - 8'd4;
    end
    if (m[26:25] == 2'd0 && budget >= 8'd2) begin
      m = {m[24:0], 2'd0};
      budget = budget - 8'd2;
    end
    if (!m[26] && budget >= 8'd1) begin
      m = {m[25:0], 1'b0};
      budget = budget - 8'd1;
    end
    // Normal: exponent ex - shift = budget + 1; no hidden bit left: subnormal, field 0.
    ef = m[26] ? {1'b0, budget} + 9'd1 : 9'd0;
    if (sum[27]) begin
      // Carry out: one right shift, the dropped bit joins the sticky bit; ex + 1 = 255
      // (from ex = 254) is an overflow to inf.
      m = {sum[27:2], sum[1] | sum[0]};
      ef = {1'b0, ex} + 9'd1;
    end
    res = f32_round(sx, ef, m);
    if (spec) f32_add_s2 = specv;
    // Exact zero: x - x = +0 under round to nearest; (-0) + (-0) = -0.
    else if (sum == 28'd0) f32_add_s2 = {sub ? 1'b0 : sx, 31'd0};
    else f32_add_s2 = res;
  endfunction

  function automatic logic [31:0] f32_add(logic [31:0] a, logic [31:0] b);
    f32_add = f32_add_s2(f32_add_s1(a, b));
  endfunction

  function automatic logic [31:0] f32_sub(logic [31:0] a, logic [31:0] b);
    // a - b = a + (-b) exactly (also for NaN: the add returns the canonical NaN).
    f32_sub = f32_add(a, {~b[31], b[30:0]});
  endfunction

  // ---------------------------------------------------------------- mul

  // Two pipeline stages, as f32_add (94 bits between them):
  //   f32_mul_s1: unpack (normalising subnormals), the exact 24 x 24 product, the
  //               exponent sum, the special cases -> {spec, spec value, sign, e, p}
  //   f32_mul_s2: position, round and pack (subnormal results included)
  function automatic logic [93:0] f32_mul_s1(logic [31:0] a, logic [31:0] b);
    logic s, spec;
    logic [31:0] specv;
    logic [35:0] ua, ub;
    logic [47:0] p;
    logic signed [11:0] e;
    s = a[31] ^ b[31];
    ua = f32_unpack(a);
    ub = f32_unpack(b);
    p = ua[23:0] * ub[23:0];  // exact, in [2**46, 2**48) for nonzero finite operands
    // value = p * 2**(ea + eb - 300); f32_pack wants m[26] = 1 and value = m * 2**(e-153).
    e = $signed(ua[35:24]) + $signed(ub[35:24]) - 12'sd127;
    spec = 1'b1;
    specv = F32_QNAN;
    if (f32_is_nan(a) || f32_is_nan(b)) specv = F32_QNAN;
    else if ((f32_is_inf(a) && f32_is_zero(b)) || (f32_is_zero(a) && f32_is_inf(b))) specv = F32_QNAN;
    else if (f32_is_inf(a) || f32_is_inf(b)) specv = {s, 8'hff, 23'd0};
    else if (f32_is_zero(a) || f32_is_zero(b)) specv = {s, 31'd0};
    else spec = 1'b0;
    f32_mul_s1 = {spec, specv, s, e, p};
  endfunction

  function automatic logic [31:0] f32_mul_s2(logic [93:0] st);
    logic spec, s;
    logic [31:0] specv;
    logic [47:0] p;
    logic [26:0] m;
    logic signed [11:0] e;
    {spec, specv, s, e, p} = st;
    m = {p[46:21], |p[20:0]};
    if (p[47]) begin
      m = {p[47:22], |p[21:0]};
      e = e + 12'sd1;
    end
    f32_mul_s2 = spec ? specv : f32_pack(s, e, m);
  endfunction

  function automatic logic [31:0] f32_mul(logic [31:0] a, logic [31:0] b);
    f32_mul = f32_mul_s2(f32_mul_s1(a, b));
  endfunction

  // ---------------------------------------------------------------- div

  function automatic logic [31:0] f32_div(logic [31:0] a, logic [31:0] b);
    logic s;
    logic [35:0] ua, ub;
    logic [24:0] r, mb;
    logic [25:0] diff;
    logic [27:0] q;
    logic [26:0] m;
    logic signed [11:0] e;
    logic [31:0] res;
    integer i;
    s = a[31] ^ b[31];
    ua = f32_unpack(a);
    ub = f32_unpack(b);
    // Restoring division of the significands: q = floor(ma * 2**27 / mb), 28 bits
    // because ma / mb lies in (1/2, 2). Written as a loop, one subtractor per quotient
    // bit whose borrow doubles as the compare, rather than `/`, which would build a
    // 51-by-24-bit divider.
    mb = {1'b0, ub[23:0]};
    r = {1'b0, ua[23:0]};  // invariant: r < 2 * mb
    q = 28'd0;
    for (i = 27; i >= 0; i = i - 1) begin
      diff = {1'b0, r} - {1'b0, mb};  // borrow (bit 25): r < mb
      q[i] = !diff[25];
      if (!diff[25]) r = diff[24:0];
      r = {r[23:0], 1'b0};
    end
    // r != 0: the quotient is inexact, which the sticky bit records.
    e = $signed(ua[35:24]) - $signed(ub[35:24]) + 12'sd126;
    m = {q[26:1], q[0] | (r != 25'd0)};
    if (q[27]) begin
      m = {q[27:2], q[1] | q[0] | (r != 25'd0)};
      e = e + 12'sd1;
    end
    res = f32_pack(s, e, m);
    if (f32_is_nan(a) || f32_is_nan(b)) f32_div = F32_QNAN;
    else if ((f32_is_inf(a) && f32_is_inf(b)) || (f32_is_zero(a) && f32_is_zero(b)))
      f32_div = F32_QNAN;
    else if (f32_is_inf(a) || f32_is_zero(b)) f32_div = {s, 8'hff, 23'd0};
    else if (f32_is_zero(a) || f32_is_inf(b)) f32_div = {s, 31'd0};
    else f32_div = res;
  endfunction

  // ---------------------------------------------------------------- sqrt

  function automatic logic [31:0] f32_sqrt(logic [31:0] x);
    logic [35:0] ux;
    logic signed [11:0] ue;
    logic [24:0] mx;
    logic [53:0] rad;
    logic [29:0] rem, trial;
    logic [30:0] diff;
    logic [26:0] root;
    logic [31:0] res;
    integer i;
    ux = f32_unpack(x);
    // value = m * 2**(E - 23), E = e - 127 unbiased. Make the exponent even by doubling
    // m when E is odd (e even), so the root's exponent is exactly E / 2.
    ue = $signed(ux[35:24]) - 12'sd127;
    mx = ue[0] ? {ux[23:0], 1'b0} : {1'b0, ux[23:0]};
    // Integer square root of mx * 2**29 (54 bits): 27 result bits in [2**26, 2**27),
    // digit by digit (restoring), two radicand bits per step.
    rad = {mx, 29'd0};
    rem = 30'd0;
    root = 27'd0;
    for (i = 0; i < 27; i = i + 1) begin
      rem = {rem[27:0], rad[53:52]};
      rad = {rad[51:0], 2'b00};
      trial = {1'b0, root, 2'b01};  // 4 * root + 1
      diff = {1'b0, rem} - {1'b0, trial};  // borrow (bit 30): rem < trial
      if (!diff[30]) rem = diff[29:0];
      root = {root[25:0], !diff[30]};
    end
    // Exponent floor(E / 2) + 127 (E odd was made even above); the remainder is sticky.
    res = f32_pack(1'b0, (ue >>> 1) + 12'sd127, {root[26:1], root[0] | (rem != 30'd0)});
    if (f32_is_nan(x)) f32_sqrt = F32_QNAN;
    else if (f32_is_zero(x)) f32_sqrt = x;  // sqrt(-0) = -0
    else if (x[31]) f32_sqrt = F32_QNAN;
    else if (f32_is_inf(x)) f32_sqrt = x;
    else f32_sqrt = res;
  endfunction

  // ---------------------------------------------------------------- conversions

  function automatic logic [31:0] f32_from_i32(logic signed [31:0] v);
    logic [31:0] u;
    logic [37:0] nz;
    u = v[31] ? (32'd0 - v) : v;  // |v| as unsigned: 2**31 for -2**31
    nz = f32_norm32(u);
    // |v| >= 1 is always normal: round straight away; exponent 158 - shift.
    if (v == 32'sd0) f32_from_i32 = 32'd0;
    else f32_from_i32 = f32_round(v[31], 9'd158 - {3'd0, nz[37:32]}, {nz[31:6], |nz[5:0]});
  endfunction

  // Round to an integral float, half to even (np.rint). |x| >= 2**23, inf: x itself.
  function automatic logic [31:0] f32_rint(logic [31:0] x);
    logic [7:0] f8;
    logic [4:0] f;
    logic [23:0] m, low, frac, half;
    logic inc;
    logic [30:0] body;
    // 1 <= |x| < 2**23: f = 150 - exp (1..23) fraction bits below the binary point.
    f8 = 8'd150 - x[30:23];
    f = f8[4:0];
    m = {1'b1, x[22:0]};
    low = ~(24'hffffff << f);  // mask of the fraction bits
    frac = m & low;
    half = 24'd1 << (f - 5'd1);
    inc = (frac > half) || ((frac == half) && m[f]);
    // Clear the fraction and add the rounding unit at bit f; a carry out of the fraction
    // bumps the exponent (1.5 -> 2.0), exactly as a float.
    body = {x[30:23], x[22:0] & ~low[22:0]} + ({30'd0, inc} << f);
    if (f32_is_nan(x)) f32_rint = F32_QNAN;
    else if (x[30:23] >= 8'd150) f32_rint = x;  // already integral (or inf)
    else if (x[30:23] < 8'd126) f32_rint = {x[31], 31'd0};  // |x| < 0.5: keeps -0
    // 0.5 <= |x| < 1: exactly 0.5 ties to 0, anything more rounds to 1.
    else if (x[30:23] == 8'd126) f32_rint = {x[31], (x[22:0] != 23'd0) ? F32_ONE[30:0] : 31'd0};
    else f32_rint = {x[31], body};
  endfunction

  // An integral float to int32 (exp's k). Outside the int32 range it saturates and NaN
  // gives 0; fractional inputs truncate. Neither happens for exp's k.
  function automatic logic signed [31:0] f32_to_i32_exact(logic [31:0] x);
    logic [31:0] m, n;
    m = {9'd1, x[22:0]};
    n = (x[30:23] >= 8'd150) ? (m << (x[30:23] - 8'd150)) : (m >> (8'd150 - x[30:23]));
    if (f32_is_nan(x)) f32_to_i32_exact = 32'sd0;
    else if (x[30:23] >= 8'd158) f32_to_i32_exact = x[31] ? 32'h80000000 : 32'h7fffffff;
    else if (x[30:23] < 8'd127) f32_to_i32_exact = 32'sd0;
    else f32_to_i32_exact = x[31] ? (32'd0 - n) : n;
  endfunction

  // clamp(rint(x), -qmax, +qmax) as int32 (ENCODE's quantize after the divide), exactly
  // np.clip(np.rint(x), -qmax, qmax): +-inf and |x| >= 2**31 saturate to +-qmax. qmax is
  // taken as unsigned, at most 2**31 - 1. NaN gives 0: the caller faults on NaN.
  function automatic logic signed [31:0] f32_rint_clamp(logic [31:0] x, logic [31:0] qmax);
    logic [31:0] m, n, keep, frac, half;
    logic [7:0] f8;
    logic [4:0] f;
    logic inc;
    m = {9'd1, x[22:0]};
    // 0.5 <= |x| < 2**23: f = 150 - exp (1..24) fraction bits; round half to even.
    f8 = 8'd150 - x[30:23];
    f = f8[4:0];
    keep = m >> f;
    frac = m & ~(32'hffffffff << f);
    half = 32'd1 << (f - 5'd1);
    inc = (frac > half) || ((frac == half) && keep[0]);
    n = keep + {31'd0, inc};
    if (x[30:23] >= 8'd150) n = m << (x[30:23] - 8'd150);  // integral; < 2**31 if < 158
    if (x[30:23] < 8'd126) n = 32'd0;  // |x| < 0.5
    // |x| >= 2**31 (and inf) saturates; so does anything above qmax.
    if (x[30:23] >= 8'd158 || n > qmax) n = qmax;
    if (f32_is_nan(x)) f32_rint_clamp = 32'sd0;
    else f32_rint_clamp = x[31] ? (32'd0 - n) : n;
  endfunction

  // ---------------------------------------------------------------- ldexp, exp

  // y * 2**k with one rounding (C ldexpf / np.ldexp on float32): exact unless the result
  // leaves the normal range, where f32_pack rounds once (subnormal) or gives inf.
  function automatic logic [31:0] f32_ldexp(logic [31:0] y, logic signed [31:0] k);
    logic [35:0] uy;
    logic signed [11:0] kk;
    logic [31:0] res;
    // |k| > 512 already overflows / underflows every finite nonzero y (unpacked
    // exponents lie in [-22, 254]); clamping keeps the exponent sum in 12 bits.
    kk = k[11:0];
    if (k > 32'sd512) kk = 12'sd512;
    if (k < -32'sd512) kk = -12'sd512;
    uy = f32_unpack(y);
    res = f32_pack(y[31], $signed(uy[35:24]) + kk, {uy[23:0], 3'b000});
    if (f32_is_nan(y)) f32_ldexp = F32_QNAN;
    else if (f32_is_inf(y) || f32_is_zero(y)) f32_ldexp = y;
    else f32_ldexp = res;
  endfunction

  // exp(x), docs/isa.md section 4 (Cephes expf), every operation in the written order
  // and each rounded on its own; see vec_exp in runtime/simulator.py.
  function automatic logic [31:0] f32_exp(logic [31:0] x);
    logic below, above;
    logic [31:0] xc, k, r, z, p, y, res;
    // xc = clamp(x, -104, 89) (np.clip); this also maps -inf to -104 and +inf to 89.
    below = f32_gt(F32_EXP_LO, x);
    above = f32_gt(x, F32_EXP_HI);
    xc = below ? F32_EXP_LO : (above ? F32_EXP_HI : x);
    k = f32_rint(f32_mul(xc, F32_EXP_LOG2E));
    r = f32_sub(f32_sub(xc, f32_mul(k, F32_EXP_LN2_HI)), f32_mul(k, F32_EXP_LN2_LO));
    z = f32_mul(r, r);
    p = F32_EXP_P0;
    p = f32_add(f32_mul(p, r), F32_EXP_P1);
    p = f32_add(f32_mul(p, r), F32_EXP_P2);
    p = f32_add(f32_mul(p, r), F32_EXP_P3);
    p = f32_add(f32_mul(p, r), F32_EXP_P4);
    p = f32_add(f32_mul(p, r), F32_EXP_P5);
    y = f32_add(f32_add(f32_mul(p, z), r), F32_ONE);
    res = f32_ldexp(y, f32_to_i32_exact(k));
    f32_exp = f32_is_nan(x) ? F32_QNAN : res;  // a NaN x would be clamped to 89 above
  endfunction

endpackage
/* verilator lint_on UNUSEDSIGNAL */
/* verilator lint_on DECLFILENAME */
