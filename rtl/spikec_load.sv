// LOAD engine: 2-D DMA from DRAM into one on-chip buffer (docs/isa.md section 3).
//
// Row r starts at DRAM byte dram + r*stride and lands at element sram + r*cols; a row
// moves as beats of BEAT bytes (BEAT/esize elements), one DRAM read request per cycle,
// rows back to back. Responses come back in order after the DRAM's latency and are
// written to the buffer in the cycle they arrive; only when the compute module holds
// that buffer's write port do they wait in the response FIFO. Requests are issued on
// credit (in flight + buffered < FIFO depth) so the FIFO never overflows.
// Busy cycles: DRAM latency + rows * ceil(row_bytes / BEAT), the cost model's formula.
module spikec_load #(
    parameter int BEAT = 8,
    parameter int LAT = 32,
    parameter int NBW = $clog2(BEAT + 1)
) (
    input  logic              clk,
    input  logic              rst,
    input  logic              start,
    input  logic [spikec_isa_pkg::WORD_BITS-1:0] ins,
    output logic              done,
    // DRAM read port
    output logic              rd_req,
    output logic [spikec_isa_pkg::DRAM_ADDR_BITS-1:0] rd_addr,
    output logic [NBW-1:0]    rd_bytes,
    input  logic              rd_valid,
    input  logic [BEAT*8-1:0] rd_data,
    // buffer write (the core routes it to buffer w_buf)
    output logic [spikec_isa_pkg::LOAD_BUF_W-1:0] w_buf,
    output logic              w_en,
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] w_base,
    output logic [NBW-1:0]    w_cnt,
    output logic [BEAT*8-1:0] w_data,
    input  logic              w_grant
);
  localparam int FDEPTH = LAT + 4;
  localparam int FCW = $clog2(FDEPTH + 1);
  // field widths (isa/fields.py, through the generated package)
  localparam int BUFW = spikec_isa_pkg::LOAD_BUF_W, SRAMW = spikec_isa_pkg::LOAD_SRAM_W;
  localparam int DRAMW = spikec_isa_pkg::LOAD_DRAM_W, STRIDEW = spikec_isa_pkg::LOAD_STRIDE_W;
  localparam int ROWSW = spikec_isa_pkg::LOAD_ROWS_W, COLSW = spikec_isa_pkg::LOAD_COLS_W;
  localparam int AW = spikec_isa_pkg::BUF_ADDR_W, DAW = spikec_isa_pkg::DRAM_ADDR_BITS;

  // instruction fields
  logic [BUFW-1:0] buf_q;
  logic [SRAMW-1:0] sram_q;
  logic [DRAMW-1:0] dram_q;
  logic [STRIDEW-1:0] stride_q;
  logic [ROWSW-1:0] rows_q;
  logic [COLSW-1:0] cols_q;
  logic [1:0] esz;  // log2 of the element size
  logic [NBW-1:0] epb;  // elements per beat

  // request side
  logic req_on;
  logic [ROWSW-1:0] q_row;
  logic [COLSW-1:0] q_col;
  logic [DAW-1:0] q_row_addr;
  logic [FCW-1:0] inflight;
  // write side
  logic wr_on;
  logic [ROWSW-1:0] w_row;
  logic [COLSW-1:0] w_col;
  logic [AW-1:0] w_pos;

  logic [FCW-1:0] fcount;
  logic [BEAT*8-1:0] fdata;
  logic f_push, f_pop, w_avail, last_beat;
  logic [COLSW-1:0] q_left, w_left;

  assign esz = (buf_q == BUFW'(spikec_isa_pkg::BUF_WGT)) ? 2'd0 : (buf_q == BUFW'(spikec_isa_pkg::BUF_INP)) ? 2'd1 : 2'd2;
  assign epb = NBW'(BEAT >> esz);

  // request: beat of row q_row from element q_col
  assign q_left = cols_q - q_col;
  assign rd_req = req_on && (32'(inflight) + 32'(fcount) < FDEPTH);
  assign rd_addr = q_row_addr + (DAW'(q_col) << esz);
  assign rd_bytes = NBW'(((q_left < COLSW'(epb)) ? q_left : COLSW'(epb)) << esz);

  // write: beat of row w_row from element w_col
  assign w_left = cols_q - w_col;
  assign w_buf = buf_q;
  assign w_avail = (fcount != 0) || rd_valid;
  assign w_en = wr_on && w_avail && w_grant;
  assign w_base = w_pos;
  assign w_cnt = (w_left < COLSW'(epb)) ? NBW'(w_left) : epb;
  assign w_data = (fcount != 0) ? fdata : rd_data;
  assign last_beat = (w_row == rows_q - 1'b1) && (w_left <= COLSW'(epb));
  assign done = w_en && last_beat;

  assign f_pop = w_en && (fcount != 0);
  assign f_push = rd_valid && !(w_en && (fcount == 0));

  spikec_fifo #(
      .W(BEAT * 8),
      .DEPTH(FDEPTH)
  ) u_resp (
      .clk(clk),
      .rst(rst || start),
      .push(f_push),
      .din(rd_data),
      .pop(f_pop),
      .dout(fdata),
      .count(fcount)
  );

  always_ff @(posedge clk) begin
    if (rst) begin
      req_on <= 1'b0;
      wr_on <= 1'b0;
      inflight <= '0;
    end else if (start) begin
      buf_q <= ins[spikec_isa_pkg::LOAD_BUF_LSB+:spikec_isa_pkg::LOAD_BUF_W];
      sram_q <= ins[spikec_isa_pkg::LOAD_SRAM_LSB+:spikec_isa_pkg::LOAD_SRAM_W];
      dram_q <= ins[spikec_isa_pkg::LOAD_DRAM_LSB+:spikec_isa_pkg::LOAD_DRAM_W];
      stride_q <= ins[spikec_isa_pkg::LOAD_STRIDE_LSB+:spikec_isa_pkg::LOAD_STRIDE_W];
      rows_q <= ins[spikec_isa_pkg::LOAD_ROWS_LSB+:spikec_isa_pkg::LOAD_ROWS_W];
      cols_q <= ins[spikec_isa_pkg::LOAD_COLS_LSB+:spikec_isa_pkg::LOAD_COLS_W];
      q_row <= '0;
      q_col <= '0;
      q_row_addr <= DAW'(ins[spikec_isa_pkg::LOAD_DRAM_LSB+:spikec_isa_pkg::LOAD_DRAM_W]);
      w_row <= '0;
      w_col <= '0;
      w_pos <= AW'(ins[spikec_isa_pkg::LOAD_SRAM_LSB+:spikec_isa_pkg::LOAD_SRAM_W]);
      req_on <= 1'b1;
      wr_on <= 1'b1;
      inflight <= '0;
    end else begin
      inflight <= inflight + FCW'(rd_req) - FCW'(rd_valid);
      if (rd_req) begin
        if (q_left <= COLSW'(epb)) begin
          q_col <= '0;
          q_row <= q_row + 1'b1;
          q_row_addr <= q_row_addr + DAW'(stride_q);
          if (q_row == rows_q - 1'b1) req_on <= 1'b0;
        end else begin
          q_col <= q_col + COLSW'(epb);
        end
      end
      if (w_en) begin
        w_pos <= w_pos + AW'(w_cnt);
        if (w_left <= COLSW'(epb)) begin
          w_col <= '0;
          w_row <= w_row + 1'b1;
        end else begin
          w_col <= w_col + COLSW'(epb);
        end
        if (last_beat) wr_on <= 1'b0;
      end
    end
  end
endmodule
