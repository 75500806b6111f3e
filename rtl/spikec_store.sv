// STORE engine: 2-D DMA from one on-chip buffer to DRAM (docs/isa.md section 3).
//
// One beat per cycle: read BEAT bytes of elements from the buffer (its read port 0,
// reserved for this engine, so it never waits), write them to DRAM the next cycle.
// Rows are written in order, so overlapping rows (stride < row bytes) end with the later
// row, as the ISA requires. The instruction retires when the DRAM has acknowledged the
// last write (the tokens it pushes then order a later LOAD of the same bytes after it).
// Busy cycles: rows * ceil(row_bytes / BEAT) + 1 + DRAM latency (cost model: one less).
module spikec_store #(
    parameter int BEAT = 8,
    parameter int LAT = 32,
    parameter int NBW = $clog2(BEAT + 1)
) (
    input  logic              clk,
    input  logic              rst,
    input  logic              start,
    input  logic [spikec_isa_pkg::WORD_BITS-1:0] ins,
    output logic              done,
    // buffer read (port 0 of buffer r_buf; data one cycle after r_base)
    output logic [spikec_isa_pkg::STORE_BUF_W-1:0] r_buf,
    output logic [spikec_isa_pkg::BUF_ADDR_W-1:0] r_base,
    input  logic [BEAT*8-1:0] r_data,
    // DRAM write port
    output logic              wr_req,
    output logic [spikec_isa_pkg::DRAM_ADDR_BITS-1:0] wr_addr,
    output logic [NBW-1:0]    wr_bytes,
    output logic [BEAT*8-1:0] wr_data,
    input  logic              wr_ack
);
  // field widths (isa/fields.py, through the generated package)
  localparam int BUFW = spikec_isa_pkg::STORE_BUF_W, STRIDEW = spikec_isa_pkg::STORE_STRIDE_W;
  localparam int ROWSW = spikec_isa_pkg::STORE_ROWS_W, COLSW = spikec_isa_pkg::STORE_COLS_W;
  localparam int AW = spikec_isa_pkg::BUF_ADDR_W, DAW = spikec_isa_pkg::DRAM_ADDR_BITS;

  logic [BUFW-1:0] buf_q;
  logic [STRIDEW-1:0] stride_q;
  logic [ROWSW-1:0] rows_q;
  logic [COLSW-1:0] cols_q;
  logic [1:0] esz;
  logic [NBW-1:0] epb;

  logic rd_on, issued_all;
  logic [ROWSW-1:0] q_row;
  logic [COLSW-1:0] q_col, q_left;
  logic [DAW-1:0] q_row_addr;
  logic [AW-1:0] q_pos;
  // the beat read last cycle, written to DRAM this cycle
  logic p_valid;
  logic [DAW-1:0] p_addr;
  logic [NBW-1:0] p_bytes;
  logic [31:0] outstanding;

  assign esz = (buf_q == BUFW'(spikec_isa_pkg::BUF_WGT)) ? 2'd0 : (buf_q == BUFW'(spikec_isa_pkg::BUF_INP)) ? 2'd1 : 2'd2;
  assign epb = NBW'(BEAT >> esz);
  assign q_left = cols_q - q_col;
  assign r_buf = buf_q;
  assign r_base = q_pos;

  assign wr_req = p_valid;
  assign wr_addr = p_addr;
  assign wr_bytes = p_bytes;
  assign wr_data = r_data;
  assign done = issued_all && !p_valid && (outstanding == 32'(wr_ack)) && wr_ack;

  always_ff @(posedge clk) begin
    if (rst) begin
      rd_on <= 1'b0;
      p_valid <= 1'b0;
      issued_all <= 1'b0;
      outstanding <= '0;
    end else if (start) begin
      buf_q <= ins[spikec_isa_pkg::STORE_BUF_LSB+:spikec_isa_pkg::STORE_BUF_W];
      stride_q <= ins[spikec_isa_pkg::STORE_STRIDE_LSB+:spikec_isa_pkg::STORE_STRIDE_W];
      rows_q <= ins[spikec_isa_pkg::STORE_ROWS_LSB+:spikec_isa_pkg::STORE_ROWS_W];
      cols_q <= ins[spikec_isa_pkg::STORE_COLS_LSB+:spikec_isa_pkg::STORE_COLS_W];
      q_row <= '0;
      q_col <= '0;
      q_row_addr <= DAW'(ins[spikec_isa_pkg::STORE_DRAM_LSB+:spikec_isa_pkg::STORE_DRAM_W]);
      q_pos <= AW'(ins[spikec_isa_pkg::STORE_SRAM_LSB+:spikec_isa_pkg::STORE_SRAM_W]);
      rd_on <= 1'b1;
      p_valid <= 1'b0;
      issued_all <= 1'b0;
      outstanding <= '0;
    end else begin
      outstanding <= outstanding + 32'(wr_req) - 32'(wr_ack);
      p_valid <= rd_on;
      if (rd_on) begin
        p_addr <= q_row_addr + (DAW'(q_col) << esz);
        p_bytes <= NBW'(((q_left < COLSW'(epb)) ? q_left : COLSW'(epb)) << esz);
        q_pos <= q_pos + ((q_left < COLSW'(epb)) ? AW'(q_left) : AW'(epb));
        if (q_left <= COLSW'(epb)) begin
          q_col <= '0;
          q_row <= q_row + 1'b1;
          q_row_addr <= q_row_addr + DAW'(stride_q);
          if (q_row == rows_q - 1'b1) rd_on <= 1'b0;
        end else begin
          q_col <= q_col + COLSW'(epb);
        end
      end
      if (p_valid && !rd_on) issued_all <= 1'b1;
    end
  end
endmodule
