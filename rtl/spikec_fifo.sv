// First-word-fall-through FIFO: `dout` is the oldest entry while `count > 0`.
// Used for the command queues and the LOAD engine's DRAM response buffer (small
// asynchronous-read memories: LUT RAM on an FPGA).
module spikec_fifo #(
    parameter int W = 8,
    parameter int DEPTH = 4,
    parameter int CW = $clog2(DEPTH + 1)
) (
    input  logic          clk,
    input  logic          rst,
    input  logic          push,
    input  logic [W-1:0]  din,
    input  logic          pop,
    output logic [W-1:0]  dout,
    output logic [CW-1:0] count
);
  localparam int PW = (DEPTH > 1) ? $clog2(DEPTH) : 1;
  logic [W-1:0] mem[0:DEPTH-1];
  logic [PW-1:0] rd, wr;

  assign dout = mem[rd];

  always_ff @(posedge clk) begin
    if (push) mem[wr] <= din;
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      rd <= '0;
      wr <= '0;
      count <= '0;
    end else begin
      if (push) wr <= (wr == PW'(DEPTH - 1)) ? '0 : wr + 1'b1;
      if (pop) rd <= (rd == PW'(DEPTH - 1)) ? '0 : rd + 1'b1;
      count <= count + CW'(push) - CW'(pop);
    end
  end
endmodule
