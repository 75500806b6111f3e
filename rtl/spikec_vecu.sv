// Vector unit: ENCODE and the VEC functions over n rows of len float32 elements, L
// lanes per cycle (docs/isa.md sections 3 and 4; arithmetic from package spikec_fp32).
//
// Two-stage pipeline. The issue stage walks (row, pass, chunk of L elements, phase) and
// addresses the operand reads; one cycle later the execute stage has the read data,
// computes the L lanes and writes the result (or updates the row's reductions). A
// function makes 1 to 3 passes over each row:
//   ENCODE dynamic: max|x| | quantize          SOFTMAX: max | sum exp | divide
//   RMSNORM: sum x*x | scale                    LAYERNORM: sum x | sum d*d | scale
// Row sums use the ISA's 16 partial sums (element j into lane j % 16, lanes added left
// to right). A value derived from a pass's reductions (ENCODE's scale, the mean, 1/sqrt)
// is computed in the first execute cycle of the next pass and held for the row.
// Steps needing more operands than the two VEC read ports give take two phases: ROPE
// (x1 and x2, then cos and sin; writes y1 and y2 of a half-chunk), LAYERNORM's last pass
// (x and gamma, then beta).
//
// Cycles: VEC_SETUP + n * (passes * ceil(len / L)) -- the cost model -- except ROPE
// (2 * ceil(len/2 / L) per row) and LAYERNORM (4 instead of 3 chunk passes per row).
//
// Faults (the device stops): NaN in an ENCODE input; +-inf in an ENCODE input with a
// dynamic scale; a static ENCODE scale that is not finite and > 0; a VEC destination
// that overlaps a source other than exactly in place (this streaming unit would read
// results it already wrote; the ISA reads all operands first).
module spikec_vecu #(
    parameter int L = 4,
    parameter int SETUP = 4,
    parameter int VEC_NB = 4,
    parameter int ACC_NB = 4,
    parameter int SCL_NB = 4,
    parameter int INP_NB = 4,
    parameter int WGT_NB = 8,
    parameter int VCW = $clog2(VEC_NB) + 1,
    parameter int ICW = $clog2(INP_NB) + 1,
    parameter int GCW = $clog2(WGT_NB) + 1
) (
    input  logic                 clk,
    input  logic                 rst,
    input  logic                 start,
    input  logic [127:0]         ins,
    output logic                 done,
    output logic                 fault,
    output logic [3:0]           fault_code,
    // reads: VEC ports A and B, ACC (DEQ), SCL scalar / s_w / bias
    output logic [19:0]          va_rbase,
    output logic [19:0]          vb_rbase,
    input  logic [VEC_NB*32-1:0] va_rdata,
    input  logic [VEC_NB*32-1:0] vb_rdata,
    output logic [19:0]          acc_rbase,
    input  logic [ACC_NB*32-1:0] acc_rdata,
    output logic [19:0]          s0_rbase,
    output logic [19:0]          s1_rbase,
    output logic [19:0]          s2_rbase,
    input  logic [SCL_NB*32-1:0] s0_rdata,
    input  logic [SCL_NB*32-1:0] s1_rdata,
    input  logic [SCL_NB*32-1:0] s2_rdata,
    // writes
    output logic                 v_we,
    output logic [19:0]          v_wbase,
    output logic [VCW-1:0]       v_wcnt,
    output logic [VEC_NB*32-1:0] v_wdata,
    output logic                 i_we,
    output logic [19:0]          i_wbase,
    output logic [ICW-1:0]       i_wcnt,
    output logic [INP_NB*16-1:0] i_wdata,
    output logic                 g_we,
    output logic [19:0]          g_wbase,
    output logic [GCW-1:0]       g_wcnt,
    output logic [WGT_NB*8-1:0]  g_wdata,
    output logic                 s_we,
    output logic [19:0]          s_wbase,
    output logic [31:0]          s_wdata
);
  localparam logic [31:0] ONE = 32'h3f800000, TWO = 32'h40000000, HALF = 32'h3f000000;
  localparam logic [31:0] NEG_INF = 32'hff800000;
  localparam logic [31:0] GELU_C0 = 32'h3f4c422a;  // f32(0.7978845608028654)
  localparam logic [31:0] GELU_C1 = 32'h3d372713;  // f32(0.044715)
  localparam int LW = $clog2(L + 1);

  // kinds: ENCODE (dynamic / static scale) and the VEC functions
  localparam logic [3:0] K_ENC_DYN = 4'd0, K_ENC_STAT = 4'd1, K_COPY = 4'd2, K_ADD = 4'd3, K_MUL = 4'd4,
      K_ADDROW = 4'd5, K_MULROW = 4'd6, K_SCALE = 4'd7, K_DEQ = 4'd8, K_RMS = 4'd9, K_LN = 4'd10,
      K_SMAX = 4'd11, K_SILU = 4'd12, K_GELU = 4'd13, K_ROPE = 4'd14;
  localparam logic [3:0] FAULT_NAN = 4'd2, FAULT_INF = 4'd3, FAULT_SCALE = 4'd4, FAULT_OVERLAP = 4'd6;

  localparam logic [2:0] S_IDLE = 3'd0, S_SETUP = 3'd1, S_RUN = 3'd2, S_TAIL = 3'd3, S_DRAIN = 3'd4;
  logic [2:0] state;
  logic [31:0] setup_cnt;

  // instruction
  logic [3:0] kind;
  logic [2:0] flags;
  logic [19:0] f_dst, f_src0, f_src1, f_src2, f_scl;
  logic f_to_wgt;
  logic [11:0] f_n;
  logic [13:0] f_len, f_half, f_lenx;  // lenx: elements a step walks per row (len/2 for ROPE)
  logic [31:0] qmax, fqmax, flen;
  logic [1:0] npass;

  // issue stage position
  logic [11:0] i_row;
  logic [1:0] i_pass;
  logic i_ph;
  logic [13:0] i_j0;
  logic [31:0] row_off, hrow_off;
  logic i_nph2, i_last_ph, i_last_chunk, i_last_pass, i_last_row;

  // execute stage (registered from the issue stage)
  logic e_valid, e_first_pass, e_first_step, e_last;
  logic [1:0] e_pass;
  logic e_ph;
  logic [13:0] e_j0;
  logic [LW-1:0] e_cnt;
  logic [19:0] e_waddr, e_waddr2, e_scl;

  // row state
  logic [31:0] red_max, rs_a, rs_b;
  logic [16*32-1:0] psum;
  logic [L*32-1:0] opa0, opb0;  // phase-0 operands of two-phase steps
  logic y2_valid;
  logic [19:0] y2_addr;
  logic [LW-1:0] y2_cnt;
  logic [L*32-1:0] y2_data;

  // ---------------------------------------------------------------- issue stage
  assign i_nph2 = (kind == K_ROPE) || (kind == K_LN && i_pass == 2'd2);
  assign i_last_ph = !i_nph2 || i_ph;
  assign i_last_chunk = 32'(i_j0) + L >= 32'(f_lenx);
  assign i_last_pass = (i_pass == npass - 1'b1);
  assign i_last_row = (i_row == f_n - 1'b1);

  always_comb begin
    va_rbase = 20'(32'(f_src0) + row_off + 32'(i_j0));
    vb_rbase = 20'(32'(f_src1) + row_off + 32'(i_j0));
    acc_rbase = 20'(32'(f_src0) + row_off + 32'(i_j0));
    s0_rbase = f_src1;
    s1_rbase = 20'(32'(f_src2) + 32'(i_j0));
    s2_rbase = 20'(32'(f_src2) + 32'(f_len) + 32'(i_j0));
    case (kind)
      K_ENC_STAT: s0_rbase = f_scl;
      K_DEQ: s0_rbase = (flags & 3'(spikec_isa_pkg::VEC_FLAG_PER_ROW)) != 0 ? 20'(32'(f_src1) + 32'(i_row)) : f_src1;
      K_RMS, K_LN: s0_rbase = f_src2;
      default: ;
    endcase
    if (kind == K_ADDROW || kind == K_MULROW || kind == K_RMS || kind == K_LN) vb_rbase = 20'(32'(f_src1) + 32'(i_j0));
    if (kind == K_LN && i_ph) va_rbase = 20'(32'(f_src1) + 32'(f_len) + 32'(i_j0));  // beta
    if (kind == K_ROPE) begin
      if (!i_ph) begin
        vb_rbase = 20'(32'(f_src0) + row_off + 32'(f_half) + 32'(i_j0));  // x2
      end else begin
        va_rbase = 20'(32'(f_src1) + hrow_off + 32'(i_j0));  // cos
        vb_rbase = 20'(32'(f_src2) + hrow_off + 32'(i_j0));  // sin
      end
    end
  end

  // ---------------------------------------------------------------- execute stage
  function automatic logic [31:0] lane(input logic [VEC_NB*32-1:0] v, input int l);
    lane = v[l*32+:32];
  endfunction

  logic first_pass_val;
  logic [31:0] tot, mean, rsq, enc_s, scal_a, scal_b, s0;
  logic [L*32-1:0] y;  // lane results (float32, or codes for ENCODE)
  logic [L*32-1:0] y2;
  logic [16*32-1:0] psum_n;
  logic [31:0] max_n;
  logic lane_nan, lane_inf, f_bad_scale, fault_now, overlap_bad;
  logic latch_a, latch_b;

  assign s0 = s0_rdata[31:0];
  // LAYERNORM keeps its mean (rs_a) through pass 2, whose derived value is rs_b
  assign latch_b = e_first_pass && kind == K_LN && e_pass == 2'd2;
  assign latch_a = e_first_pass && !latch_b;

  // values derived from the previous pass's reductions
  always_comb begin
    tot = psum[31:0];
    for (int l = 1; l < 16; l++) tot = spikec_fp32::f32_add(tot, psum[l*32+:32]);
    mean = spikec_fp32::f32_div(tot, flen);
    rsq = spikec_fp32::f32_div(ONE, spikec_fp32::f32_sqrt(spikec_fp32::f32_add(mean, s0)));
    enc_s = spikec_fp32::f32_div(red_max, fqmax);
    if (!spikec_fp32::f32_gt(enc_s, 32'd0)) enc_s = ONE;  // all-zero row (or underflow)
    case (kind)
      K_ENC_DYN: scal_a = enc_s;
      K_SMAX: scal_a = tot;
      K_RMS: scal_a = rsq;
      default: scal_a = mean;  // LAYERNORM pass 1: the mean
    endcase
    if (!e_first_pass) scal_a = rs_a;
    scal_b = (e_first_pass && e_pass == 2'd2) ? rsq : rs_b;  // LAYERNORM pass 2: 1/sqrt(var + eps)
  end

  always_comb begin
    logic [31:0] a, b, xe, ex, dn, dd, dv, u, d, t1, sc, term;
    logic [3:0] pi;
    logic sum_pass, max_pass, act;
    lane_nan = 1'b0;
    lane_inf = 1'b0;
    y = '0;
    y2 = '0;
    sum_pass = (kind == K_RMS && e_pass == 0) || (kind == K_LN && e_pass != 2) || (kind == K_SMAX && e_pass == 1);
    max_pass = (kind == K_ENC_DYN || kind == K_SMAX) && e_pass == 0;
    // a reduction starts from +0.0 (sums, max|x|) or -inf (softmax's max) in its pass
    psum_n = (sum_pass && e_first_pass) ? '0 : psum;
    max_n = (max_pass && e_first_pass) ? ((kind == K_SMAX) ? NEG_INF : 32'd0) : red_max;
    for (int l = 0; l < L; l++) begin
      d = '0;
      sc = '0;
      term = '0;
      pi = '0;
      act = e_valid && (LW'(l) < e_cnt);
      a = lane(va_rdata, l);
      b = lane(vb_rdata, l);
      if (act && (kind == K_ENC_DYN || kind == K_ENC_STAT) && spikec_fp32::f32_is_nan(a)) lane_nan = 1'b1;
      if (act && kind == K_ENC_DYN && !spikec_fp32::f32_is_finite(a)) lane_inf = 1'b1;
      // shared exp and divide of the lane
      u = spikec_fp32::f32_mul(GELU_C0, spikec_fp32::f32_add(a, spikec_fp32::f32_mul(GELU_C1,
          spikec_fp32::f32_mul(spikec_fp32::f32_mul(a, a), a))));
      case (kind)
        K_SILU: xe = {~a[31], a[30:0]};
        K_GELU: xe = spikec_fp32::f32_add(u, u);
        default: xe = spikec_fp32::f32_sub(a, red_max);
      endcase
      ex = spikec_fp32::f32_exp(xe);
      t1 = spikec_fp32::f32_add(ONE, ex);
      case (kind)
        K_SILU: begin dn = a; dd = t1; end
        K_GELU: begin dn = TWO; dd = t1; end
        K_SMAX: begin dn = ex; dd = scal_a; end
        default: begin dn = a; dd = (kind == K_ENC_DYN) ? scal_a : s0; end  // ENCODE: x / s
      endcase
      dv = spikec_fp32::f32_div(dn, dd);
      case (kind)
        K_ENC_DYN, K_ENC_STAT: y[l*32+:32] = 32'(spikec_fp32::f32_rint_clamp(dv, qmax));
        K_COPY: y[l*32+:32] = a;
        K_ADD, K_ADDROW: y[l*32+:32] = spikec_fp32::f32_add(a, b);
        K_MUL, K_MULROW: y[l*32+:32] = spikec_fp32::f32_mul(a, b);
        K_SCALE: y[l*32+:32] = spikec_fp32::f32_mul(a, s0);
        K_DEQ: begin
          sc = spikec_fp32::f32_mul(spikec_fp32::f32_mul(spikec_fp32::f32_from_i32(acc_rdata[l*32+:32]), s0),
                                    s1_rdata[l*32+:32]);
          if ((flags & 3'(spikec_isa_pkg::VEC_FLAG_BIAS)) != 0) sc = spikec_fp32::f32_add(sc, s2_rdata[l*32+:32]);
          y[l*32+:32] = sc;
        end
        K_RMS: y[l*32+:32] = spikec_fp32::f32_mul(spikec_fp32::f32_mul(a, scal_a), b);
        K_LN: begin
          // pass 2, phase 1: x and gamma from phase 0, beta now
          d = spikec_fp32::f32_sub(opa0[l*32+:32], rs_a);
          y[l*32+:32] = spikec_fp32::f32_add(spikec_fp32::f32_mul(spikec_fp32::f32_mul(d, scal_b), opb0[l*32+:32]), a);
        end
        K_SMAX: y[l*32+:32] = dv;
        K_SILU: y[l*32+:32] = dv;
        K_GELU: y[l*32+:32] = spikec_fp32::f32_mul(spikec_fp32::f32_mul(HALF, a),
                                                   spikec_fp32::f32_add(ONE, spikec_fp32::f32_sub(ONE, dv)));
        K_ROPE: begin
          // phase 1: a = cos, b = sin; x1, x2 from phase 0
          y[l*32+:32] = spikec_fp32::f32_sub(spikec_fp32::f32_mul(opa0[l*32+:32], a), spikec_fp32::f32_mul(opb0[l*32+:32], b));
          y2[l*32+:32] = spikec_fp32::f32_add(spikec_fp32::f32_mul(opb0[l*32+:32], a), spikec_fp32::f32_mul(opa0[l*32+:32], b));
        end
        default: ;
      endcase
      // reductions
      if (act && sum_pass) begin
        if (kind == K_RMS) term = spikec_fp32::f32_mul(a, a);
        else if (kind == K_SMAX) term = ex;
        else if (e_pass == 0) term = a;  // LAYERNORM: sum x
        else begin
          d = spikec_fp32::f32_sub(a, scal_a);  // LAYERNORM: sum (x - mu)^2
          term = spikec_fp32::f32_mul(d, d);
        end
        pi = 4'(32'(e_j0) + 32'(l));
        psum_n[pi*32+:32] = spikec_fp32::f32_add(psum_n[pi*32+:32], term);
      end
      if (act && max_pass) max_n = spikec_fp32::f32_max(max_n, (kind == K_ENC_DYN) ? spikec_fp32::f32_abs(a) : a);
    end
  end
  // GELU's th = 1 - 2 / (exp(u + u) + 1): y above uses f32_sub(ONE, dv) as th.

  assign f_bad_scale = (kind == K_ENC_STAT) && !(spikec_fp32::f32_is_finite(s0) && spikec_fp32::f32_gt(s0, 32'd0));
  always_comb begin
    fault_now = 1'b0;
    fault_code = '0;
    if (e_valid && e_first_step && f_bad_scale) begin
      fault_now = 1'b1;
      fault_code = FAULT_SCALE;
    end else if (e_valid && lane_nan) begin
      fault_now = 1'b1;
      fault_code = FAULT_NAN;
    end else if (e_valid && lane_inf) begin
      fault_now = 1'b1;
      fault_code = FAULT_INF;
    end
    if (state == S_SETUP && overlap_bad) begin
      fault_now = 1'b1;
      fault_code = FAULT_OVERLAP;
    end
  end
  assign fault = fault_now;

  // which execute cycles write: the last pass of a row, phase 1 of two-phase steps
  logic e_writes;
  assign e_writes = e_valid && (e_pass == npass - 1'b1) && (!((kind == K_ROPE) || (kind == K_LN)) || e_ph) && !fault_now;

  always_comb begin
    v_we = 1'b0;
    v_wbase = e_waddr;
    v_wcnt = VCW'(e_cnt);
    v_wdata = '0;
    i_we = 1'b0;
    i_wbase = e_waddr;
    i_wcnt = ICW'(e_cnt);
    i_wdata = '0;
    g_we = 1'b0;
    g_wbase = e_waddr;
    g_wcnt = GCW'(e_cnt);
    g_wdata = '0;
    for (int l = 0; l < L; l++) begin
      v_wdata[l*32+:32] = y[l*32+:32];
      i_wdata[l*16+:16] = y[l*32+:16];
      g_wdata[l*8+:8] = y[l*32+:8];
    end
    if (kind == K_ENC_DYN || kind == K_ENC_STAT) begin
      i_we = e_writes && !f_to_wgt;
      g_we = e_writes && f_to_wgt;
    end else begin
      v_we = e_writes;
    end
    if (y2_valid) begin  // ROPE's second half, one cycle after the first
      v_we = 1'b1;
      v_wbase = y2_addr;
      v_wcnt = VCW'(y2_cnt);
      for (int l = 0; l < L; l++) v_wdata[l*32+:32] = y2_data[l*32+:32];
    end
    s_we = e_valid && kind == K_ENC_DYN && e_pass == 2'd1 && e_first_pass && !fault_now;
    s_wbase = e_scl;
    s_wdata = scal_a;
  end

  assign done = ((state == S_TAIL) && (kind != K_ROPE) && !fault_now) || (state == S_DRAIN);

  // ---------------------------------------------------------------- overlap check
  // dst [n, len] against each VEC source: disjoint, or (for [n, len] operands read
  // element by element) exactly in place.
  always_comb begin
    logic [31:0] d0, d1, a0, a1;
    overlap_bad = 1'b0;
    a0 = '0;
    a1 = '0;
    d0 = 32'(f_dst);
    d1 = d0 + 32'(f_n) * 32'(f_len);
    if (kind != K_ENC_DYN && kind != K_ENC_STAT && kind != K_DEQ) begin
      // src0 [n, len]
      a0 = 32'(f_src0);
      a1 = a0 + 32'(f_n) * 32'(f_len);
      if (d0 < a1 && a0 < d1 && d0 != a0) overlap_bad = 1'b1;
      // src1: [n, len] (ADD, MUL), [len] (rows), [2 len] (LAYERNORM), [n, len/2] x2 (ROPE)
      a0 = 32'(f_src1);
      case (kind)
        K_ADD, K_MUL: a1 = a0 + 32'(f_n) * 32'(f_len);
        K_ADDROW, K_MULROW, K_RMS: a1 = a0 + 32'(f_len);
        K_LN: a1 = a0 + 2 * 32'(f_len);
        K_ROPE: a1 = a0 + 32'(f_n) * 32'(f_half);
        default: a1 = a0;
      endcase
      // (a1 == a0: src1 is not a VEC operand of this function)
      if (a0 < a1 && d0 < a1 && a0 < d1 && !((kind == K_ADD || kind == K_MUL) && d0 == a0)) overlap_bad = 1'b1;
      if (kind == K_ROPE) begin
        a0 = 32'(f_src2);
        a1 = a0 + 32'(f_n) * 32'(f_half);
        if (d0 < a1 && a0 < d1) overlap_bad = 1'b1;
      end
    end
  end

  // ---------------------------------------------------------------- control
  always_ff @(posedge clk) begin
    if (rst) begin
      state <= S_IDLE;
      e_valid <= 1'b0;
      y2_valid <= 1'b0;
    end else begin
      // execute stage: reductions, row scalars, phase-0 operands, ROPE's second half
      if (e_valid) begin
        psum <= psum_n;
        red_max <= max_n;
        if (latch_a) rs_a <= scal_a;
        if (latch_b) rs_b <= scal_b;
        if (!e_ph) begin
          opa0 <= va_rdata[L*32-1:0];
          opb0 <= vb_rdata[L*32-1:0];
        end
      end
      y2_valid <= e_writes && kind == K_ROPE;
      y2_addr <= e_waddr2;
      y2_cnt <= e_cnt;
      y2_data <= y2;

      // issue stage
      e_valid <= (state == S_RUN);
      e_pass <= i_pass;
      e_ph <= i_ph;
      e_j0 <= i_j0;
      e_first_pass <= (i_j0 == 0) && !i_ph;
      e_first_step <= (i_row == 0) && (i_pass == 0) && (i_j0 == 0) && !i_ph;
      e_cnt <= (32'(f_lenx) - 32'(i_j0) < L) ? LW'(f_lenx - i_j0) : LW'(L);
      e_waddr <= 20'(32'(f_dst) + row_off + 32'(i_j0));
      e_waddr2 <= 20'(32'(f_dst) + row_off + 32'(f_half) + 32'(i_j0));
      e_scl <= 20'(32'(f_scl) + 32'(i_row));
      case (state)
        S_SETUP: begin
          if (setup_cnt <= 1) state <= S_RUN;
          setup_cnt <= setup_cnt - 1;
        end
        S_RUN: begin
          if (i_last_ph) begin
            i_ph <= 1'b0;
            if (i_last_chunk) begin
              i_j0 <= '0;
              if (i_last_pass) begin
                i_pass <= '0;
                i_row <= i_row + 1'b1;
                row_off <= row_off + 32'(f_len);
                hrow_off <= hrow_off + 32'(f_half);
                if (i_last_row) state <= S_TAIL;
              end else i_pass <= i_pass + 1'b1;
            end else i_j0 <= i_j0 + 14'(L);
          end else i_ph <= 1'b1;
        end
        S_TAIL: state <= (kind == K_ROPE) ? S_DRAIN : S_IDLE;
        S_DRAIN: state <= S_IDLE;
        default: ;
      endcase
      if (fault_now) begin
        state <= S_IDLE;
        e_valid <= 1'b0;
      end

      if (start) begin : decode
        logic enc;
        logic [4:0] func;
        logic [3:0] t;
        logic [13:0] len;
        enc = ins[2:0] == 3'(spikec_isa_pkg::OP_ENCODE);
        func = ins[spikec_isa_pkg::VEC_FUNC_LSB+:5];
        t = ins[spikec_isa_pkg::ENCODE_T_LSB+:4];
        len = enc ? ins[spikec_isa_pkg::ENCODE_LEN_LSB+:14] : ins[spikec_isa_pkg::VEC_LEN_LSB+:14];
        flags <= ins[spikec_isa_pkg::VEC_FLAGS_LSB+:3];
        f_len <= len;
        f_half <= len >> 1;
        f_lenx <= (!enc && func == 5'(spikec_isa_pkg::VEC_FUNC_ROPE)) ? (len >> 1) : len;
        flen <= spikec_fp32::f32_from_i32(32'(len));
        qmax <= (32'd1 << t) - 32'd1;
        fqmax <= spikec_fp32::f32_from_i32((32'd1 << t) - 32'd1);
        if (enc) begin
          kind <= ins[spikec_isa_pkg::ENCODE_SCALE_LSB] == 1'(spikec_isa_pkg::SCALE_STATIC) ? K_ENC_STAT : K_ENC_DYN;
          npass <= ins[spikec_isa_pkg::ENCODE_SCALE_LSB] == 1'(spikec_isa_pkg::SCALE_STATIC) ? 2'd1 : 2'd2;
          f_src0 <= 20'(ins[spikec_isa_pkg::ENCODE_SRC_LSB+:18]);
          f_dst <= ins[spikec_isa_pkg::ENCODE_DST_LSB+:20];
          f_to_wgt <= ins[spikec_isa_pkg::ENCODE_DST_BUF_LSB] == 1'(spikec_isa_pkg::ENCODE_DST_WGT);
          f_n <= ins[spikec_isa_pkg::ENCODE_N_LSB+:12];
          f_scl <= 20'(ins[spikec_isa_pkg::ENCODE_SCL_LSB+:18]);
          f_src1 <= '0;
          f_src2 <= '0;
        end else begin
          f_src0 <= 20'(ins[spikec_isa_pkg::VEC_SRC0_LSB+:18]);
          f_src1 <= 20'(ins[spikec_isa_pkg::VEC_SRC1_LSB+:18]);
          f_src2 <= 20'(ins[spikec_isa_pkg::VEC_SRC2_LSB+:18]);
          f_dst <= 20'(ins[spikec_isa_pkg::VEC_DST_LSB+:18]);
          f_n <= ins[spikec_isa_pkg::VEC_N_LSB+:12];
          f_to_wgt <= 1'b0;
          f_scl <= '0;
          npass <= 2'd1;
          case (func)
            5'(spikec_isa_pkg::VEC_FUNC_COPY): kind <= K_COPY;
            5'(spikec_isa_pkg::VEC_FUNC_ADD): kind <= K_ADD;
            5'(spikec_isa_pkg::VEC_FUNC_MUL): kind <= K_MUL;
            5'(spikec_isa_pkg::VEC_FUNC_ADD_ROW): kind <= K_ADDROW;
            5'(spikec_isa_pkg::VEC_FUNC_MUL_ROW): kind <= K_MULROW;
            5'(spikec_isa_pkg::VEC_FUNC_SCALE): kind <= K_SCALE;
            5'(spikec_isa_pkg::VEC_FUNC_DEQ): kind <= K_DEQ;
            5'(spikec_isa_pkg::VEC_FUNC_RMSNORM): begin kind <= K_RMS; npass <= 2'd2; end
            5'(spikec_isa_pkg::VEC_FUNC_LAYERNORM): begin kind <= K_LN; npass <= 2'd3; end
            5'(spikec_isa_pkg::VEC_FUNC_SOFTMAX): begin kind <= K_SMAX; npass <= 2'd3; end
            5'(spikec_isa_pkg::VEC_FUNC_SILU): kind <= K_SILU;
            5'(spikec_isa_pkg::VEC_FUNC_GELU): kind <= K_GELU;
            default: kind <= K_ROPE;
          endcase
        end
        i_row <= '0;
        i_pass <= '0;
        i_ph <= 1'b0;
        i_j0 <= '0;
        row_off <= '0;
        hrow_off <= '0;
        e_valid <= 1'b0;
        y2_valid <= 1'b0;
        // the pipeline's last cycle (and ROPE's second write) come out of the setup time;
        // at least one setup cycle remains for the overlap check
        setup_cnt <= (!enc && func == 5'(spikec_isa_pkg::VEC_FUNC_ROPE)) ? ((SETUP > 3) ? SETUP - 2 : 1) : ((SETUP > 2) ? SETUP - 1 : 1);
        state <= S_SETUP;
      end
    end
  end
endmodule
