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
    input  logic [127:0]      ins,
    output logic              done,
    // buffer read (port 0 of buffer r_buf; data one cycle after r_base)
    output logic [2:0]        r_buf,
    output logic [19:0]       r_base,
    input  logic [BEAT*8-1:0] r_data,
    // DRAM write port
    output logic              wr_req,
    output logic [31:0]       wr_addr,
    output logic [NBW-1:0]    wr_bytes,
    output logic [BEAT*8-1:0] wr_data,
    input  logic              wr_ack
);
  logic [2:0] buf_q;
  logic [23:0] stride_q;
  logic [15:0] rows_q, cols_q;
  logic [1:0] esz;
  logic [NBW-1:0] epb;

  logic rd_on, issued_all;
  logic [15:0] q_row, q_col, q_left;
  logic [31:0] q_row_addr;
  logic [19:0] q_pos;
  // the beat read last cycle, written to DRAM this cycle
  logic p_valid;
  logic [31:0] p_addr;
  logic [NBW-1:0] p_bytes;
  logic [31:0] outstanding;

  assign esz = (buf_q == 3'(spikec_isa_pkg::BUF_WGT)) ? 2'd0 : (buf_q == 3'(spikec_isa_pkg::BUF_INP)) ? 2'd1 : 2'd2;
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
      buf_q <= ins[spikec_isa_pkg::STORE_BUF_LSB+:3];
      stride_q <= ins[spikec_isa_pkg::STORE_STRIDE_LSB+:24];
      rows_q <= ins[spikec_isa_pkg::STORE_ROWS_LSB+:16];
      cols_q <= ins[spikec_isa_pkg::STORE_COLS_LSB+:16];
      q_row <= '0;
      q_col <= '0;
      q_row_addr <= ins[spikec_isa_pkg::STORE_DRAM_LSB+:32];
      q_pos <= ins[spikec_isa_pkg::STORE_SRAM_LSB+:20];
      rd_on <= 1'b1;
      p_valid <= 1'b0;
      issued_all <= 1'b0;
      outstanding <= '0;
    end else begin
      outstanding <= outstanding + 32'(wr_req) - 32'(wr_ack);
      p_valid <= rd_on;
      if (rd_on) begin
        p_addr <= q_row_addr + (32'(q_col) << esz);
        p_bytes <= NBW'(((q_left < 16'(epb)) ? q_left : 16'(epb)) << esz);
        q_pos <= q_pos + ((q_left < 16'(epb)) ? 20'(q_left) : 20'(epb));
        if (q_left <= 16'(epb)) begin
          q_col <= '0;
          q_row <= q_row + 1'b1;
          q_row_addr <= q_row_addr + 32'(stride_q);
          if (q_row == rows_q - 1'b1) rd_on <= 1'b0;
        end else begin
          q_col <= q_col + 16'(epb);
        end
      end
      if (p_valid && !rd_on) issued_all <= 1'b1;
    end
  end
endmodule
