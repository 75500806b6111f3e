// Vector unit: ENCODE and the VEC functions over n rows of len float32 elements, L
// lanes (docs/isa.md sections 3 and 4; arithmetic from package spikec_fp32).
//
// Iterative, microcoded, pipelined: each lane has ONE float32 adder and ONE multiplier,
// each in two stages (spikec_fp32::f32_add_s1/_s2, f32_mul_s1/_s2, a register between),
// an iterative divider (DIV_BITS quotient bits per cycle) and the small operators
// (clamp, rint, ldexp, int->float, quantize, max), and issues one operation per cycle
// from a short microprogram per (function, pass); every operation reads registers and
// writes a register two cycles later (latency LAT = 2: dependent operations two steps
// apart, independent ones back to back), so the longest path is one stage of a float32
// add or multiply (the clock of docs/synthesis.md). One iterative square root per unit.
//
// The issue stage walks (row, pass, chunk of L elements, phase) and addresses the
// operand reads as before; a chunk then runs S steps in the execute stage:
//   step 0                 operands arrive from the buffers and are latched (A, B, C)
//   steps 1 .. PL          first chunk of a pass only: the row's prologue, computed by
//                          lane 0 from the previous pass's reductions (the 16 partial
//                          sums left to right, the mean, 1/sqrt(v + eps), the ENCODE
//                          scale, softmax's max over the lanes' maxima)
//   steps PL+1 .. S-1      the function's operations in the written order of the
//                          reference (runtime/simulator.py vec_*), each rounded
// The next chunk's operands are addressed in the last step, so chunks run back to back;
// results go through a write register (written two cycles after the step that issued
// them: second stage, then the write register).
// Passes: ENCODE dynamic max|x| | quantize; SOFTMAX max | sum exp | divide;
// RMSNORM sum x*x | scale; LAYERNORM sum x | sum d*d | scale (x and gamma, then beta).
// ROPE: x1 and x2, then cos and sin (y1 and y2 written two steps apart).
//
// Cycles per instruction: VEC_SETUP + sum over rows, passes and chunks of S -- the
// function's steps (isa/costmodel.py vec_chunk_steps; docs/isa.md section 7).
//
// Row maxima: each lane keeps its own running max; the prologue takes their max (a tree:
// max is order-independent except for which zero or NaN comes out, and the ISA leaves
// both open). Row sums: the ISA's 16 partial sums (element j into partial j % 16), one
// PSUM step per 16 lanes in lane order.
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
    input  logic [spikec_isa_pkg::WORD_BITS-1:0] ins,
    output logic                 done,
    output logic                 fault,
    output logic [3:0]           fault_code,
    // reads: VEC ports A and B, ACC (DEQ), SCL scalar / s_w / bias
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] va_rbase,
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] vb_rbase,
    input  logic [VEC_NB*32-1:0] va_rdata,
    input  logic [VEC_NB*32-1:0] vb_rdata,
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] acc_rbase,
    input  logic [ACC_NB*32-1:0] acc_rdata,
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] s0_rbase,
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] s1_rbase,
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] s2_rbase,
    input  logic [SCL_NB*32-1:0] s0_rdata,
    input  logic [SCL_NB*32-1:0] s1_rdata,
    input  logic [SCL_NB*32-1:0] s2_rdata,
    // writes
    output logic                 v_we,
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] v_wbase,
    output logic [VCW-1:0]       v_wcnt,
    output logic [VEC_NB*32-1:0] v_wdata,
    output logic                 i_we,
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] i_wbase,
    output logic [ICW-1:0]       i_wcnt,
    output logic [INP_NB*16-1:0] i_wdata,
    output logic                 g_we,
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] g_wbase,
    output logic [GCW-1:0]       g_wcnt,
    output logic [WGT_NB*8-1:0]  g_wdata,
    output logic                 s_we,
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] s_wbase,
    output logic [31:0]          s_wdata
);
  localparam logic [31:0] ONE = 32'h3f800000, TWO = 32'h40000000, HALF = 32'h3f000000;
  localparam logic [31:0] GELU_C0 = 32'h3f4c422a;  // f32(0.7978845608028654)
  localparam logic [31:0] GELU_C1 = 32'h3d372713;  // f32(0.044715)
  localparam int LW = $clog2(L + 1);
  // field widths (isa/fields.py, through the generated package); n and len are shared by
  // ENCODE and VEC, so their registers take the wider of the two formats' fields
  localparam int OPW = spikec_isa_pkg::HDR_OPCODE_W, AW = spikec_isa_pkg::BUF_ADDR_W;
  localparam int FUNCW = spikec_isa_pkg::VEC_FUNC_W, FLAGSW = spikec_isa_pkg::VEC_FLAGS_W;
  localparam int TW = spikec_isa_pkg::ENCODE_T_W, SCALEW = spikec_isa_pkg::ENCODE_SCALE_W;
  localparam int DSTBUFW = spikec_isa_pkg::ENCODE_DST_BUF_W;
  localparam int NW = (spikec_isa_pkg::ENCODE_N_W > spikec_isa_pkg::VEC_N_W) ? spikec_isa_pkg::ENCODE_N_W
                                                                             : spikec_isa_pkg::VEC_N_W;
  localparam int LENW = (spikec_isa_pkg::ENCODE_LEN_W > spikec_isa_pkg::VEC_LEN_W) ? spikec_isa_pkg::ENCODE_LEN_W
                                                                                   : spikec_isa_pkg::VEC_LEN_W;
  localparam int G = (L + 15) / 16;  // PSUM steps per chunk: 16 partial sums per step

  // Iterative divide and square root: quotient / root bits per cycle.
  localparam int DIV_BITS = 4;   // 28 quotient bits: 7 steps
  localparam int SQ_BITS = 3;    // 27 root bits: 9 steps
  localparam int DIV_IT = 28 / DIV_BITS;
  localparam int SQ_IT = 27 / SQ_BITS;
  localparam int DIV_LEN = DIV_IT + 2;  // DIVI, DIVS x DIV_IT, DIVF
  localparam int SQ_LEN = SQ_IT + 2;
  // Every operation that makes a value (add, multiply, the small operators, the last
  // divide / square-root step) has a latency of 2 (LAT): issued in step s, its result is
  // in its register at the end of step s + 1, so an operation that reads it runs in step
  // s + 2 or later; independent operations issue back to back. The microprograms below
  // place their operations accordingly (a NOP where nothing independent is left).
  localparam int EXP_LEN = 40;  // 17 dependent steps and the gaps between them
  localparam int TOT_LEN = 30;  // 15 dependent adds, each followed by a gap
  localparam int PG = 2 * G - 1;  // PSUM block: G steps, a gap between (they share partials)

  // kinds: ENCODE (dynamic / static scale) and the VEC functions
  localparam logic [3:0] K_ENC_DYN = 4'd0, K_ENC_STAT = 4'd1, K_COPY = 4'd2, K_ADD = 4'd3, K_MUL = 4'd4,
      K_ADDROW = 4'd5, K_MULROW = 4'd6, K_SCALE = 4'd7, K_DEQ = 4'd8, K_RMS = 4'd9, K_LN = 4'd10,
      K_SMAX = 4'd11, K_SILU = 4'd12, K_GELU = 4'd13, K_ROPE = 4'd14;
  localparam logic [3:0] FAULT_NAN = 4'd2, FAULT_INF = 4'd3, FAULT_SCALE = 4'd4, FAULT_OVERLAP = 4'd6;

  // ---------------------------------------------------------------- micro-operations
  // {op[4:0], x[4:0], y[4:0], negy, dst[3:0]}: dst = op(x, y), y negated when negy.
  localparam logic [4:0] O_NOP = 5'd0, O_ADD = 5'd1, O_MUL = 5'd2, O_RINT = 5'd3, O_CLAMP = 5'd4,
      O_LDEXP = 5'd5, O_FROMI = 5'd6, O_QUANT = 5'd7, O_MAX = 5'd8, O_MOV = 5'd9, O_DIVI = 5'd10,
      O_DIVS = 5'd11, O_DIVF = 5'd12, O_SQI = 5'd13, O_SQS = 5'd14, O_SQF = 5'd15, O_MAXT = 5'd16,
      O_PSUM = 5'd17;
  // sources
  localparam logic [4:0] X_A = 5'd0, X_B = 5'd1, X_C = 5'd2, X_D = 5'd3, X_R0 = 5'd4, X_R1 = 5'd5,
      X_R2 = 5'd6, X_R3 = 5'd7, X_T = 5'd8, X_PS0 = 5'd9, X_PSI = 5'd10, X_PSL = 5'd11,
      X_ONE = 5'd12, X_TWO = 5'd13, X_HALF = 5'd14, X_GC0 = 5'd15, X_GC1 = 5'd16, X_LOG2E = 5'd17,
      X_LN2HI = 5'd18, X_LN2LO = 5'd19, X_P0 = 5'd20, X_P1 = 5'd21, X_P2 = 5'd22, X_P3 = 5'd23,
      X_P4 = 5'd24, X_P5 = 5'd25, X_RSA = 5'd26, X_RSB = 5'd27, X_MAX = 5'd28, X_S0 = 5'd29,
      X_FLEN = 5'd30, X_FQMAX = 5'd31;
  // X_PS1 (partial sum 1, the row sum's first add) shares X_PS0's code: only tot_uop
  // step 0 reads X_PS0, always as x, and X_PS1 always as y
  localparam logic [4:0] X_PS1 = X_PS0;
  // destinations
  localparam logic [3:0] D_NONE = 4'd0, D_R0 = 4'd1, D_R1 = 4'd2, D_R2 = 4'd3, D_R3 = 4'd4, D_T = 4'd5,
      D_RSA = 4'd6, D_RSB = 4'd7, D_ENCS = 4'd8, D_W = 4'd9, D_W2 = 4'd10;

  function automatic logic [19:0] U(input logic [4:0] op, input logic [4:0] x, input logic [4:0] y,
                                    input logic negy, input logic [3:0] dst);
    U = {op, x, y, negy, dst};
  endfunction

  // exp (Cephes, docs/isa.md section 4) of source xin (negated when neg), into R0;
  // uses R0..R3 (R1 = k, R2 = r, R3 = z). EXP_LEN steps; R0 can be read one step after.
  function automatic logic [19:0] exp_uop(input int s, input logic [4:0] xin, input logic neg);
    case (s)
      0: exp_uop = U(O_CLAMP, xin, xin, neg, D_R0);
      2: exp_uop = U(O_MUL, X_R0, X_LOG2E, 1'b0, D_R1);
      4: exp_uop = U(O_RINT, X_R1, X_R1, 1'b0, D_R1);
      6: exp_uop = U(O_MUL, X_R1, X_LN2HI, 1'b0, D_R2);
      7: exp_uop = U(O_MUL, X_R1, X_LN2LO, 1'b0, D_R3);
      8: exp_uop = U(O_ADD, X_R0, X_R2, 1'b1, D_R2);
      10: exp_uop = U(O_ADD, X_R2, X_R3, 1'b1, D_R2);
      12: exp_uop = U(O_MUL, X_R2, X_R2, 1'b0, D_R3);
      13: exp_uop = U(O_MUL, X_P0, X_R2, 1'b0, D_R0);
      15: exp_uop = U(O_ADD, X_R0, X_P1, 1'b0, D_R0);
      17: exp_uop = U(O_MUL, X_R0, X_R2, 1'b0, D_R0);
      19: exp_uop = U(O_ADD, X_R0, X_P2, 1'b0, D_R0);
      21: exp_uop = U(O_MUL, X_R0, X_R2, 1'b0, D_R0);
      23: exp_uop = U(O_ADD, X_R0, X_P3, 1'b0, D_R0);
      25: exp_uop = U(O_MUL, X_R0, X_R2, 1'b0, D_R0);
      27: exp_uop = U(O_ADD, X_R0, X_P4, 1'b0, D_R0);
      29: exp_uop = U(O_MUL, X_R0, X_R2, 1'b0, D_R0);
      31: exp_uop = U(O_ADD, X_R0, X_P5, 1'b0, D_R0);
      33: exp_uop = U(O_MUL, X_R0, X_R3, 1'b0, D_R0);
      35: exp_uop = U(O_ADD, X_R0, X_R2, 1'b0, D_R0);
      37: exp_uop = U(O_ADD, X_R0, X_ONE, 1'b0, D_R0);
      39: exp_uop = U(O_LDEXP, X_R0, X_R1, 1'b0, D_R0);
      default: exp_uop = U(O_NOP, X_A, X_A, 1'b0, D_NONE);
    endcase
  endfunction

  // x / y into dst
  function automatic logic [19:0] div_uop(input int s, input logic [4:0] x, input logic [4:0] y,
                                          input logic [3:0] dst);
    if (s == 0) div_uop = U(O_DIVI, x, y, 1'b0, D_NONE);
    else if (s <= DIV_IT) div_uop = U(O_DIVS, x, y, 1'b0, D_NONE);
    else div_uop = U(O_DIVF, x, y, 1'b0, dst);
  endfunction

  // sqrt(x) into dst (unit-level square root, lane 0's x)
  function automatic logic [19:0] sqrt_uop(input int s, input logic [4:0] x, input logic [3:0] dst);
    if (s == 0) sqrt_uop = U(O_SQI, x, x, 1'b0, D_NONE);
    else if (s <= SQ_IT) sqrt_uop = U(O_SQS, x, x, 1'b0, D_NONE);
    else sqrt_uop = U(O_SQF, x, x, 1'b0, dst);
  endfunction

  // the row sum of the 16 partial sums, left to right, into T: adds in the even steps
  // (partial 1 + s/2 in step s, read through the registered X_PSI), TOT_LEN steps
  function automatic logic [19:0] tot_uop(input int s);
    if (s % 2 == 1) tot_uop = U(O_NOP, X_A, X_A, 1'b0, D_NONE);
    else if (s == 0) tot_uop = U(O_ADD, X_PS0, X_PS1, 1'b0, D_T);
    else tot_uop = U(O_ADD, X_T, X_PSI, 1'b0, D_T);
  endfunction

  // 1/sqrt(T / len + eps) into dst, after the row sum (RSQ_LEN steps, the last a gap)
  localparam int RSQ_LEN = (DIV_LEN + 1) + 2 + (SQ_LEN + 1) + (DIV_LEN + 1);
  function automatic logic [19:0] rsq_uop(input int s, input logic [3:0] dst);
    rsq_uop = U(O_NOP, X_A, X_A, 1'b0, D_NONE);
    if (s < DIV_LEN) rsq_uop = div_uop(s, X_T, X_FLEN, D_T);
    else if (s == DIV_LEN + 1) rsq_uop = U(O_ADD, X_T, X_S0, 1'b0, D_T);
    else if (s >= DIV_LEN + 3 && s < DIV_LEN + 3 + SQ_LEN) rsq_uop = sqrt_uop(s - DIV_LEN - 3, X_T, D_T);
    else if (s >= DIV_LEN + 4 + SQ_LEN && s < RSQ_LEN - 1) rsq_uop = div_uop(s - DIV_LEN - 4 - SQ_LEN, X_ONE, X_T, dst);
  endfunction

  // prologue of the first chunk of a pass: length and operations
  function automatic int pro_len(input logic [3:0] k, input logic [1:0] p);
    pro_len = 0;
    case (k)
      K_ENC_DYN: if (p == 2'd1) pro_len = 2 + DIV_LEN;
      K_SMAX: if (p == 2'd1) pro_len = 1; else if (p == 2'd2) pro_len = TOT_LEN;
      K_RMS: if (p == 2'd1) pro_len = TOT_LEN + RSQ_LEN;
      K_LN: if (p == 2'd1) pro_len = TOT_LEN + DIV_LEN + 1; else if (p == 2'd2) pro_len = TOT_LEN + RSQ_LEN;
      default: ;
    endcase
  endfunction

  function automatic logic [19:0] pro_uop(input logic [3:0] k, input logic [1:0] p, input int s);
    pro_uop = U(O_NOP, X_A, X_A, 1'b0, D_NONE);
    case (k)
      K_ENC_DYN: begin  // the scale is in rs_a one step after the prologue
        if (s == 0) pro_uop = U(O_MAXT, X_A, X_A, 1'b0, D_NONE);
        else if (s <= DIV_LEN) pro_uop = div_uop(s - 1, X_MAX, X_FQMAX, D_ENCS);
      end
      K_SMAX: pro_uop = (p == 2'd1) ? U(O_MAXT, X_A, X_A, 1'b0, D_NONE) : tot_uop(s);
      K_RMS: pro_uop = (s < TOT_LEN) ? tot_uop(s) : rsq_uop(s - TOT_LEN, D_RSA);
      K_LN: begin
        if (s < TOT_LEN) pro_uop = tot_uop(s);
        else if (p == 2'd1) begin
          if (s < TOT_LEN + DIV_LEN) pro_uop = div_uop(s - TOT_LEN, X_T, X_FLEN, D_RSA);
        end
        else pro_uop = rsq_uop(s - TOT_LEN, D_RSB);
      end
      default: ;
    endcase
  endfunction

  // body of a chunk: length (step 0, the operand latch, included) and operations
  function automatic int body_len(input logic [3:0] k, input logic [1:0] p, input logic ph, input logic bias);
    case (k)
      K_ENC_DYN: body_len = (p == 2'd0) ? 2 : 3 + DIV_LEN;
      K_ENC_STAT: body_len = 3 + DIV_LEN;
      K_DEQ: body_len = bias ? 8 : 6;
      K_RMS: body_len = (p == 2'd0) ? 3 + PG : 4;
      K_LN: body_len = (p == 2'd0) ? 1 + PG : (p == 2'd1) ? 5 + PG : (ph ? 8 : 1);
      K_SMAX: body_len = (p == 2'd0) ? 2 : (p == 2'd1) ? 4 + EXP_LEN + PG : 4 + EXP_LEN + DIV_LEN;
      K_SILU: body_len = 4 + EXP_LEN + DIV_LEN;
      K_GELU: body_len = 22 + EXP_LEN + DIV_LEN;
      K_ROPE: body_len = ph ? 7 : 1;
      default: body_len = 2;  // COPY, ADD, MUL, ADD_ROW, MUL_ROW, SCALE
    endcase
  endfunction

  // the PSUM block at the end of a body (steps st, st + 2, ...: group (s - st) / 2)
  function automatic logic [19:0] psum_uop(input int s, input int st, input logic [4:0] y);
    psum_uop = ((s - st) % 2 == 0) ? U(O_PSUM, X_PSL, y, 1'b0, D_NONE) : U(O_NOP, X_A, X_A, 1'b0, D_NONE);
  endfunction

  // operation of body step s >= 1 (step 0 latches the operands)
  function automatic logic [19:0] body_uop(input logic [3:0] k, input logic [1:0] p, input int s, input logic bias);
    int g0, d0, b;
    body_uop = U(O_NOP, X_A, X_A, 1'b0, D_NONE);
    g0 = 13 + EXP_LEN;  // GELU: the gap after exp
    d0 = g0 + 3;  // GELU: the divide
    b = d0 + DIV_LEN;  // GELU: the gap after the divide
    case (k)
      K_ENC_DYN, K_ENC_STAT: begin
        if (k == K_ENC_DYN && p == 2'd0) body_uop = U(O_MAX, X_A, X_A, 1'b0, D_NONE);
        else if (s <= DIV_LEN) body_uop = div_uop(s - 1, X_A, (k == K_ENC_DYN) ? X_RSA : X_S0, D_R0);
        else if (s == DIV_LEN + 2) body_uop = U(O_QUANT, X_R0, X_R0, 1'b0, D_W);
      end
      K_COPY: body_uop = U(O_MOV, X_A, X_A, 1'b0, D_W);
      K_ADD, K_ADDROW: body_uop = U(O_ADD, X_A, X_B, 1'b0, D_W);
      K_MUL, K_MULROW: body_uop = U(O_MUL, X_A, X_B, 1'b0, D_W);
      K_SCALE: body_uop = U(O_MUL, X_A, X_S0, 1'b0, D_W);
      K_DEQ: begin  // A = acc, B = s_w, C = bias
        case (s)
          1: body_uop = U(O_FROMI, X_A, X_A, 1'b0, D_R0);
          3: body_uop = U(O_MUL, X_R0, X_S0, 1'b0, D_R0);
          5: body_uop = U(O_MUL, X_R0, X_B, 1'b0, bias ? D_R0 : D_W);
          7: body_uop = U(O_ADD, X_R0, X_C, 1'b0, D_W);
          default: ;
        endcase
      end
      K_RMS: begin
        if (p == 2'd0) begin
          if (s == 1) body_uop = U(O_MUL, X_A, X_A, 1'b0, D_R0);
          else if (s >= 3) body_uop = psum_uop(s, 3, X_R0);
        end else begin
          if (s == 1) body_uop = U(O_MUL, X_A, X_RSA, 1'b0, D_R0);
          else if (s == 3) body_uop = U(O_MUL, X_R0, X_B, 1'b0, D_W);
        end
      end
      K_LN: begin
        if (p == 2'd0) body_uop = psum_uop(s, 1, X_A);
        else if (p == 2'd1) begin
          case (s)
            1: body_uop = U(O_ADD, X_A, X_RSA, 1'b1, D_R0);
            3: body_uop = U(O_MUL, X_R0, X_R0, 1'b0, D_R0);
            2, 4: ;
            default: body_uop = psum_uop(s, 5, X_R0);
          endcase
        end else begin  // phase 1: C = x, D = gamma (phase 0), A = beta
          case (s)
            1: body_uop = U(O_ADD, X_C, X_RSA, 1'b1, D_R0);
            3: body_uop = U(O_MUL, X_R0, X_RSB, 1'b0, D_R0);
            5: body_uop = U(O_MUL, X_R0, X_D, 1'b0, D_R0);
            7: body_uop = U(O_ADD, X_R0, X_A, 1'b0, D_W);
            default: ;
          endcase
        end
      end
      K_SMAX: begin
        if (p == 2'd0) body_uop = U(O_MAX, X_A, X_A, 1'b0, D_NONE);
        else if (s == 1) body_uop = U(O_ADD, X_A, X_MAX, 1'b1, D_R0);
        else if (s >= 3 && s < 3 + EXP_LEN) body_uop = exp_uop(s - 3, X_R0, 1'b0);
        else if (s >= 4 + EXP_LEN) begin
          if (p == 2'd1) body_uop = psum_uop(s, 4 + EXP_LEN, X_R0);
          else body_uop = div_uop(s - 4 - EXP_LEN, X_R0, X_T, D_W);
        end
      end
      K_SILU: begin
        if (s < 1 + EXP_LEN) body_uop = exp_uop(s - 1, X_A, 1'b1);
        else if (s == 2 + EXP_LEN) body_uop = U(O_ADD, X_R0, X_ONE, 1'b0, D_R0);
        else if (s >= 4 + EXP_LEN) body_uop = div_uop(s - 4 - EXP_LEN, X_A, X_R0, D_W);
      end
      K_GELU: begin
        if (s == 1) body_uop = U(O_MUL, X_A, X_A, 1'b0, D_R0);
        else if (s == 3) body_uop = U(O_MUL, X_R0, X_A, 1'b0, D_R0);
        else if (s == 5) body_uop = U(O_MUL, X_GC1, X_R0, 1'b0, D_R0);
        else if (s == 7) body_uop = U(O_ADD, X_A, X_R0, 1'b0, D_R0);
        else if (s == 9) body_uop = U(O_MUL, X_GC0, X_R0, 1'b0, D_R0);
        else if (s == 11) body_uop = U(O_ADD, X_R0, X_R0, 1'b0, D_R0);
        else if (s >= 13 && s < g0) body_uop = exp_uop(s - 13, X_R0, 1'b0);
        else if (s == g0 + 1) body_uop = U(O_ADD, X_ONE, X_R0, 1'b0, D_R0);
        else if (s >= d0 && s < b) body_uop = div_uop(s - d0, X_TWO, X_R0, D_R0);
        else if (s == b + 1) body_uop = U(O_ADD, X_ONE, X_R0, 1'b1, D_R0);
        else if (s == b + 2) body_uop = U(O_MUL, X_HALF, X_A, 1'b0, D_R1);
        else if (s == b + 3) body_uop = U(O_ADD, X_ONE, X_R0, 1'b0, D_R0);
        else if (s == b + 5) body_uop = U(O_MUL, X_R1, X_R0, 1'b0, D_W);
      end
      K_ROPE: begin  // phase 1: A = cos, B = sin; C = x1, D = x2 (phase 0)
        case (s)
          1: body_uop = U(O_MUL, X_C, X_A, 1'b0, D_R0);
          2: body_uop = U(O_MUL, X_D, X_B, 1'b0, D_R1);
          3: body_uop = U(O_MUL, X_D, X_A, 1'b0, D_R2);
          4: body_uop = U(O_MUL, X_C, X_B, 1'b0, D_R3);
          5: body_uop = U(O_ADD, X_R0, X_R1, 1'b1, D_W);
          default: body_uop = U(O_ADD, X_R2, X_R3, 1'b0, D_W2);
        endcase
      end
      default: ;
    endcase
  endfunction

  localparam logic [2:0] S_IDLE = 3'd0, S_SETUP = 3'd1, S_RUN = 3'd2, S_TAIL = 3'd3, S_DRAIN = 3'd4,
      S_FLUSH = 3'd5;
  logic [2:0] state;
  logic [31:0] setup_cnt;

  // instruction
  logic [3:0] kind;
  logic [FLAGSW-1:0] flags;
  logic [AW-1:0] f_dst, f_src0, f_src1, f_src2, f_scl;
  logic f_to_wgt, f_bias;
  logic [NW-1:0] f_n;
  logic [LENW-1:0] f_len, f_half, f_lenx;  // lenx: elements a step walks per row (len/2 for ROPE)
  logic [31:0] qmax, fqmax, flen;
  logic [1:0] npass;

  // issue stage position
  logic [NW-1:0] i_row;
  logic [1:0] i_pass;
  logic i_ph;
  logic [LENW-1:0] i_j0;
  logic [31:0] row_off, hrow_off;
  logic i_nph2, i_last_ph, i_last_chunk, i_last_pass, i_last_row, issue;

  // execute stage (registered at issue)
  logic e_busy, e_first_pass, e_first_step;
  logic [1:0] e_pass;
  logic e_ph;
  logic [LENW-1:0] e_j0;
  logic [LW-1:0] e_cnt;
  logic [AW-1:0] e_waddr, e_waddr2, e_scl;
  logic [7:0] e_up;  // step within the chunk
  logic [7:0] e_pl, e_lastup;  // prologue steps, last step (set at issue)
  logic e_last;

  // unit registers: row scalars, reductions
  logic [31:0] red_max, rs_a, rs_b, t_reg, s0q;
  logic [16*32-1:0] psum;

  // write register
  logic w_v;
  logic [AW-1:0] w_addr;
  logic [LW-1:0] w_cnt;
  logic [L*32-1:0] w_data;

  // ---------------------------------------------------------------- issue stage
  assign i_nph2 = (kind == K_ROPE) || (kind == K_LN && i_pass == 2'd2);
  assign i_last_ph = !i_nph2 || i_ph;
  assign i_last_chunk = 32'(i_j0) + L >= 32'(f_lenx);
  assign i_last_pass = (i_pass == npass - 1'b1);
  assign i_last_row = (i_row == f_n - 1'b1);
  assign issue = (state == S_RUN) && (!e_busy || e_last);

  always_comb begin
    va_rbase = AW'(32'(f_src0) + row_off + 32'(i_j0));
    vb_rbase = AW'(32'(f_src1) + row_off + 32'(i_j0));
    acc_rbase = AW'(32'(f_src0) + row_off + 32'(i_j0));
    s0_rbase = f_src1;
    s1_rbase = AW'(32'(f_src2) + 32'(i_j0));
    s2_rbase = AW'(32'(f_src2) + 32'(f_len) + 32'(i_j0));
    case (kind)
      K_ENC_STAT: s0_rbase = f_scl;
      K_DEQ: s0_rbase = (flags & FLAGSW'(spikec_isa_pkg::VEC_FLAG_PER_ROW)) != 0 ? AW'(32'(f_src1) + 32'(i_row)) : f_src1;
      K_RMS, K_LN: s0_rbase = f_src2;
      default: ;
    endcase
    if (kind == K_ADDROW || kind == K_MULROW || kind == K_RMS || kind == K_LN) vb_rbase = AW'(32'(f_src1) + 32'(i_j0));
    if (kind == K_LN && i_ph) va_rbase = AW'(32'(f_src1) + 32'(f_len) + 32'(i_j0));  // beta
    if (kind == K_ROPE) begin
      if (!i_ph) begin
        vb_rbase = AW'(32'(f_src0) + row_off + 32'(f_half) + 32'(i_j0));  // x2
      end else begin
        va_rbase = AW'(32'(f_src1) + hrow_off + 32'(i_j0));  // cos
        vb_rbase = AW'(32'(f_src2) + hrow_off + 32'(i_j0));  // sin
      end
    end
  end

  // ---------------------------------------------------------------- step decode
  // The micro-operation of each step is decoded a cycle ahead into registers (uop_q,
  // psum_g; X_PSI's partial sum, ps_i), so decoding is not in front of the float32 operators.
  logic [19:0] uop_q, uop_n;
  logic [4:0] u_op, u_x, u_y;
  logic u_neg;
  logic [3:0] u_dst;
  logic u_latch;  // step 0
  logic [7:0] psum_g, psum_g_n;  // the PSUM step's lane group (lanes 16g .. 16g+15), for L > 16
  logic [7:0] pl_n, lastup_n;  // of the chunk being issued
  localparam logic [19:0] NOP = {O_NOP, X_A, X_A, 1'b0, D_NONE};

  // the operation issued the step before, in its second stage: its destination and what
  // its write needs (a chunk's last operation completes in the next chunk's step 0)
  logic [4:0] p_op;
  logic [3:0] p_dst;
  logic [AW-1:0] p_waddr;
  logic [LW-1:0] p_cnt;
  logic [3:0] p_pbase;
  logic [7:0] p_psum_g;
  logic p_psum_first;

  assign e_last = e_busy && (e_up == e_lastup);
  assign u_latch = e_busy && (e_up == 8'd0);
  assign {u_op, u_x, u_y, u_neg, u_dst} = uop_q;

  always_comb begin
    int s, bl;
    pl_n = ((i_j0 == 0) && !i_ph) ? 8'(pro_len(kind, i_pass)) : 8'd0;
    lastup_n = 8'(int'(pl_n) + body_len(kind, i_pass, i_ph, f_bias) - 1);
    // next step of the chunk in execution
    s = int'(e_up) + 1;
    bl = body_len(kind, e_pass, e_ph, f_bias);
    uop_n = NOP;
    if (s <= int'(e_pl)) uop_n = pro_uop(kind, e_pass, s - 1);
    else uop_n = body_uop(kind, e_pass, s - int'(e_pl), f_bias);
    psum_g_n = (G > 1) ? 8'((s - int'(e_pl) - bl + PG) / 2) : 8'd0;
  end

  // partial sum of lane 0 (j0 % 16; always 0 when L is a multiple of 16)
  logic [3:0] pbase;
  assign pbase = (L % 16 == 0) ? 4'd0 : e_j0[3:0];
  logic psum_first;  // the pass's first PSUM step: partial sums start from +0
  assign psum_first = e_first_pass && (psum_g == 8'd0);

  // shared sources: partial sums 0 and 1 (the row sum's first add, which may follow
  // the last PSUM write directly) and X_PSI, registered a step ahead: the row sum's add
  // in prologue step u (= 2i + 1) reads partial i + 1
  logic [31:0] ps_i, ps0, ps1;
  assign ps0 = psum[31:0];
  assign ps1 = psum[63:32];
  always_ff @(posedge clk) ps_i <= psum[4'((e_up + 8'd2) >> 1)*32+:32];

  function automatic logic [31:0] shared_src(input logic [4:0] sel, input logic [31:0] t, input logic [31:0] p0,
                                             input logic [31:0] pi, input logic [31:0] ra, input logic [31:0] rb,
                                             input logic [31:0] mx, input logic [31:0] s0, input logic [31:0] fl,
                                             input logic [31:0] fq);
    case (sel)
      X_T: shared_src = t;
      X_PS0: shared_src = p0;
      X_PSI: shared_src = pi;
      X_ONE: shared_src = ONE;
      X_TWO: shared_src = TWO;
      X_HALF: shared_src = HALF;
      X_GC0: shared_src = GELU_C0;
      X_GC1: shared_src = GELU_C1;
      X_LOG2E: shared_src = spikec_fp32::F32_EXP_LOG2E;
      X_LN2HI: shared_src = spikec_fp32::F32_EXP_LN2_HI;
      X_LN2LO: shared_src = spikec_fp32::F32_EXP_LN2_LO;
      X_P0: shared_src = spikec_fp32::F32_EXP_P0;
      X_P1: shared_src = spikec_fp32::F32_EXP_P1;
      X_P2: shared_src = spikec_fp32::F32_EXP_P2;
      X_P3: shared_src = spikec_fp32::F32_EXP_P3;
      X_P4: shared_src = spikec_fp32::F32_EXP_P4;
      X_P5: shared_src = spikec_fp32::F32_EXP_P5;
      X_RSA: shared_src = ra;
      X_RSB: shared_src = rb;
      X_MAX: shared_src = mx;
      X_S0: shared_src = s0;
      X_FLEN: shared_src = fl;
      X_FQMAX: shared_src = fq;
      default: shared_src = 32'd0;
    endcase
  endfunction

  logic [31:0] sh_x, sh_y;
  assign sh_x = shared_src(u_x, t_reg, ps0, ps_i, rs_a, rs_b, red_max, s0q, flen, fqmax);
  assign sh_y = shared_src(u_y, t_reg, ps1, ps_i, rs_a, rs_b, red_max, s0q, flen, fqmax);

  // ---------------------------------------------------------------- lanes
  logic [L*32-1:0] lane_res;   // each lane's result of the operation issued the step before
  logic [L*32-1:0] lane_max;   // each lane's running max
  logic [L-1:0] lane_nan, lane_inf, lane_act;
  logic [31:0] sq_in;          // lane 0's x operand (square root input)

  // The micro-operation decoded once for every lane (spikec_vec_lane's one-hot selects).
  function automatic logic [8:0] lane_sel(input logic [4:0] sel);
    lane_sel = '0;
    case (sel)
      X_A: lane_sel[0] = 1'b1;
      X_B: lane_sel[1] = 1'b1;
      X_C: lane_sel[2] = 1'b1;
      X_D: lane_sel[3] = 1'b1;
      X_R0: lane_sel[4] = 1'b1;
      X_R1: lane_sel[5] = 1'b1;
      X_R2: lane_sel[6] = 1'b1;
      X_R3: lane_sel[7] = 1'b1;
      X_PSL: lane_sel[8] = 1'b1;
      default: ;  // a shared source
    endcase
  endfunction

  // uop_q, p_op, p_dst and the lanes' one-hot selects are registered together from the
  // values they take at this edge (uop_d, u_op / u_dst; NOP on reset and on a fault), so
  // no decoding sits between these registers and the lanes' operand muxes (the routed
  // critical path of `small` ran from uop_q's x field through the decode, docs/synthesis.md)
  logic [19:0] uop_d;
  logic [4:0] d_op, d_x, d_y;
  logic stop, fault_now;  // fault_now: the fault checks below
  logic [8:0] l_xsel, l_ysel;
  logic [5:0] l_one;
  logic [3:0] l_wr;
  logic l_divi, l_divs, l_max, l_res_add, l_res_mul;
  logic l_latch_deq, l_latch_cd, l_latch_ab;
  assign stop = rst || fault_now;
  assign uop_d = (!stop && e_busy && !e_last && !issue) ? uop_n : NOP;
  assign {d_op, d_x, d_y} = uop_d[19:5];
  always_ff @(posedge clk) begin
    uop_q <= uop_d;
    l_xsel <= lane_sel(d_x);
    l_ysel <= lane_sel(d_y);
    l_one <= {d_op == O_DIVF, d_op == O_QUANT, d_op == O_FROMI, d_op == O_LDEXP, d_op == O_CLAMP, d_op == O_RINT};
    l_divi <= d_op == O_DIVI;
    l_divs <= d_op == O_DIVS;
    l_max <= d_op == O_MAX;
    p_op <= stop ? O_NOP : u_op;
    p_dst <= stop ? D_NONE : u_dst;
    l_res_add <= !stop && (u_op == O_ADD || u_op == O_PSUM);
    l_res_mul <= !stop && u_op == O_MUL;
    l_wr <= stop ? 4'd0 : {u_dst == D_R3, u_dst == D_R2, u_dst == D_R1, u_dst == D_R0};
  end
  assign l_latch_deq = u_latch && kind == K_DEQ;
  assign l_latch_cd = u_latch && kind != K_DEQ && (kind == K_ROPE || (kind == K_LN && e_pass == 2'd2)) && !e_ph;
  assign l_latch_ab = u_latch && !l_latch_deq && !l_latch_cd;

  genvar gl;
  generate
    for (gl = 0; gl < L; gl++) begin : g_lane
      logic [3:0] pidx;
      logic [31:0] psl, x;
      logic act;
      assign act = LW'(gl) < e_cnt;
      assign lane_act[gl] = LW'(gl) < p_cnt;  // of the PSUM write (a step later)
      assign pidx = 4'(pbase + 4'(gl % 16));
      assign psl = psum_first ? 32'd0 : psum[pidx*32+:32];
      spikec_vec_lane #(.DIV_BITS(DIV_BITS)) u_lane (
          .clk(clk), .x_sel(l_xsel), .y_sel(l_ysel), .y_neg(u_neg), .sh_x(sh_x), .sh_y(sh_y), .psl(psl),
          .one_sel(l_one), .div_init(l_divi), .div_step(l_divs), .max_en(l_max),
          .max_abs(kind == K_ENC_DYN), .max_neg_inf(kind == K_SMAX), .first_pass(e_first_pass), .act(act),
          .qmax(qmax), .latch_deq(l_latch_deq), .latch_cd(l_latch_cd), .latch_ab(l_latch_ab),
          .va(va_rdata[gl*32+:32]), .vb(vb_rdata[gl*32+:32]), .acc(acc_rdata[gl*32+:32]),
          .s1(s1_rdata[gl*32+:32]), .s2(s2_rdata[gl*32+:32]),
          .res_add(l_res_add), .res_mul(l_res_mul), .res_wr(l_wr),
          .res(lane_res[gl*32+:32]), .lmax(lane_max[gl*32+:32]), .x(x), .nan_in(lane_nan[gl]),
          .inf_in(lane_inf[gl]));
      if (gl == 0) begin : g_sq
        assign sq_in = x;
      end
    end
  endgenerate

  // ---------------------------------------------------------------- square root (unit)
  logic sq_spec;
  logic [31:0] sq_specv;
  logic signed [11:0] sq_e;
  logic [53:0] sq_rad;
  logic [29:0] sq_rem;
  logic [26:0] sq_root;
  logic [31:0] o_sqrt, sqrt_q;
  always_ff @(posedge clk) sqrt_q <= o_sqrt;
  assign o_sqrt = sq_spec ? sq_specv : spikec_fp32::f32_pack(1'b0, sq_e, {sq_root[26:1], sq_root[0] | (sq_rem != 30'd0)});

  always_ff @(posedge clk) begin
    if (u_op == O_SQI) begin
      logic [35:0] ux;
      logic signed [11:0] ue;
      ux = spikec_fp32::f32_unpack(sq_in);
      ue = $signed(ux[35:24]) - 12'sd127;
      sq_rad <= {ue[0] ? {ux[23:0], 1'b0} : {1'b0, ux[23:0]}, 29'd0};
      sq_rem <= 30'd0;
      sq_root <= 27'd0;
      sq_e <= (ue >>> 1) + 12'sd127;
      sq_spec <= 1'b1;
      if (spikec_fp32::f32_is_nan(sq_in)) sq_specv <= spikec_fp32::F32_QNAN;
      else if (spikec_fp32::f32_is_zero(sq_in)) sq_specv <= sq_in;
      else if (sq_in[31]) sq_specv <= spikec_fp32::F32_QNAN;
      else if (spikec_fp32::f32_is_inf(sq_in)) sq_specv <= sq_in;
      else sq_spec <= 1'b0;
    end
    if (u_op == O_SQS) begin
      logic [53:0] rad;
      logic [29:0] rem, trial;
      logic [30:0] diff;
      logic [26:0] root;
      rad = sq_rad;
      rem = sq_rem;
      root = sq_root;
      for (int i = 0; i < SQ_BITS; i++) begin
        rem = {rem[27:0], rad[53:52]};
        rad = {rad[51:0], 2'b00};
        trial = {1'b0, root, 2'b01};
        diff = {1'b0, rem} - {1'b0, trial};
        if (!diff[30]) rem = diff[29:0];
        root = {root[25:0], !diff[30]};
      end
      sq_rad <= rad;
      sq_rem <= rem;
      sq_root <= root;
    end
  end

  // ---------------------------------------------------------------- unit results
  // max of the lanes' maxima (a tree), lane 0's result for the row scalars
  function automatic logic [31:0] max_tree(input logic [L*32-1:0] v);
    logic [L*32-1:0] t;
    t = v;
    for (int s = 1; s < L; s = s * 2)
      for (int i = 0; i + s < L; i = i + 2 * s) t[i*32+:32] = spikec_fp32::f32_max(t[i*32+:32], t[(i+s)*32+:32]);
    max_tree = t[31:0];
  endfunction

  logic [31:0] res0, unit_res;
  assign res0 = lane_res[31:0];
  assign unit_res = (p_op == O_SQF) ? sqrt_q : res0;

  logic lane_nan_any, lane_inf_any, f_bad_scale, overlap_bad;
  assign lane_nan_any = |lane_nan;
  assign lane_inf_any = |lane_inf;
  assign f_bad_scale = (kind == K_ENC_STAT) &&
      !(spikec_fp32::f32_is_finite(s0_rdata[31:0]) && spikec_fp32::f32_gt(s0_rdata[31:0], 32'd0));
  always_comb begin
    fault_now = 1'b0;
    fault_code = '0;
    if (u_latch && e_first_step && f_bad_scale) begin
      fault_now = 1'b1;
      fault_code = FAULT_SCALE;
    end else if (u_latch && (kind == K_ENC_DYN || kind == K_ENC_STAT) && lane_nan_any) begin
      fault_now = 1'b1;
      fault_code = FAULT_NAN;
    end else if (u_latch && kind == K_ENC_DYN && lane_inf_any) begin
      fault_now = 1'b1;
      fault_code = FAULT_INF;
    end
    if (state == S_SETUP && overlap_bad) begin
      fault_now = 1'b1;
      fault_code = FAULT_OVERLAP;
    end
  end
  assign fault = fault_now;

  always_ff @(posedge clk) begin
    if (u_latch) s0q <= s0_rdata[31:0];
    case (p_dst)
      D_T: t_reg <= unit_res;
      D_RSA: rs_a <= unit_res;
      D_RSB: rs_b <= unit_res;
      D_ENCS: rs_a <= spikec_fp32::f32_gt(res0, 32'd0) ? res0 : ONE;  // all-zero row (or underflow): 1
      default: ;
    endcase
    if (u_op == O_MAXT) red_max <= max_tree(lane_max);
    if (p_op == O_PSUM) begin
      if (p_psum_first) psum <= '0;
      for (int l = 0; l < L; l++) begin
        if (lane_act[l] && (l / 16) == int'(p_psum_g)) psum[4'(p_pbase + 4'(l % 16))*32+:32] <= lane_res[l*32+:32];
      end
    end
  end

  // ---------------------------------------------------------------- writes
  always_comb begin
    v_we = 1'b0;
    v_wbase = w_addr;
    v_wcnt = VCW'(w_cnt);
    v_wdata = '0;
    i_we = 1'b0;
    i_wbase = w_addr;
    i_wcnt = ICW'(w_cnt);
    i_wdata = '0;
    g_we = 1'b0;
    g_wbase = w_addr;
    g_wcnt = GCW'(w_cnt);
    g_wdata = '0;
    for (int l = 0; l < L; l++) begin
      v_wdata[l*32+:32] = w_data[l*32+:32];
      i_wdata[l*16+:16] = w_data[l*32+:16];
      g_wdata[l*8+:8] = w_data[l*32+:8];
    end
    if (kind == K_ENC_DYN || kind == K_ENC_STAT) begin
      i_we = w_v && !f_to_wgt;
      g_we = w_v && f_to_wgt;
    end else begin
      v_we = w_v;
    end
    // ENCODE's dynamic scale, the step after the prologue computed it
    s_we = e_busy && kind == K_ENC_DYN && e_pass == 2'd1 && e_first_pass && e_up == e_pl + 8'd1;
    s_wbase = e_scl;
    s_wdata = rs_a;
  end

  assign done = (state == S_DRAIN);

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
      e_busy <= 1'b0;
      w_v <= 1'b0;
    end else begin
      // second stage (a fault stops the device: what is in flight is dropped; p_op,
      // p_dst: see uop_d)
      p_waddr <= (u_dst == D_W2) ? e_waddr2 : e_waddr;
      p_cnt <= e_cnt;
      p_pbase <= pbase;
      p_psum_g <= psum_g;
      p_psum_first <= psum_first;
      // write register
      w_v <= (p_dst == D_W || p_dst == D_W2);
      w_addr <= p_waddr;
      w_cnt <= p_cnt;
      w_data <= lane_res;

      // execute stage: step counter, the next step's micro-operation
      if (issue) begin
        e_busy <= 1'b1;
        e_up <= 8'd0;
        e_pl <= pl_n;
        e_lastup <= lastup_n;
      end else if (e_last) e_busy <= 1'b0;
      else if (e_busy) e_up <= e_up + 8'd1;
      psum_g <= psum_g_n;

      // issue stage
      if (issue) begin
        e_pass <= i_pass;
        e_ph <= i_ph;
        e_j0 <= i_j0;
        e_first_pass <= (i_j0 == 0) && !i_ph;
        e_first_step <= (i_row == 0) && (i_pass == 0) && (i_j0 == 0) && !i_ph;
        e_cnt <= (32'(f_lenx) - 32'(i_j0) < L) ? LW'(f_lenx - i_j0) : LW'(L);
        e_waddr <= AW'(32'(f_dst) + row_off + 32'(i_j0));
        e_waddr2 <= AW'(32'(f_dst) + row_off + 32'(f_half) + 32'(i_j0));
        e_scl <= AW'(32'(f_scl) + 32'(i_row));
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
          end else i_j0 <= i_j0 + LENW'(L);
        end else i_ph <= 1'b1;
      end
      case (state)
        S_SETUP: begin
          if (setup_cnt <= 1) state <= S_RUN;
          setup_cnt <= setup_cnt - 1;
        end
        S_TAIL: if (e_last) state <= S_FLUSH;
        S_FLUSH: state <= S_DRAIN;  // the last operation's second stage
        S_DRAIN: state <= S_IDLE;
        default: ;
      endcase
      if (fault_now) begin
        state <= S_IDLE;
        e_busy <= 1'b0;
        w_v <= 1'b0;
      end

      if (start) begin : decode
        logic enc;
        logic [FUNCW-1:0] func;
        logic [TW-1:0] t;
        logic [LENW-1:0] len;
        enc = ins[spikec_isa_pkg::HDR_OPCODE_LSB+:spikec_isa_pkg::HDR_OPCODE_W] == OPW'(spikec_isa_pkg::OP_ENCODE);
        func = ins[spikec_isa_pkg::VEC_FUNC_LSB+:spikec_isa_pkg::VEC_FUNC_W];
        t = ins[spikec_isa_pkg::ENCODE_T_LSB+:spikec_isa_pkg::ENCODE_T_W];
        len = enc ? LENW'(ins[spikec_isa_pkg::ENCODE_LEN_LSB+:spikec_isa_pkg::ENCODE_LEN_W])
                  : LENW'(ins[spikec_isa_pkg::VEC_LEN_LSB+:spikec_isa_pkg::VEC_LEN_W]);
        flags <= ins[spikec_isa_pkg::VEC_FLAGS_LSB+:spikec_isa_pkg::VEC_FLAGS_W];
        f_bias <= !enc && (ins[spikec_isa_pkg::VEC_FLAGS_LSB+:spikec_isa_pkg::VEC_FLAGS_W] &
                           FLAGSW'(spikec_isa_pkg::VEC_FLAG_BIAS)) != 0;
        f_len <= len;
        f_half <= len >> 1;
        f_lenx <= (!enc && func == FUNCW'(spikec_isa_pkg::VEC_FUNC_ROPE)) ? (len >> 1) : len;
        flen <= spikec_fp32::f32_from_i32(32'(len));
        qmax <= (32'd1 << t) - 32'd1;
        fqmax <= spikec_fp32::f32_from_i32((32'd1 << t) - 32'd1);
        if (enc) begin
          kind <= ins[spikec_isa_pkg::ENCODE_SCALE_LSB+:spikec_isa_pkg::ENCODE_SCALE_W] == SCALEW'(spikec_isa_pkg::SCALE_STATIC)
              ? K_ENC_STAT : K_ENC_DYN;
          npass <= ins[spikec_isa_pkg::ENCODE_SCALE_LSB+:spikec_isa_pkg::ENCODE_SCALE_W] == SCALEW'(spikec_isa_pkg::SCALE_STATIC)
              ? 2'd1 : 2'd2;
          f_src0 <= AW'(ins[spikec_isa_pkg::ENCODE_SRC_LSB+:spikec_isa_pkg::ENCODE_SRC_W]);
          f_dst <= AW'(ins[spikec_isa_pkg::ENCODE_DST_LSB+:spikec_isa_pkg::ENCODE_DST_W]);
          f_to_wgt <= ins[spikec_isa_pkg::ENCODE_DST_BUF_LSB+:spikec_isa_pkg::ENCODE_DST_BUF_W] ==
              DSTBUFW'(spikec_isa_pkg::ENCODE_DST_WGT);
          f_n <= NW'(ins[spikec_isa_pkg::ENCODE_N_LSB+:spikec_isa_pkg::ENCODE_N_W]);
          f_scl <= AW'(ins[spikec_isa_pkg::ENCODE_SCL_LSB+:spikec_isa_pkg::ENCODE_SCL_W]);
          f_src1 <= '0;
          f_src2 <= '0;
        end else begin
          f_src0 <= AW'(ins[spikec_isa_pkg::VEC_SRC0_LSB+:spikec_isa_pkg::VEC_SRC0_W]);
          f_src1 <= AW'(ins[spikec_isa_pkg::VEC_SRC1_LSB+:spikec_isa_pkg::VEC_SRC1_W]);
          f_src2 <= AW'(ins[spikec_isa_pkg::VEC_SRC2_LSB+:spikec_isa_pkg::VEC_SRC2_W]);
          f_dst <= AW'(ins[spikec_isa_pkg::VEC_DST_LSB+:spikec_isa_pkg::VEC_DST_W]);
          f_n <= NW'(ins[spikec_isa_pkg::VEC_N_LSB+:spikec_isa_pkg::VEC_N_W]);
          f_to_wgt <= 1'b0;
          f_scl <= '0;
          npass <= 2'd1;
          case (func)
            FUNCW'(spikec_isa_pkg::VEC_FUNC_COPY): kind <= K_COPY;
            FUNCW'(spikec_isa_pkg::VEC_FUNC_ADD): kind <= K_ADD;
            FUNCW'(spikec_isa_pkg::VEC_FUNC_MUL): kind <= K_MUL;
            FUNCW'(spikec_isa_pkg::VEC_FUNC_ADD_ROW): kind <= K_ADDROW;
            FUNCW'(spikec_isa_pkg::VEC_FUNC_MUL_ROW): kind <= K_MULROW;
            FUNCW'(spikec_isa_pkg::VEC_FUNC_SCALE): kind <= K_SCALE;
            FUNCW'(spikec_isa_pkg::VEC_FUNC_DEQ): kind <= K_DEQ;
            FUNCW'(spikec_isa_pkg::VEC_FUNC_RMSNORM): begin kind <= K_RMS; npass <= 2'd2; end
            FUNCW'(spikec_isa_pkg::VEC_FUNC_LAYERNORM): begin kind <= K_LN; npass <= 2'd3; end
            FUNCW'(spikec_isa_pkg::VEC_FUNC_SOFTMAX): begin kind <= K_SMAX; npass <= 2'd3; end
            FUNCW'(spikec_isa_pkg::VEC_FUNC_SILU): kind <= K_SILU;
            FUNCW'(spikec_isa_pkg::VEC_FUNC_GELU): kind <= K_GELU;
            default: kind <= K_ROPE;
          endcase
        end
        i_row <= '0;
        i_pass <= '0;
        i_ph <= 1'b0;
        i_j0 <= '0;
        row_off <= '0;
        hrow_off <= '0;
        e_busy <= 1'b0;
        // the first issue cycle, the last operation's second stage and the last write
        // come out of the setup time; at least one setup cycle remains for the overlap
        // check
        setup_cnt <= (SETUP > 4) ? SETUP - 3 : 1;
        state <= S_SETUP;
      end
    end
  end
endmodule
