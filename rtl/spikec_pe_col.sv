// One column of the SPMM engine's PE array (rtl/spikec_spmm.sv): R accumulate-only PEs
// and the column's adders, combinational.
//
// A module of its own so that synthesis with the hierarchy kept (`synth_ecp5 -noflatten`,
// scripts/synth_report.py) maps ONE column and counts it C times, instead of R x C PEs
// inside spikec_spmm (docs/synthesis.md).
//
// sum = the sum over rows of +w / -w / 0 where the row spikes +1 / -1 / not (adds only);
// TC-LIF shifts it by the plane's weight 2**bsel, rate IF does not. hsum adds it to the
// head token's partial sum h (or starts from 0); wbval is what the write-back adds into
// ACC: hsum, less 2**t times the column sum of the weights for rate IF (its folded offset,
// docs/isa.md section 3). int32 arithmetic wraps, as the reference's.
module spikec_pe_col #(
    parameter int R = 4,
    parameter int TW = 4  // width of the t field (spikec_isa_pkg::SPMM_T_W)
) (
    input  logic [R*8-1:0]  w,        // the column's weights this cycle, row r at r*8 (int8)
    input  logic [R-1:0]    sp,       // spike +1 per row
    input  logic [R-1:0]    sn,       // spike -1 per row
    input  logic [3:0]      bsel,     // TC-LIF: the plane processed this cycle
    input  logic            f_if,     // rate IF (else TC-LIF)
    input  logic [TW-1:0]   f_t,
    input  logic            tok_zero, // the token has no live plane: hsum = 0
    input  logic            hd_started,
    input  logic [31:0]     h,        // the head token's partial sum of this column
    output logic [31:0]     hsum,
    output logic [31:0]     wbval
);
  always_comb begin
    logic [31:0] acc_c, sum_w, w32, colv;
    acc_c = '0;
    sum_w = '0;
    for (int r = 0; r < R; r++) begin
      w32 = 32'($signed(w[r*8+:8]));
      if (sp[r]) acc_c = acc_c + w32;
      if (sn[r]) acc_c = acc_c - w32;
      sum_w = sum_w + w32;
    end
    colv = f_if ? acc_c : (acc_c << bsel);
    hsum = tok_zero ? 32'd0 : ((hd_started ? h : 32'd0) + colv);
    wbval = f_if ? (hsum - (sum_w << f_t)) : hsum;
  end
endmodule
