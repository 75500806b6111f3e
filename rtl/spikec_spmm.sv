// SPMM engine: the TC-LIF / rate-IF spike encoder feeding a weight-stationary PE array
// of R x C accumulate-only PEs (docs/isa.md sections 3 and 7).
//
// Loop order (the cost model's): for each m-chunk of C output features, for each
// k-chunk of R input features: load the R x C weight tile (R cycles, one weight row per
// cycle; C cycles with wtrans, one column per cycle), then one cycle per *live* spike
// vector -- the R spikes of one token, one plane, this k-chunk -- skipping all-zero
// vectors. A PE adds or subtracts its weight where its spike is +1 / -1 (no
// multiplier); each column's sum of the R PEs is shifted by the plane's weight 2**b
// (TC-LIF, planes MSB first; a shift, not a multiply) and added into the token's
// partial sums. When a token's last live plane is done its C partial sums are added into
// ACC (read-modify-write, overlapped with the next token). Because int32 addition wraps
// and is associative, these per-tile partial sums equal the reference's Horner order.
//
// Rate IF: plane tau spikes where tau < c = q + 2**t; the live planes are 0..max(c)-1.
// The folded offset -2**t * sum_kk W[kk, j] is applied per tile from the tile's column
// sums (the adder tree over the loaded weights), which adds up to the whole-K fold.
//
// Cycles: SPMM_SETUP + per tile (R or C load cycles + live vectors + one cycle for each
// token with no live vector in that chunk) -- the cost model's formula, plus that last
// term (0 for rate IF, rare for TC-LIF).
module spikec_spmm #(
    parameter int R = 4,
    parameter int C = 4,
    parameter int SETUP = 4,
    parameter int INP_NB = 4,
    parameter int WGT_NB = 8,
    parameter int ACC_NB = 4,
    parameter int ACW = $clog2(ACC_NB) + 1
) (
    input  logic                  clk,
    input  logic                  rst,
    input  logic                  start,
    input  logic [spikec_isa_pkg::WORD_BITS-1:0] ins,
    output logic                  done,
    // INP read (codes), WGT read (weights), ACC read-modify-write
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] inp_rbase,
    input  logic [INP_NB*16-1:0]  inp_rdata,
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] wgt_rbase,
    input  logic [WGT_NB*8-1:0]   wgt_rdata,
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] acc_rbase,
    input  logic [ACC_NB*32-1:0]  acc_rdata,
    output logic                  acc_we,
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] acc_wbase,
    output logic [ACW-1:0]        acc_wcnt,
    output logic [ACC_NB*32-1:0]  acc_wdata,
    // counter increments this cycle (counted on the first m-chunk only, as the simulator)
    output logic [15:0]           cnt_spikes,
    output logic                  cnt_vector,
    output logic [15:0]           cnt_skipped
);
  localparam int SETUP_W = (SETUP > 1) ? SETUP - 1 : 0;  // the ACC write-back takes the last cycle
  localparam int LDW = $clog2(((R > C) ? R : C) + 1);
  // field widths (isa/fields.py, through the generated package)
  localparam int INPW = spikec_isa_pkg::SPMM_INP_W, WGTW = spikec_isa_pkg::SPMM_WGT_W;
  localparam int ACCW = spikec_isa_pkg::SPMM_ACC_W, NW = spikec_isa_pkg::SPMM_N_W;
  localparam int KW = spikec_isa_pkg::SPMM_K_W, MW = spikec_isa_pkg::SPMM_M_W;
  localparam int STRIDEW = spikec_isa_pkg::SPMM_ACC_STRIDE_W, TW = spikec_isa_pkg::SPMM_T_W;
  localparam int NEURONW = spikec_isa_pkg::SPMM_NEURON_W, WFMTW = spikec_isa_pkg::SPMM_WFMT_W;
  localparam int ACCMODEW = spikec_isa_pkg::SPMM_ACC_MODE_W;
  localparam int AW = spikec_isa_pkg::BUF_ADDR_W;

  localparam logic [2:0] S_IDLE = 3'd0, S_SETUP = 3'd1, S_WLOAD = 3'd2, S_TOK = 3'd3, S_DRAIN = 3'd4;
  logic [2:0] state;
  logic [31:0] setup_cnt;

  // fields
  logic [INPW-1:0] f_inp;
  logic [ACCW-1:0] f_acc;
  logic [WGTW-1:0] f_wgt;
  logic [NW-1:0] f_n;
  logic [KW-1:0] f_k;
  logic [MW-1:0] f_m;
  logic [STRIDEW-1:0] f_stride;
  logic [TW-1:0] f_t;
  logic f_if, f_int4, f_trans, f_accum;
  logic [15:0] qmax;

  // tile position (processing side)
  logic [MW-1:0] mi_col;  // mi * C
  logic [KW-1:0] ki_row;  // ki * R
  logic [31:0] m_base_e, tile_e, ld_e;  // weight element indexes
  logic [31:0] step_k, step_m, step_ld;
  logic [LDW-1:0] ld;
  logic [LDW-1:0] ld_n;  // load cycles per tile
  logic first_m;

  // weights: wreg[r][c] at (r*C + c)*8; wnext = wreg with this cycle's arriving row/column
  logic [R*C*8-1:0] wreg, wnext;
  logic pend_valid;
  logic [LDW-1:0] pend_idx;
  logic pend_nib;
  logic pend_lane_ok;  // wtrans=0: row kk < k; wtrans=1: column j < m
  logic [KW-1:0] pend_row0;  // ki*R of the pending tile
  logic [MW-1:0] pend_col0;  // mi*C of the pending tile

  // x * K for the constant K (R or C) as shifts and adds: no multiplier in this module
  function automatic logic [31:0] times_const(input logic [31:0] x, input int K);
    times_const = '0;
    for (int b = 0; b < 11; b++) if (((K >> b) & 1) != 0) times_const = times_const + (x << b);
  endfunction

  // ---------------------------------------------------------------- weight loading
  logic [31:0] ld_byte;
  assign ld_byte = f_int4 ? (ld_e >> 1) : ld_e;
  assign wgt_rbase = AW'(32'(f_wgt) + ld_byte);

  always_comb begin
    logic [3:0] nib;
    logic [7:0] w8;
    logic [31:0] ni;
    ni = '0;
    nib = '0;
    w8 = '0;
    wnext = wreg;
    if (pend_valid) begin
      for (int e = 0; e < ((R > C) ? R : C); e++) begin
        ni = 32'(pend_nib) + 32'(e);
        nib = ni[0] ? wgt_rdata[(ni>>1)*8+4+:4] : wgt_rdata[(ni>>1)*8+:4];
        w8 = f_int4 ? {{4{nib[3]}}, nib} : wgt_rdata[e*8+:8];
        // constant part-selects under a compare with pend_idx: an indexed write
        // `wnext[(pend_idx*C+e)*8+:8]` makes Yosys build a shifter over all R*C*8 bits
        // per element (for `default`, 16 x 16 PEs, more than its 4 GiB)
        if (!f_trans && e < C) begin
          if (!(pend_lane_ok && (32'(pend_col0) + 32'(e) < 32'(f_m)))) w8 = 8'd0;
          for (int r = 0; r < R; r++)
            if (32'(pend_idx) == 32'(r)) wnext[(r*C+e)*8+:8] = w8;
        end
        if (f_trans && e < R) begin
          if (!(pend_lane_ok && (32'(pend_row0) + 32'(e) < 32'(f_k)))) w8 = 8'd0;
          for (int c = 0; c < C; c++)
            if (32'(pend_idx) == 32'(c)) wnext[(e*C+c)*8+:8] = w8;
        end
      end
    end
  end

  // ---------------------------------------------------------------- code prefetch
  // A two-entry queue of token codes, read one token ahead through all tiles in the
  // processing order, so a new token's first plane follows the previous token's last.
  // Each entry holds the codes already clamped to +-qmax, with what the head token's
  // control needs from them (the OR of the magnitudes, the rate-IF counts c = q + 2**t and
  // their maximum), computed as the read arrives: the clamp, the OR and the max over R
  // rows are then off the processing side's path (qmax -> clamp -> OR -> plane select ->
  // tok_done was the routed critical path, docs/synthesis.md).
  localparam int EW = R * 16 + R * 9 + 15 + 9;
  logic [EW-1:0] pq0, pq1;  // pq0 is the head: {maxc, ormag, cval, q}
  logic [1:0] pq_cnt;
  logic rd_inflight, rd_on;
  logic [NW-1:0] rd_i;
  logic [KW-1:0] rd_row0;  // k-chunk start of the reads
  logic [MW-1:0] rd_mleft;  // output features left to read for (m-chunks of C)
  logic [31:0] rd_addr;
  logic pop;
  logic [EW-1:0] arriving;
  logic [KW-1:0] rd_row_q;  // the k-chunk of the read in flight

  always_comb begin
    logic signed [15:0] c16;
    logic signed [15:0] qm;
    logic [15:0] a;
    logic [14:0] orm;
    logic [8:0] cv, mx;
    logic live;
    qm = $signed(qmax);
    orm = '0;
    mx = '0;
    arriving = '0;
    for (int r = 0; r < R; r++) begin
      // rows beyond k (last chunk) carry no spikes: code 0, and in IF no count (c = 0)
      live = 32'(rd_row_q) + 32'(r) < 32'(f_k);
      c16 = live ? $signed(inp_rdata[r*16+:16]) : 16'sd0;
      if (c16 > qm) c16 = qm;
      if (c16 < -qm) c16 = -qm;
      arriving[r*16+:16] = c16;
      a = c16[15] ? 16'(-c16) : 16'(c16);
      orm = orm | a[14:0];
      cv = live ? 9'(c16 + (16'sd1 <<< f_t)) : 9'd0;
      arriving[R*16+r*9+:9] = cv;
      if (cv > mx) mx = cv;
    end
    arriving[R*25+:15] = orm;
    arriving[R*25+15+:9] = mx;
  end

  logic rd_issue;
  assign rd_issue = rd_on && (32'(pq_cnt) + 32'(rd_inflight) - 32'(pop) < 2);
  assign inp_rbase = AW'(rd_addr);

  // ---------------------------------------------------------------- head token
  logic [NW-1:0] tok_i;
  logic hd_started;
  logic [14:0] rem;
  logic [7:0] tau;
  logic [C*32-1:0] h;
  logic [R*16-1:0] q;  // clamped codes of the head
  logic [R*15-1:0] mag;
  logic [R-1:0] neg;
  logic [R*9-1:0] cval;  // IF: c = q + 2**t (0 for padding rows)
  logic [14:0] ormag, cur_rem;
  logic [8:0] maxc;
  logic [7:0] cur_tau;
  logic [3:0] bsel;  // TC-LIF: the bit (plane) processed this cycle
  logic [R-1:0] sp, sn;  // spike +1 / -1 per row
  logic tok_zero, tok_last, tok_active, tok_done;
  logic [C*32-1:0] hsum, wbval;

  always_comb begin
    logic signed [15:0] c16;
    logic [15:0] a;
    for (int r = 0; r < R; r++) begin
      c16 = $signed(pq0[r*16+:16]);  // clamped on arrival
      q[r*16+:16] = c16;
      neg[r] = c16[15];
      a = c16[15] ? 16'(-c16) : 16'(c16);
      mag[r*15+:15] = a[14:0];
    end
    // padding rows hold code 0 but must not spike in IF: their c was set to 0 on arrival
    cval = pq0[R*16+:R*9];
    ormag = pq0[R*25+:15];
    maxc = pq0[R*25+15+:9];
  end

  assign cur_rem = hd_started ? rem : ormag;
  assign cur_tau = hd_started ? tau : 8'd0;
  always_comb begin
    bsel = '0;
    for (int b = 0; b < 15; b++) if (cur_rem[b]) bsel = 4'(b);
  end
  assign tok_active = (state == S_TOK) && (pq_cnt != 0);
  assign tok_zero = !f_if && (cur_rem == 0);
  assign tok_last = f_if ? (9'(cur_tau) + 9'd1 >= maxc) : ((cur_rem & ~(15'd1 << bsel)) == 0);
  assign tok_done = tok_active && (tok_zero || tok_last);
  assign pop = tok_done;

  always_comb begin
    for (int r = 0; r < R; r++) begin
      if (f_if) begin
        sp[r] = 9'(cur_tau) < cval[r*9+:9];
        sn[r] = 1'b0;
      end else begin
        sp[r] = mag[r*15+bsel] && !neg[r];
        sn[r] = mag[r*15+bsel] && neg[r];
      end
    end
  end

  // the PE array: one spikec_pe_col per output feature of the m-chunk, each fed its
  // column of the weight tile (with this cycle's arriving row or column)
  genvar gc;
  generate
    for (gc = 0; gc < C; gc++) begin : g_col
      logic [R*8-1:0] wcol;
      for (genvar gr = 0; gr < R; gr++) begin : g_row
        assign wcol[gr*8+:8] = wnext[(gr*C+gc)*8+:8];
      end
      spikec_pe_col #(.R(R), .TW(TW)) u_col (
          .w(wcol), .sp(sp), .sn(sn), .bsel(bsel), .f_if(f_if), .f_t(f_t), .tok_zero(tok_zero),
          .hd_started(hd_started), .h(h[gc*32+:32]), .hsum(hsum[gc*32+:32]), .wbval(wbval[gc*32+:32]));
    end
  endgenerate

  always_comb begin
    logic [15:0] s;
    logic [15:0] live;
    s = '0;
    live = '0;
    for (int r = 0; r < R; r++) s = s + 16'(sp[r] || sn[r]);
    for (int b = 0; b < 15; b++) live = live + 16'(ormag[b]);
    cnt_spikes = (tok_active && first_m && !tok_zero) ? s : 16'd0;
    cnt_vector = tok_active && first_m && !tok_zero;
    if (tok_active && first_m && !hd_started)
      cnt_skipped = f_if ? ((16'd1 << (f_t + 1)) - 16'd1 - 16'(maxc)) : (16'(f_t) - live);
    else cnt_skipped = 16'd0;
  end

  // ---------------------------------------------------------------- ACC write-back
  logic [31:0] acc_row;  // ACC element of the head token's output row in this m-chunk
  logic wb_valid, wb_old;
  logic [AW-1:0] wb_addr;
  logic [ACW-1:0] wb_cnt;
  logic [C*32-1:0] wb_val;
  logic [MW-1:0] m_left;
  assign m_left = f_m - mi_col;
  assign acc_rbase = AW'(acc_row);
  assign acc_we = wb_valid;
  assign acc_wbase = wb_addr;
  assign acc_wcnt = wb_cnt;
  always_comb begin
    acc_wdata = '0;
    for (int c = 0; c < C; c++)
      acc_wdata[c*32+:32] = (wb_old ? acc_rdata[c*32+:32] : 32'd0) + wb_val[c*32+:32];
  end

  assign done = (state == S_DRAIN);

  // ---------------------------------------------------------------- control
  logic last_tok, last_ki, last_mi;
  assign last_tok = (tok_i == f_n - 1'b1);
  assign last_ki = (32'(ki_row) + R >= 32'(f_k));
  assign last_mi = (32'(mi_col) + C >= 32'(f_m));

  always_ff @(posedge clk) begin
    if (rst) begin
      state <= S_IDLE;
      pend_valid <= 1'b0;
      wb_valid <= 1'b0;
      rd_on <= 1'b0;
      rd_inflight <= 1'b0;
      pq_cnt <= '0;
    end else begin
      wreg <= wnext;
      // ---- code reads (independent of the processing side)
      rd_inflight <= rd_issue;
      if (rd_issue) begin
        rd_row_q <= rd_row0;
        if (rd_i == f_n - 1'b1) begin
          rd_i <= '0;
          if (32'(rd_row0) + R >= 32'(f_k)) begin
            rd_row0 <= '0;
            rd_addr <= 32'(f_inp);
            if (rd_mleft <= MW'(C)) rd_on <= 1'b0;
            rd_mleft <= rd_mleft - MW'(C);
          end else begin
            rd_row0 <= rd_row0 + KW'(R);
            rd_addr <= 32'(f_inp) + 32'(rd_row0) + R;
          end
        end else begin
          rd_i <= rd_i + 1'b1;
          rd_addr <= rd_addr + 32'(f_k);
        end
      end
      // queue: pop the head, push the arriving read
      if (pop && rd_inflight) begin
        if (pq_cnt == 2) begin
          pq0 <= pq1;
          pq1 <= arriving;
        end else pq0 <= arriving;
      end else if (pop) begin
        pq0 <= pq1;
        pq_cnt <= pq_cnt - 1'b1;
      end else if (rd_inflight) begin
        if (pq_cnt == 0) pq0 <= arriving;
        else pq1 <= arriving;
        pq_cnt <= pq_cnt + 1'b1;
      end

      // ---- write-back pipeline
      wb_valid <= tok_done;
      if (tok_done) begin
        wb_addr <= AW'(acc_row);
        wb_cnt <= (m_left < MW'(C)) ? ACW'(m_left) : ACW'(C);
        wb_val <= wbval;
        wb_old <= f_accum || (ki_row != 0);
      end

      // ---- weight load pipeline
      pend_valid <= (state == S_WLOAD);
      pend_idx <= ld;
      pend_nib <= ld_e[0] & f_int4;
      pend_row0 <= ki_row;
      pend_col0 <= mi_col;
      pend_lane_ok <= f_trans ? (32'(mi_col) + 32'(ld) < 32'(f_m)) : (32'(ki_row) + 32'(ld) < 32'(f_k));

      case (state)
        S_IDLE: ;
        S_SETUP: begin
          if (setup_cnt <= 1) state <= S_WLOAD;
          setup_cnt <= setup_cnt - 1;
        end
        S_WLOAD: begin
          ld_e <= ld_e + step_ld;
          ld <= ld + 1'b1;
          if (ld == ld_n - 1'b1) state <= S_TOK;
        end
        S_TOK: begin
          if (tok_active) begin
            if (tok_done) begin
              hd_started <= 1'b0;
              acc_row <= acc_row + 32'(f_stride);
              tok_i <= tok_i + 1'b1;
              if (last_tok) begin
                tok_i <= '0;
                ld <= '0;
                if (last_ki && last_mi) begin
                  state <= S_DRAIN;
                end else if (last_ki) begin
                  state <= S_WLOAD;
                  first_m <= 1'b0;
                  ki_row <= '0;
                  mi_col <= mi_col + MW'(C);
                  m_base_e <= m_base_e + step_m;
                  tile_e <= m_base_e + step_m;
                  ld_e <= m_base_e + step_m;
                  acc_row <= 32'(f_acc) + 32'(mi_col) + C;
                end else begin
                  state <= S_WLOAD;
                  ki_row <= ki_row + KW'(R);
                  tile_e <= tile_e + step_k;
                  ld_e <= tile_e + step_k;
                  acc_row <= 32'(f_acc) + 32'(mi_col);
                end
              end
            end else begin
              hd_started <= 1'b1;
              h <= hsum;
              rem <= cur_rem & ~(15'd1 << bsel);
              tau <= cur_tau + 1'b1;
            end
          end
        end
        S_DRAIN: state <= S_IDLE;
        default: state <= S_IDLE;
      endcase

      if (start) begin
        f_inp <= ins[spikec_isa_pkg::SPMM_INP_LSB+:spikec_isa_pkg::SPMM_INP_W];
        f_wgt <= ins[spikec_isa_pkg::SPMM_WGT_LSB+:spikec_isa_pkg::SPMM_WGT_W];
        f_acc <= ins[spikec_isa_pkg::SPMM_ACC_LSB+:spikec_isa_pkg::SPMM_ACC_W];
        f_n <= ins[spikec_isa_pkg::SPMM_N_LSB+:spikec_isa_pkg::SPMM_N_W];
        f_k <= ins[spikec_isa_pkg::SPMM_K_LSB+:spikec_isa_pkg::SPMM_K_W];
        f_m <= ins[spikec_isa_pkg::SPMM_M_LSB+:spikec_isa_pkg::SPMM_M_W];
        f_stride <= ins[spikec_isa_pkg::SPMM_ACC_STRIDE_LSB+:spikec_isa_pkg::SPMM_ACC_STRIDE_W];
        f_t <= ins[spikec_isa_pkg::SPMM_T_LSB+:spikec_isa_pkg::SPMM_T_W];
        f_if <= ins[spikec_isa_pkg::SPMM_NEURON_LSB+:spikec_isa_pkg::SPMM_NEURON_W] == NEURONW'(spikec_isa_pkg::NEURON_IF);
        f_int4 <= ins[spikec_isa_pkg::SPMM_WFMT_LSB+:spikec_isa_pkg::SPMM_WFMT_W] == WFMTW'(spikec_isa_pkg::WFMT_INT4);
        f_trans <= ins[spikec_isa_pkg::SPMM_WTRANS_LSB];
        f_accum <= ins[spikec_isa_pkg::SPMM_ACC_MODE_LSB+:spikec_isa_pkg::SPMM_ACC_MODE_W] ==
            ACCMODEW'(spikec_isa_pkg::ACC_MODE_ACCUMULATE);
        qmax <= (16'd1 << ins[spikec_isa_pkg::SPMM_T_LSB+:spikec_isa_pkg::SPMM_T_W]) - 16'd1;
        // weight element steps: per load cycle, per k-chunk, per m-chunk
        if (ins[spikec_isa_pkg::SPMM_WTRANS_LSB]) begin
          step_ld <= 32'(ins[spikec_isa_pkg::SPMM_K_LSB+:spikec_isa_pkg::SPMM_K_W]);
          step_k <= R;
          step_m <= times_const(32'(ins[spikec_isa_pkg::SPMM_K_LSB+:spikec_isa_pkg::SPMM_K_W]), C);
          ld_n <= LDW'(C);
        end else begin
          step_ld <= 32'(ins[spikec_isa_pkg::SPMM_M_LSB+:spikec_isa_pkg::SPMM_M_W]);
          step_k <= times_const(32'(ins[spikec_isa_pkg::SPMM_M_LSB+:spikec_isa_pkg::SPMM_M_W]), R);
          step_m <= C;
          ld_n <= LDW'(R);
        end
        mi_col <= '0;
        ki_row <= '0;
        m_base_e <= '0;
        tile_e <= '0;
        ld_e <= '0;
        ld <= '0;
        first_m <= 1'b1;
        tok_i <= '0;
        hd_started <= 1'b0;
        acc_row <= 32'(ins[spikec_isa_pkg::SPMM_ACC_LSB+:spikec_isa_pkg::SPMM_ACC_W]);
        rd_on <= 1'b1;
        rd_i <= '0;
        rd_row0 <= '0;
        rd_mleft <= ins[spikec_isa_pkg::SPMM_M_LSB+:spikec_isa_pkg::SPMM_M_W];
        rd_addr <= 32'(ins[spikec_isa_pkg::SPMM_INP_LSB+:spikec_isa_pkg::SPMM_INP_W]);
        pq_cnt <= '0;
        setup_cnt <= SETUP_W;
        state <= (SETUP_W > 0) ? S_SETUP : S_WLOAD;
      end
    end
  end
endmodule
