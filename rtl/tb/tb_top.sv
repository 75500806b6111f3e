// The testbench of spikec_core, a Verilator binary (built with `verilator --binary`; see
// runtime/rtl_sim.py and docs/rtl.md, "Testbench contract").
//
// Plusargs: +program=<hex file, one 128-bit instruction per line> +dram_bytes=<N>
// [+dram=<initial image>] [+dram_out=<file>] [+counters=<file>] [+max_cycles=<N>].
// Exit code 0 when FINISH retires; 1 on a fault (prints `FAULT: instruction <i>
// (<MNEMONIC>): <reason>`), 2 on a timeout (`TIMEOUT after N cycles`), 3 on a bad
// argument or file.
//
// The DRAM is a C++ byte vector (dram.cpp) behind a fixed latency: a read request's
// data and a write's acknowledgement come back DRAM_LATENCY cycles later (at least 1).
//
// The core's parameters come from package spikec_cfg_pkg, which runtime/rtl_sim.py
// generates for the configuration being built (isa/svgen.py config_package_text, the
// values of svgen.params(cfg)); widths come from the generated spikec_isa_pkg.
module tb_top;
  localparam int DRAM_BEAT_BYTES = spikec_cfg_pkg::DRAM_BEAT_BYTES;
  localparam int DRAM_LATENCY = spikec_cfg_pkg::DRAM_LATENCY;
  localparam int MAX_PROGRAM = 1 << spikec_isa_pkg::PC_W;
  localparam int OPW = spikec_isa_pkg::HDR_OPCODE_W;
  import "DPI-C" function int dram_init(input string path, input longint nbytes);
  import "DPI-C" function int dram_rd32(input longint addr);
  import "DPI-C" function void dram_wr8(input longint addr, input int data);
  import "DPI-C" function int dram_dump(input string path);
  import "DPI-C" function void tb_exit(input int code);

  localparam int BEAT = DRAM_BEAT_BYTES;
  localparam int NBW = $clog2(BEAT + 1);
  localparam int LAT = (DRAM_LATENCY > 1) ? DRAM_LATENCY : 1;
  localparam int NCNT = 11;

  logic clk = 1'b0;
  logic rst = 1'b1;
  always #5 clk = ~clk;

  logic [spikec_isa_pkg::WORD_BITS-1:0] imem[0:MAX_PROGRAM-1];
  logic [spikec_isa_pkg::PC_W-1:0] imem_addr;
  logic [spikec_isa_pkg::WORD_BITS-1:0] imem_data;
  logic rd_req, rd_valid, wr_req, wr_ack;
  logic [spikec_isa_pkg::DRAM_ADDR_BITS-1:0] rd_addr, wr_addr;
  logic [NBW-1:0] rd_bytes, wr_bytes;
  logic [BEAT*8-1:0] rd_data, wr_data;
  logic finished, fault;
  logic [3:0] fault_code;
  logic [spikec_isa_pkg::PC_W-1:0] fault_index;
  logic [OPW-1:0] fault_opcode;
  logic [NCNT*64-1:0] counters;

  spikec_core #(
      .PE_ROWS(spikec_cfg_pkg::PE_ROWS), .PE_COLS(spikec_cfg_pkg::PE_COLS),
      .VEC_LANES(spikec_cfg_pkg::VEC_LANES), .DRAM_BEAT_BYTES(spikec_cfg_pkg::DRAM_BEAT_BYTES),
      .DRAM_LATENCY(spikec_cfg_pkg::DRAM_LATENCY), .SPMM_SETUP(spikec_cfg_pkg::SPMM_SETUP),
      .VEC_SETUP(spikec_cfg_pkg::VEC_SETUP), .CMD_QUEUE_DEPTH(spikec_cfg_pkg::CMD_QUEUE_DEPTH),
      .TOKEN_QUEUE_DEPTH(spikec_cfg_pkg::TOKEN_QUEUE_DEPTH),
      .INP_ELEMS(spikec_cfg_pkg::INP_ELEMS), .INP_BANKS(spikec_cfg_pkg::INP_BANKS),
      .WGT_ELEMS(spikec_cfg_pkg::WGT_ELEMS), .WGT_BANKS(spikec_cfg_pkg::WGT_BANKS),
      .ACC_ELEMS(spikec_cfg_pkg::ACC_ELEMS), .ACC_BANKS(spikec_cfg_pkg::ACC_BANKS),
      .VEC_ELEMS(spikec_cfg_pkg::VEC_ELEMS), .VEC_BANKS(spikec_cfg_pkg::VEC_BANKS),
      .SCL_ELEMS(spikec_cfg_pkg::SCL_ELEMS), .SCL_BANKS(spikec_cfg_pkg::SCL_BANKS)
  ) dut (
      .clk(clk), .rst(rst), .imem_addr(imem_addr), .imem_data(imem_data),
      .dram_rd_req(rd_req), .dram_rd_addr(rd_addr), .dram_rd_bytes(rd_bytes),
      .dram_rd_valid(rd_valid), .dram_rd_data(rd_data),
      .dram_wr_req(wr_req), .dram_wr_addr(wr_addr), .dram_wr_bytes(wr_bytes), .dram_wr_data(wr_data),
      .dram_wr_ack(wr_ack),
      .finished(finished), .fault(fault), .fault_code(fault_code), .fault_index(fault_index),
      .fault_opcode(fault_opcode), .counters(counters));

  always_ff @(posedge clk) imem_data <= imem[imem_addr];

  // DRAM: data read at request time, delivered LAT cycles later; writes land at once and
  // are acknowledged LAT cycles later (tokens order a STORE before a later LOAD).
  logic [LAT-1:0] rd_pipe_v, wr_pipe_v;
  logic [BEAT*8-1:0] rd_pipe_d[0:LAT-1];
  assign rd_valid = rd_pipe_v[LAT-1];
  assign rd_data = rd_pipe_d[LAT-1];
  assign wr_ack = wr_pipe_v[LAT-1];

  always_ff @(posedge clk) begin
    logic [BEAT*8-1:0] d;
    d = '0;
    if (rd_req) begin
      for (int w = 0; w < BEAT / 4; w++) d[w*32+:32] = dram_rd32(64'(rd_addr) + 64'(4 * w));
      // bytes past the request are not part of it
      for (int b = 0; b < BEAT; b++) if (b >= int'(rd_bytes)) d[b*8+:8] = 8'd0;
    end
    if (wr_req) begin
      for (int b = 0; b < BEAT; b++) if (b < int'(wr_bytes)) dram_wr8(64'(wr_addr) + 64'(b), int'(wr_data[b*8+:8]));
    end
    rd_pipe_v <= (rd_pipe_v << 1) | LAT'(rd_req);
    wr_pipe_v <= (wr_pipe_v << 1) | LAT'(wr_req);
    rd_pipe_d[0] <= d;
    for (int i = 1; i < LAT; i++) rd_pipe_d[i] <= rd_pipe_d[i-1];
  end

  string program_path, dram_path, dram_out_path, counters_path;
  longint dram_bytes, max_cycles, cycle;
  string names[NCNT] = '{"cycles", "busy_load", "busy_compute", "busy_store", "instructions",
                         "dram_read_bytes", "dram_write_bytes", "spikes", "spike_vectors",
                         "skipped_vectors", "vec_elements"};
  // indexed by opcode (isa/fields.py Opcode; tests/test_rtl_core.py checks the order)
  string mnemonics[1 << OPW] = '{"LOAD", "STORE", "SPMM", "ENCODE", "VEC", "FINISH", "ILLEGAL6", "ILLEGAL7"};

  function automatic string reason(input logic [3:0] code);
    case (code)
      4'd1: reason = "illegal opcode";
      4'd2: reason = "NaN in the ENCODE input (a device fault)";
      4'd3: reason = "+-inf in the ENCODE input with a dynamic scale (a device fault)";
      4'd4: reason = "static scale is not finite and > 0 (a device fault)";
      4'd5: reason = "unimplemented function in this RTL";
      4'd6: reason = "VEC destination overlaps a source other than in place (unsupported by this RTL)";
      4'd7: reason = "the weight FIFO (LOAD wfifo, SPMM wsrc FIFO) is not in this RTL";
      default: reason = "unknown fault";
    endcase
  endfunction

  initial begin
    if (!$value$plusargs("program=%s", program_path)) begin
      $display("ERROR: +program=<path> is required");
      tb_exit(3);
    end
    if (!$value$plusargs("dram_bytes=%d", dram_bytes)) begin
      $display("ERROR: +dram_bytes=<N> is required");
      tb_exit(3);
    end
    if (!$value$plusargs("dram=%s", dram_path)) dram_path = "";
    if (!$value$plusargs("dram_out=%s", dram_out_path)) dram_out_path = "";
    if (!$value$plusargs("counters=%s", counters_path)) counters_path = "";
    if (!$value$plusargs("max_cycles=%d", max_cycles)) max_cycles = 64'd100000000;
    for (int i = 0; i < MAX_PROGRAM; i++) imem[i] = '0;
    $readmemh(program_path, imem);
    if (dram_init(dram_path, dram_bytes) != 0) begin
      $display("ERROR: cannot read DRAM image %s (or it exceeds %0d bytes)", dram_path, dram_bytes);
      tb_exit(3);
    end
    rd_pipe_v = '0;
    wr_pipe_v = '0;
    cycle = 0;
    repeat (2) @(posedge clk);
    rst = 1'b0;
  end

  task automatic finish_run(input int code);
    int fd;
    if (counters_path != "") begin
      fd = $fopen(counters_path, "w");
      for (int i = 0; i < NCNT; i++) $fwrite(fd, "%s %0d\n", names[i], counters[i*64+:64]);
      $fclose(fd);
    end
    if (dram_out_path != "" && dram_dump(dram_out_path) != 0) begin
      $display("ERROR: cannot write %s", dram_out_path);
      tb_exit(3);
    end
    tb_exit(code);
  endtask

  always @(posedge clk) begin
    if (!rst) begin
      cycle <= cycle + 1;
      if (finished) begin
        finish_run(0);
      end else if (fault) begin
        $display("FAULT: instruction %0d (%s): %s", fault_index, mnemonics[fault_opcode], reason(fault_code));
        finish_run(1);
      end else if (cycle >= max_cycles) begin
        $display("TIMEOUT after %0d cycles", max_cycles);
        finish_run(2);
      end
    end
  end
endmodule
