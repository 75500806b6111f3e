// One lane of the vector unit (rtl/spikec_vecu.sv): one float32 adder and one multiplier
// in two stages each, an iterative divider, the small operators (rint, clamp, ldexp,
// int->float, quantize), the running max and the lane's registers A..D, R0..R3.
//
// A module of its own, with no parameter that differs between lanes, so synthesis with
// the hierarchy kept (`synth_ecp5 -noflatten`, scripts/synth_report.py) maps ONE lane
// and counts it L times, instead of L copies inside spikec_vecu (docs/synthesis.md).
// spikec_vecu decodes the micro-operation once for all lanes into the one-hot selects
// below; the lane holds no micro-operation codes.
//
// Timing (unchanged from the lanes written inline): an operation issued in step s reads
// its operands through x_sel / y_sel, its first stage (or the small operator's result)
// is registered at the end of step s, and `res` shows the second stage's result during
// step s + 1, selected by res_add / res_mul (else the small operator's register).
module spikec_vec_lane #(
    parameter int DIV_BITS = 4  // quotient bits per divide step (spikec_vecu's DIV_BITS)
) (
    input  logic        clk,
    // operand selects, one-hot: bit 0 A, 1 B, 2 C, 3 D, 4 R0, 5 R1, 6 R2, 7 R3, 8 the
    // lane's partial sum (psl); none set: the unit's shared source (sh_x / sh_y)
    input  logic [8:0]  x_sel,
    input  logic [8:0]  y_sel,
    input  logic        y_neg,     // y negated (sign flipped) for the adder and clamp
    input  logic [31:0] sh_x,
    input  logic [31:0] sh_y,
    input  logic [31:0] psl,       // this lane's partial sum (+0 at a pass's first PSUM)
    // the small operator registered this step, one-hot: bit 0 rint, 1 clamp, 2 ldexp,
    // 3 int->float, 4 quantize, 5 the divider's result; none set: x (MOV)
    input  logic [5:0]  one_sel,
    input  logic        div_init,  // O_DIVI: unpack x / y, special cases
    input  logic        div_step,  // O_DIVS: DIV_BITS quotient bits
    input  logic        max_en,    // O_MAX: fold x (|x| with max_abs) into the running max
    input  logic        max_abs,
    input  logic        max_neg_inf,  // the running max starts at -inf (else +0)
    input  logic        first_pass,   // the first pass's first chunk restarts the max
    input  logic        act,          // this lane holds an element of the chunk
    input  logic [31:0] qmax,
    // operand latch (step 0): DEQ (A acc, B s_w, C bias); C, D from ports A, B; A, B
    input  logic        latch_deq,
    input  logic        latch_cd,
    input  logic        latch_ab,
    input  logic [31:0] va,
    input  logic [31:0] vb,
    input  logic [31:0] acc,
    input  logic [31:0] s1,
    input  logic [31:0] s2,
    // second stage (the operation issued the step before)
    input  logic        res_add,   // O_ADD or O_PSUM
    input  logic        res_mul,   // O_MUL
    input  logic [3:0]  res_wr,    // write res into R0..R3 (bit i: Ri)
    output logic [31:0] res,
    output logic [31:0] lmax,
    output logic [31:0] x,         // the x operand (lane 0's feeds the unit's square root)
    output logic        nan_in,    // va is NaN (ENCODE's operand check), when act
    output logic        inf_in     // va is +-inf, when act
);
  localparam logic [31:0] NEG_INF = 32'hff800000;
  logic [31:0] ra, rb, rc, rd, r0, r1, r2, r3;
  logic [31:0] y, yn;
  logic [31:0] o_rint, o_clamp, o_ldexp, o_fromi, o_quant, o_one;
  logic [70:0] add_q;  // pipeline registers: the adder's and multiplier's first stages,
  logic [93:0] mul_q;  // the other operators' results
  logic [31:0] one_q;
  // iterative divider state
  logic dv_s, dv_spec;
  logic [31:0] dv_specv;
  logic signed [11:0] dv_e;
  logic [24:0] dv_r, dv_mb;
  logic [27:0] dv_q;
  logic [31:0] o_div;

  function automatic logic [31:0] operand(input logic [8:0] sel, input logic [31:0] a, input logic [31:0] b,
                                          input logic [31:0] c, input logic [31:0] d, input logic [31:0] q0,
                                          input logic [31:0] q1, input logic [31:0] q2, input logic [31:0] q3,
                                          input logic [31:0] p, input logic [31:0] sh);
    operand = sh;
    if (sel[0]) operand = a;
    if (sel[1]) operand = b;
    if (sel[2]) operand = c;
    if (sel[3]) operand = d;
    if (sel[4]) operand = q0;
    if (sel[5]) operand = q1;
    if (sel[6]) operand = q2;
    if (sel[7]) operand = q3;
    if (sel[8]) operand = p;
  endfunction

  assign x = operand(x_sel, ra, rb, rc, rd, r0, r1, r2, r3, psl, sh_x);
  assign y = operand(y_sel, ra, rb, rc, rd, r0, r1, r2, r3, psl, sh_y);
  assign yn = y_neg ? {~y[31], y[30:0]} : y;

  // one call per operator, selected afterwards; add and multiply in two stages
  assign o_rint = spikec_fp32::f32_rint(x);
  assign o_clamp = spikec_fp32::f32_gt(spikec_fp32::F32_EXP_LO, yn) ? spikec_fp32::F32_EXP_LO :
                   (spikec_fp32::f32_gt(yn, spikec_fp32::F32_EXP_HI) ? spikec_fp32::F32_EXP_HI : yn);
  assign o_ldexp = spikec_fp32::f32_ldexp(x, spikec_fp32::f32_to_i32_exact(y));
  assign o_fromi = spikec_fp32::f32_from_i32(x);
  assign o_quant = 32'(spikec_fp32::f32_rint_clamp(x, qmax));

  // divider: the last step rounds and packs
  always_comb begin
    logic [26:0] m;
    logic signed [11:0] e;
    logic sticky;
    sticky = dv_r != 25'd0;
    e = dv_e;
    m = {dv_q[26:1], dv_q[0] | sticky};
    if (dv_q[27]) begin
      m = {dv_q[27:2], dv_q[1] | dv_q[0] | sticky};
      e = e + 12'sd1;
    end
    o_div = dv_spec ? dv_specv : spikec_fp32::f32_pack(dv_s, e, m);
  end

  always_comb begin
    o_one = x;  // MOV
    if (one_sel[0]) o_one = o_rint;
    if (one_sel[1]) o_one = o_clamp;
    if (one_sel[2]) o_one = o_ldexp;
    if (one_sel[3]) o_one = o_fromi;
    if (one_sel[4]) o_one = o_quant;
    if (one_sel[5]) o_one = o_div;
  end
  always_ff @(posedge clk) begin
    add_q <= spikec_fp32::f32_add_s1(x, yn);
    mul_q <= spikec_fp32::f32_mul_s1(x, y);
    one_q <= o_one;
  end
  // second stage, the step after the issue
  assign res = res_add ? spikec_fp32::f32_add_s2(add_q) : (res_mul ? spikec_fp32::f32_mul_s2(mul_q) : one_q);

  // operand checks of ENCODE (step 0, read data)
  assign nan_in = act && spikec_fp32::f32_is_nan(va);
  assign inf_in = act && !spikec_fp32::f32_is_finite(va);

  always_ff @(posedge clk) begin
    if (latch_deq) begin
      ra <= acc;
      rb <= s1;
      rc <= s2;
    end else if (latch_cd) begin
      rc <= va;
      rd <= vb;
    end else if (latch_ab) begin
      ra <= va;
      rb <= vb;
    end
    if (res_wr[0]) r0 <= res;
    if (res_wr[1]) r1 <= res;
    if (res_wr[2]) r2 <= res;
    if (res_wr[3]) r3 <= res;
    if (max_en) begin
      logic [31:0] init, v;
      init = max_neg_inf ? NEG_INF : 32'd0;
      v = max_abs ? spikec_fp32::f32_abs(x) : x;
      if (first_pass) lmax <= act ? spikec_fp32::f32_max(init, v) : init;
      else if (act) lmax <= spikec_fp32::f32_max(lmax, v);
    end
    // divider
    if (div_init) begin
      logic [35:0] ua, ub;
      ua = spikec_fp32::f32_unpack(x);
      ub = spikec_fp32::f32_unpack(y);
      dv_s <= x[31] ^ y[31];
      dv_e <= $signed(ua[35:24]) - $signed(ub[35:24]) + 12'sd126;
      dv_r <= {1'b0, ua[23:0]};
      dv_mb <= {1'b0, ub[23:0]};
      dv_q <= 28'd0;
      dv_spec <= 1'b1;
      if (spikec_fp32::f32_is_nan(x) || spikec_fp32::f32_is_nan(y)) dv_specv <= spikec_fp32::F32_QNAN;
      else if ((spikec_fp32::f32_is_inf(x) && spikec_fp32::f32_is_inf(y)) ||
               (spikec_fp32::f32_is_zero(x) && spikec_fp32::f32_is_zero(y)))
        dv_specv <= spikec_fp32::F32_QNAN;
      else if (spikec_fp32::f32_is_inf(x) || spikec_fp32::f32_is_zero(y)) dv_specv <= {x[31] ^ y[31], 8'hff, 23'd0};
      else if (spikec_fp32::f32_is_zero(x) || spikec_fp32::f32_is_inf(y)) dv_specv <= {x[31] ^ y[31], 31'd0};
      else dv_spec <= 1'b0;
    end
    if (div_step) begin
      logic [24:0] r;
      logic [25:0] diff;
      logic [27:0] q;
      r = dv_r;
      q = dv_q;
      for (int i = 0; i < DIV_BITS; i++) begin
        diff = {1'b0, r} - {1'b0, dv_mb};  // borrow: r < mb
        q = {q[26:0], !diff[25]};
        if (!diff[25]) r = diff[24:0];
        r = {r[23:0], 1'b0};
      end
      dv_r <= r;
      dv_q <= q;
    end
  end
endmodule
