// spikec accelerator core: executes the instruction stream of docs/isa.md.
//
//   fetch --> [load queue] --> LOAD engine  --l2c-->  COMPUTE (SPMM, vector unit, FINISH)
//         --> [compute queue]              <--c2l--         --c2s-->  STORE engine
//         --> [store queue]                                 <--s2c--
//
// Fetch reads the instruction memory in program order (one instruction per cycle) and
// dispatches each instruction to its module's command queue (depth CMD_QUEUE_DEPTH),
// stalling while that queue is full; it stops after FINISH. Each module starts its head
// instruction when every token it pops is present (a token pushed in the same cycle
// counts) and every queue it pushes has room, consumes the tokens, runs, and pushes its
// tokens in its last cycle; the next instruction of the module can start in that same
// cycle. Token queues are counters of depth TOKEN_QUEUE_DEPTH (tokens carry no data).
//
// Buffers (spikec_buf): banked, one write port -- the compute module has priority, the
// LOAD engine waits (its responses queue) -- and dedicated read ports: port 0 for the
// STORE engine, the rest for the compute module.
//
// The run ends when FINISH retires (`finished`), or at the first fault (`fault`, with the
// instruction's index and opcode and a reason code; the core then starts nothing more).
// Fault codes: 1 illegal opcode, 2 NaN in an ENCODE input, 3 +-inf in an ENCODE input
// with a dynamic scale, 4 static ENCODE scale not finite and > 0, 5 unimplemented
// function, 6 VEC destination overlapping a source (not in place), 7 the weight FIFO (a
// LOAD with wfifo or an SPMM with wsrc FIFO: modeled by the simulator, not built here).
module spikec_core #(
    parameter int PE_ROWS = 4,
    parameter int PE_COLS = 4,
    parameter int VEC_LANES = 4,
    parameter int DRAM_BEAT_BYTES = 8,
    parameter int DRAM_LATENCY = 32,
    parameter int SPMM_SETUP = 4,
    parameter int VEC_SETUP = 4,
    parameter int CMD_QUEUE_DEPTH = 16,
    parameter int TOKEN_QUEUE_DEPTH = 4,
    parameter int INP_ELEMS = 2048,
    parameter int INP_BANKS = 4,
    parameter int WGT_ELEMS = 8192,
    parameter int WGT_BANKS = 8,
    parameter int ACC_ELEMS = 1024,
    parameter int ACC_BANKS = 4,
    parameter int VEC_ELEMS = 2048,
    parameter int VEC_BANKS = 4,
    parameter int SCL_ELEMS = 256,
    parameter int SCL_BANKS = 4,
    parameter int NCNT = 11,
    parameter int BEAT = DRAM_BEAT_BYTES,
    parameter int NBW = $clog2(DRAM_BEAT_BYTES + 1)
) (
    input  logic              clk,
    input  logic              rst,
    // instruction memory, one-cycle read latency: imem_data = word at last cycle's imem_addr
    output logic [spikec_isa_pkg::PC_W-1:0] imem_addr,
    input  logic [spikec_isa_pkg::WORD_BITS-1:0] imem_data,
    // DRAM read port: request a beat (rd_bytes <= BEAT from rd_addr); responses in order
    output logic              dram_rd_req,
    output logic [spikec_isa_pkg::DRAM_ADDR_BITS-1:0] dram_rd_addr,
    output logic [NBW-1:0]    dram_rd_bytes,
    input  logic              dram_rd_valid,
    input  logic [BEAT*8-1:0] dram_rd_data,
    // DRAM write port: a beat of wr_bytes from wr_addr; one acknowledgement per write
    output logic              dram_wr_req,
    output logic [spikec_isa_pkg::DRAM_ADDR_BITS-1:0] dram_wr_addr,
    output logic [NBW-1:0]    dram_wr_bytes,
    output logic [BEAT*8-1:0] dram_wr_data,
    input  logic              dram_wr_ack,
    // status
    output logic              finished,
    output logic              fault,
    output logic [3:0]        fault_code,
    output logic [spikec_isa_pkg::PC_W-1:0] fault_index,
    output logic [spikec_isa_pkg::HDR_OPCODE_W-1:0] fault_opcode,
    // counters, 64 bits each: cycles, busy_load, busy_compute, busy_store, instructions,
    // dram_read_bytes, dram_write_bytes, spikes, spike_vectors, skipped_vectors, vec_elements
    output logic [NCNT*64-1:0] counters
);
  localparam int INP_AW = $clog2(INP_ELEMS), WGT_AW = $clog2(WGT_ELEMS), ACC_AW = $clog2(ACC_ELEMS);
  localparam int VEC_AW = $clog2(VEC_ELEMS), SCL_AW = $clog2(SCL_ELEMS);
  localparam int INP_CW = $clog2(INP_BANKS) + 1, WGT_CW = $clog2(WGT_BANKS) + 1, ACC_CW = $clog2(ACC_BANKS) + 1;
  localparam int VEC_CW = $clog2(VEC_BANKS) + 1, SCL_CW = $clog2(SCL_BANKS) + 1;
  // field widths (isa/fields.py, through the generated package)
  localparam int PCW = spikec_isa_pkg::PC_W, WB = spikec_isa_pkg::WORD_BITS;
  localparam int OPW = spikec_isa_pkg::HDR_OPCODE_W, AW = spikec_isa_pkg::BUF_ADDR_W;
  localparam int LBUFW = spikec_isa_pkg::LOAD_BUF_W, SBUFW = spikec_isa_pkg::STORE_BUF_W;
  localparam int QW = PCW + WB;  // command queue entry: {instruction index, word}
  localparam int CQW = $clog2(CMD_QUEUE_DEPTH + 1);
  localparam int TQW = $clog2(TOKEN_QUEUE_DEPTH + 1);
  localparam logic [3:0] FAULT_ILLEGAL = 4'd1;
  localparam logic [3:0] FAULT_NO_WFIFO = 4'd7;

  logic halted;
  assign halted = finished || fault;

  // ---------------------------------------------------------------- fetch
  logic [PCW-1:0] pc;
  logic have, fetch_done, dispatch, illegal, no_wfifo;
  logic [OPW-1:0] fop;
  logic to_load, to_store, to_compute;
  logic [CQW-1:0] lq_count, cq_count, sq_count;
  logic [QW-1:0] lq_head, cq_head, sq_head;
  logic lq_pop, cq_pop, sq_pop;

  assign fop = imem_data[spikec_isa_pkg::HDR_OPCODE_LSB+:spikec_isa_pkg::HDR_OPCODE_W];
  assign to_load = fop == OPW'(spikec_isa_pkg::OP_LOAD);
  assign to_store = fop == OPW'(spikec_isa_pkg::OP_STORE);
  assign to_compute = !to_load && !to_store && fop <= OPW'(spikec_isa_pkg::OP_FINISH);
  assign no_wfifo = (to_load && imem_data[spikec_isa_pkg::LOAD_WFIFO_LSB]) ||
      (fop == OPW'(spikec_isa_pkg::OP_SPMM) && imem_data[spikec_isa_pkg::SPMM_WSRC_LSB]);
  assign illegal = have && !fetch_done && !halted && (!(to_load || to_store || to_compute) || no_wfifo);
  assign dispatch = have && !fetch_done && !halted && !no_wfifo &&
      ((to_load && lq_count < CQW'(CMD_QUEUE_DEPTH)) || (to_store && sq_count < CQW'(CMD_QUEUE_DEPTH)) ||
       (to_compute && cq_count < CQW'(CMD_QUEUE_DEPTH)));
  assign imem_addr = dispatch ? pc + PCW'(1) : pc;

  always_ff @(posedge clk) begin
    if (rst) begin
      pc <= '0;
      have <= 1'b0;
      fetch_done <= 1'b0;
    end else begin
      have <= 1'b1;
      if (dispatch) begin
        pc <= pc + PCW'(1);
        if (fop == OPW'(spikec_isa_pkg::OP_FINISH)) fetch_done <= 1'b1;
      end
    end
  end

  spikec_fifo #(.W(QW), .DEPTH(CMD_QUEUE_DEPTH)) u_lq (
      .clk(clk), .rst(rst), .push(dispatch && to_load), .din({pc, imem_data}),
      .pop(lq_pop), .dout(lq_head), .count(lq_count));
  spikec_fifo #(.W(QW), .DEPTH(CMD_QUEUE_DEPTH)) u_cq (
      .clk(clk), .rst(rst), .push(dispatch && to_compute), .din({pc, imem_data}),
      .pop(cq_pop), .dout(cq_head), .count(cq_count));
  spikec_fifo #(.W(QW), .DEPTH(CMD_QUEUE_DEPTH)) u_sq (
      .clk(clk), .rst(rst), .push(dispatch && to_store), .din({pc, imem_data}),
      .pop(sq_pop), .dout(sq_head), .count(sq_count));

  // ---------------------------------------------------------------- dependency tokens
  logic [TQW-1:0] tq_l2c, tq_c2l, tq_c2s, tq_s2c;
  logic push_l2c, push_c2l, push_c2s, push_s2c, pop_l2c, pop_c2l, pop_c2s, pop_s2c;

  // per module: running instruction (index and word), engine done, start
  logic l_active, c_active, s_active;
  logic [QW-1:0] l_cur, c_cur, s_cur;
  logic l_done, c_done, s_done, l_start, c_start, s_start;


  // pushes happen in the last cycle of the instruction that pushes
  assign push_l2c = l_done && l_cur[spikec_isa_pkg::HDR_PUSH_NEXT_LSB];
  assign push_c2l = c_done && c_cur[spikec_isa_pkg::HDR_PUSH_PREV_LSB];
  assign push_c2s = c_done && c_cur[spikec_isa_pkg::HDR_PUSH_NEXT_LSB];
  assign push_s2c = s_done && s_cur[spikec_isa_pkg::HDR_PUSH_PREV_LSB];

  // a queue has room for a push at the end of the new instruction if it has room now,
  // counting the push of the module's finishing instruction (only this module pushes it)
  function automatic logic room(input logic [TQW-1:0] cnt, input logic push_now);
    room = (32'(cnt) + 32'(push_now)) < TOKEN_QUEUE_DEPTH;
  endfunction

  assign l_start = (lq_count != 0) && (!l_active || l_done) && !halted &&
      (!lq_head[spikec_isa_pkg::HDR_POP_NEXT_LSB] || tq_c2l != 0 || push_c2l) &&
      (!lq_head[spikec_isa_pkg::HDR_PUSH_NEXT_LSB] || room(tq_l2c, push_l2c));
  assign c_start = (cq_count != 0) && (!c_active || c_done) && !halted && !fault_now &&
      (!cq_head[spikec_isa_pkg::HDR_POP_PREV_LSB] || tq_l2c != 0 || push_l2c) &&
      (!cq_head[spikec_isa_pkg::HDR_POP_NEXT_LSB] || tq_s2c != 0 || push_s2c) &&
      (!cq_head[spikec_isa_pkg::HDR_PUSH_PREV_LSB] || room(tq_c2l, push_c2l)) &&
      (!cq_head[spikec_isa_pkg::HDR_PUSH_NEXT_LSB] || room(tq_c2s, push_c2s));
  assign s_start = (sq_count != 0) && (!s_active || s_done) && !halted &&
      (!sq_head[spikec_isa_pkg::HDR_POP_PREV_LSB] || tq_c2s != 0 || push_c2s) &&
      (!sq_head[spikec_isa_pkg::HDR_PUSH_PREV_LSB] || room(tq_s2c, push_s2c));

  assign lq_pop = l_start;
  assign cq_pop = c_start;
  assign sq_pop = s_start;
  assign pop_c2l = l_start && lq_head[spikec_isa_pkg::HDR_POP_NEXT_LSB];
  assign pop_l2c = c_start && cq_head[spikec_isa_pkg::HDR_POP_PREV_LSB];
  assign pop_s2c = c_start && cq_head[spikec_isa_pkg::HDR_POP_NEXT_LSB];
  assign pop_c2s = s_start && sq_head[spikec_isa_pkg::HDR_POP_PREV_LSB];

  always_ff @(posedge clk) begin
    if (rst) begin
      tq_l2c <= '0;
      tq_c2l <= '0;
      tq_c2s <= '0;
      tq_s2c <= '0;
      l_active <= 1'b0;
      c_active <= 1'b0;
      s_active <= 1'b0;
    end else begin
      tq_l2c <= tq_l2c + TQW'(push_l2c) - TQW'(pop_l2c);
      tq_c2l <= tq_c2l + TQW'(push_c2l) - TQW'(pop_c2l);
      tq_c2s <= tq_c2s + TQW'(push_c2s) - TQW'(pop_c2s);
      tq_s2c <= tq_s2c + TQW'(push_s2c) - TQW'(pop_s2c);
      if (l_start) begin
        l_active <= 1'b1;
        l_cur <= lq_head;
      end else if (l_done) l_active <= 1'b0;
      if (c_start) begin
        c_active <= 1'b1;
        c_cur <= cq_head;
      end else if (c_done) c_active <= 1'b0;
      if (s_start) begin
        s_active <= 1'b1;
        s_cur <= sq_head;
      end else if (s_done) s_active <= 1'b0;
    end
  end

  // ---------------------------------------------------------------- buffers
  // write ports
  logic inp_we, wgt_we, acc_we, vec_we, scl_we;
  logic [INP_AW-1:0] inp_wbase;
  logic [WGT_AW-1:0] wgt_wbase;
  logic [ACC_AW-1:0] acc_wbase;
  logic [VEC_AW-1:0] vec_wbase;
  logic [SCL_AW-1:0] scl_wbase;
  logic [INP_CW-1:0] inp_wcnt;
  logic [WGT_CW-1:0] wgt_wcnt;
  logic [ACC_CW-1:0] acc_wcnt;
  logic [VEC_CW-1:0] vec_wcnt;
  logic [SCL_CW-1:0] scl_wcnt;
  logic [INP_BANKS*16-1:0] inp_wdata;
  logic [WGT_BANKS*8-1:0] wgt_wdata;
  logic [ACC_BANKS*32-1:0] acc_wdata;
  logic [VEC_BANKS*32-1:0] vec_wdata;
  logic [SCL_BANKS*32-1:0] scl_wdata;
  // read ports (port 0: STORE)
  logic [2*INP_AW-1:0] inp_rbase;
  logic [2*WGT_AW-1:0] wgt_rbase;
  logic [2*ACC_AW-1:0] acc_rbase;
  logic [3*VEC_AW-1:0] vec_rbase;
  logic [4*SCL_AW-1:0] scl_rbase;
  logic [2*INP_BANKS*16-1:0] inp_rdata;
  logic [2*WGT_BANKS*8-1:0] wgt_rdata;
  logic [2*ACC_BANKS*32-1:0] acc_rdata;
  logic [3*VEC_BANKS*32-1:0] vec_rdata;
  logic [4*SCL_BANKS*32-1:0] scl_rdata;

  spikec_buf #(.EW(16), .DEPTH(INP_ELEMS), .NB(INP_BANKS), .NR(2)) u_inp (
      .clk(clk), .w_en(inp_we), .w_base(inp_wbase), .w_cnt(inp_wcnt), .w_data(inp_wdata),
      .r_base(inp_rbase), .r_data(inp_rdata));
  spikec_buf #(.EW(8), .DEPTH(WGT_ELEMS), .NB(WGT_BANKS), .NR(2)) u_wgt (
      .clk(clk), .w_en(wgt_we), .w_base(wgt_wbase), .w_cnt(wgt_wcnt), .w_data(wgt_wdata),
      .r_base(wgt_rbase), .r_data(wgt_rdata));
  spikec_buf #(.EW(32), .DEPTH(ACC_ELEMS), .NB(ACC_BANKS), .NR(2)) u_acc (
      .clk(clk), .w_en(acc_we), .w_base(acc_wbase), .w_cnt(acc_wcnt), .w_data(acc_wdata),
      .r_base(acc_rbase), .r_data(acc_rdata));
  spikec_buf #(.EW(32), .DEPTH(VEC_ELEMS), .NB(VEC_BANKS), .NR(3)) u_vec (
      .clk(clk), .w_en(vec_we), .w_base(vec_wbase), .w_cnt(vec_wcnt), .w_data(vec_wdata),
      .r_base(vec_rbase), .r_data(vec_rdata));
  spikec_buf #(.EW(32), .DEPTH(SCL_ELEMS), .NB(SCL_BANKS), .NR(4)) u_scl (
      .clk(clk), .w_en(scl_we), .w_base(scl_wbase), .w_cnt(scl_wcnt), .w_data(scl_wdata),
      .r_base(scl_rbase), .r_data(scl_rdata));

  // ---------------------------------------------------------------- LOAD and STORE
  logic [LBUFW-1:0] ld_buf;
  logic [SBUFW-1:0] st_buf;
  logic ld_wen, ld_grant;
  logic [AW-1:0] ld_wbase, st_rbase;
  logic [NBW-1:0] ld_wcnt;
  logic [BEAT*8-1:0] ld_wdata, st_rdata;

  spikec_load #(.BEAT(BEAT), .LAT(DRAM_LATENCY)) u_load (
      .clk(clk), .rst(rst), .start(l_start), .ins(lq_head[spikec_isa_pkg::WORD_BITS-1:0]), .done(l_done),
      .rd_req(dram_rd_req), .rd_addr(dram_rd_addr), .rd_bytes(dram_rd_bytes),
      .rd_valid(dram_rd_valid), .rd_data(dram_rd_data),
      .w_buf(ld_buf), .w_en(ld_wen), .w_base(ld_wbase), .w_cnt(ld_wcnt), .w_data(ld_wdata),
      .w_grant(ld_grant));

  spikec_store #(.BEAT(BEAT), .LAT(DRAM_LATENCY)) u_store (
      .clk(clk), .rst(rst), .start(s_start), .ins(sq_head[spikec_isa_pkg::WORD_BITS-1:0]), .done(s_done),
      .r_buf(st_buf), .r_base(st_rbase), .r_data(st_rdata),
      .wr_req(dram_wr_req), .wr_addr(dram_wr_addr), .wr_bytes(dram_wr_bytes), .wr_data(dram_wr_data),
      .wr_ack(dram_wr_ack));

  always_comb begin
    case (st_buf)
      SBUFW'(spikec_isa_pkg::BUF_INP): st_rdata = inp_rdata[BEAT*8-1:0];
      SBUFW'(spikec_isa_pkg::BUF_WGT): st_rdata = wgt_rdata[BEAT*8-1:0];
      SBUFW'(spikec_isa_pkg::BUF_ACC): st_rdata = acc_rdata[BEAT*8-1:0];
      SBUFW'(spikec_isa_pkg::BUF_VEC): st_rdata = vec_rdata[BEAT*8-1:0];
      default: st_rdata = scl_rdata[BEAT*8-1:0];
    endcase
  end

  // ---------------------------------------------------------------- compute module
  logic [OPW-1:0] c_op, ch_op;
  logic spmm_start, vecu_start, spmm_done, vecu_done, fin_done, fin_active, spmm_sel;
  logic vecu_fault, fault_now;
  logic [3:0] vecu_fault_code;
  assign ch_op = cq_head[spikec_isa_pkg::HDR_OPCODE_LSB+:spikec_isa_pkg::HDR_OPCODE_W];
  assign c_op = c_cur[spikec_isa_pkg::HDR_OPCODE_LSB+:spikec_isa_pkg::HDR_OPCODE_W];
  assign spmm_start = c_start && ch_op == OPW'(spikec_isa_pkg::OP_SPMM);
  assign vecu_start = c_start && (ch_op == OPW'(spikec_isa_pkg::OP_ENCODE) || ch_op == OPW'(spikec_isa_pkg::OP_VEC));
  assign fin_done = fin_active;
  assign c_done = spmm_done || vecu_done || fin_done;
  assign fault_now = vecu_fault;

  always_ff @(posedge clk) begin
    if (rst) begin
      fin_active <= 1'b0;
      spmm_sel <= 1'b0;
    end else begin
      fin_active <= c_start && ch_op == OPW'(spikec_isa_pkg::OP_FINISH);
      if (c_start) spmm_sel <= ch_op == OPW'(spikec_isa_pkg::OP_SPMM);
    end
  end

  logic [AW-1:0] sp_inp_rbase, sp_wgt_rbase, sp_acc_rbase, sp_acc_wbase;
  logic sp_acc_we, sp_vector;
  logic [ACC_CW-1:0] sp_acc_wcnt;
  logic [ACC_BANKS*32-1:0] sp_acc_wdata;
  logic [15:0] sp_spikes, sp_skipped;

  spikec_spmm #(
      .R(PE_ROWS), .C(PE_COLS), .SETUP(SPMM_SETUP), .INP_NB(INP_BANKS), .WGT_NB(WGT_BANKS), .ACC_NB(ACC_BANKS)
  ) u_spmm (
      .clk(clk), .rst(rst), .start(spmm_start), .ins(cq_head[spikec_isa_pkg::WORD_BITS-1:0]), .done(spmm_done),
      .inp_rbase(sp_inp_rbase), .inp_rdata(inp_rdata[INP_BANKS*16+:INP_BANKS*16]),
      .wgt_rbase(sp_wgt_rbase), .wgt_rdata(wgt_rdata[WGT_BANKS*8+:WGT_BANKS*8]),
      .acc_rbase(sp_acc_rbase), .acc_rdata(acc_rdata[ACC_BANKS*32+:ACC_BANKS*32]),
      .acc_we(sp_acc_we), .acc_wbase(sp_acc_wbase), .acc_wcnt(sp_acc_wcnt), .acc_wdata(sp_acc_wdata),
      .cnt_spikes(sp_spikes), .cnt_vector(sp_vector), .cnt_skipped(sp_skipped));

  logic [AW-1:0] vu_va, vu_vb, vu_acc, vu_s0, vu_s1, vu_s2, vu_vwbase, vu_iwbase, vu_gwbase, vu_swbase;
  logic vu_vwe, vu_iwe, vu_gwe, vu_swe;
  logic [VEC_CW-1:0] vu_vwcnt;
  logic [INP_CW-1:0] vu_iwcnt;
  logic [WGT_CW-1:0] vu_gwcnt;
  logic [VEC_BANKS*32-1:0] vu_vwdata;
  logic [INP_BANKS*16-1:0] vu_iwdata;
  logic [WGT_BANKS*8-1:0] vu_gwdata;
  logic [31:0] vu_swdata;

  spikec_vecu #(
      .L(VEC_LANES), .SETUP(VEC_SETUP), .VEC_NB(VEC_BANKS), .ACC_NB(ACC_BANKS), .SCL_NB(SCL_BANKS),
      .INP_NB(INP_BANKS), .WGT_NB(WGT_BANKS)
  ) u_vecu (
      .clk(clk), .rst(rst), .start(vecu_start), .ins(cq_head[spikec_isa_pkg::WORD_BITS-1:0]), .done(vecu_done),
      .fault(vecu_fault), .fault_code(vecu_fault_code),
      .va_rbase(vu_va), .vb_rbase(vu_vb),
      .va_rdata(vec_rdata[VEC_BANKS*32+:VEC_BANKS*32]), .vb_rdata(vec_rdata[2*VEC_BANKS*32+:VEC_BANKS*32]),
      .acc_rbase(vu_acc), .acc_rdata(acc_rdata[ACC_BANKS*32+:ACC_BANKS*32]),
      .s0_rbase(vu_s0), .s1_rbase(vu_s1), .s2_rbase(vu_s2),
      .s0_rdata(scl_rdata[SCL_BANKS*32+:SCL_BANKS*32]), .s1_rdata(scl_rdata[2*SCL_BANKS*32+:SCL_BANKS*32]),
      .s2_rdata(scl_rdata[3*SCL_BANKS*32+:SCL_BANKS*32]),
      .v_we(vu_vwe), .v_wbase(vu_vwbase), .v_wcnt(vu_vwcnt), .v_wdata(vu_vwdata),
      .i_we(vu_iwe), .i_wbase(vu_iwbase), .i_wcnt(vu_iwcnt), .i_wdata(vu_iwdata),
      .g_we(vu_gwe), .g_wbase(vu_gwbase), .g_wcnt(vu_gwcnt), .g_wdata(vu_gwdata),
      .s_we(vu_swe), .s_wbase(vu_swbase), .s_wdata(vu_swdata));

  // read port addresses
  assign inp_rbase = {INP_AW'(sp_inp_rbase), INP_AW'(st_rbase)};
  assign wgt_rbase = {WGT_AW'(sp_wgt_rbase), WGT_AW'(st_rbase)};
  assign acc_rbase = {ACC_AW'(spmm_sel ? sp_acc_rbase : vu_acc), ACC_AW'(st_rbase)};
  assign vec_rbase = {VEC_AW'(vu_vb), VEC_AW'(vu_va), VEC_AW'(st_rbase)};
  assign scl_rbase = {SCL_AW'(vu_s2), SCL_AW'(vu_s1), SCL_AW'(vu_s0), SCL_AW'(st_rbase)};

  // write ports: the compute module first, else the LOAD engine
  always_comb begin
    logic busy_w;
    case (ld_buf)
      LBUFW'(spikec_isa_pkg::BUF_INP): busy_w = vu_iwe;
      LBUFW'(spikec_isa_pkg::BUF_WGT): busy_w = vu_gwe;
      LBUFW'(spikec_isa_pkg::BUF_ACC): busy_w = sp_acc_we;
      LBUFW'(spikec_isa_pkg::BUF_VEC): busy_w = vu_vwe;
      default: busy_w = vu_swe;
    endcase
    ld_grant = !busy_w;

    inp_we = vu_iwe;
    inp_wbase = INP_AW'(vu_iwbase);
    inp_wcnt = vu_iwcnt;
    inp_wdata = vu_iwdata;
    if (!vu_iwe && ld_wen && ld_buf == LBUFW'(spikec_isa_pkg::BUF_INP)) begin
      inp_we = 1'b1;
      inp_wbase = INP_AW'(ld_wbase);
      inp_wcnt = INP_CW'(ld_wcnt);
      inp_wdata = (INP_BANKS * 16)'(ld_wdata);
    end
    wgt_we = vu_gwe;
    wgt_wbase = WGT_AW'(vu_gwbase);
    wgt_wcnt = vu_gwcnt;
    wgt_wdata = vu_gwdata;
    if (!vu_gwe && ld_wen && ld_buf == LBUFW'(spikec_isa_pkg::BUF_WGT)) begin
      wgt_we = 1'b1;
      wgt_wbase = WGT_AW'(ld_wbase);
      wgt_wcnt = WGT_CW'(ld_wcnt);
      wgt_wdata = (WGT_BANKS * 8)'(ld_wdata);
    end
    acc_we = sp_acc_we;
    acc_wbase = ACC_AW'(sp_acc_wbase);
    acc_wcnt = sp_acc_wcnt;
    acc_wdata = sp_acc_wdata;
    if (!sp_acc_we && ld_wen && ld_buf == LBUFW'(spikec_isa_pkg::BUF_ACC)) begin
      acc_we = 1'b1;
      acc_wbase = ACC_AW'(ld_wbase);
      acc_wcnt = ACC_CW'(ld_wcnt);
      acc_wdata = (ACC_BANKS * 32)'(ld_wdata);
    end
    vec_we = vu_vwe;
    vec_wbase = VEC_AW'(vu_vwbase);
    vec_wcnt = vu_vwcnt;
    vec_wdata = vu_vwdata;
    if (!vu_vwe && ld_wen && ld_buf == LBUFW'(spikec_isa_pkg::BUF_VEC)) begin
      vec_we = 1'b1;
      vec_wbase = VEC_AW'(ld_wbase);
      vec_wcnt = VEC_CW'(ld_wcnt);
      vec_wdata = (VEC_BANKS * 32)'(ld_wdata);
    end
    scl_we = vu_swe;
    scl_wbase = SCL_AW'(vu_swbase);
    scl_wcnt = SCL_CW'(1);
    scl_wdata = (SCL_BANKS * 32)'(vu_swdata);
    if (!vu_swe && ld_wen && ld_buf == LBUFW'(spikec_isa_pkg::BUF_SCL)) begin
      scl_we = 1'b1;
      scl_wbase = SCL_AW'(ld_wbase);
      scl_wcnt = SCL_CW'(ld_wcnt);
      scl_wdata = (SCL_BANKS * 32)'(ld_wdata);
    end
  end

  // ---------------------------------------------------------------- status and counters
  logic [63:0] cnt_cycles, cnt_busy_l, cnt_busy_c, cnt_busy_s, cnt_ins, cnt_rd, cnt_wr;
  logic [63:0] cnt_spk, cnt_vecs, cnt_skip, cnt_vel;
  logic [31:0] vec_elems_now;
  assign vec_elems_now = (ch_op == OPW'(spikec_isa_pkg::OP_ENCODE))
      ? 32'(cq_head[spikec_isa_pkg::ENCODE_N_LSB+:spikec_isa_pkg::ENCODE_N_W]) *
        32'(cq_head[spikec_isa_pkg::ENCODE_LEN_LSB+:spikec_isa_pkg::ENCODE_LEN_W])
      : 32'(cq_head[spikec_isa_pkg::VEC_N_LSB+:spikec_isa_pkg::VEC_N_W]) *
        32'(cq_head[spikec_isa_pkg::VEC_LEN_LSB+:spikec_isa_pkg::VEC_LEN_W]);
  assign counters = {cnt_vel, cnt_skip, cnt_vecs, cnt_spk, cnt_wr, cnt_rd, cnt_ins, cnt_busy_s, cnt_busy_c,
                     cnt_busy_l, cnt_cycles};

  always_ff @(posedge clk) begin
    if (rst) begin
      finished <= 1'b0;
      fault <= 1'b0;
      fault_code <= '0;
      fault_index <= '0;
      fault_opcode <= '0;
      {cnt_cycles, cnt_busy_l, cnt_busy_c, cnt_busy_s, cnt_ins, cnt_rd, cnt_wr} <= '0;
      {cnt_spk, cnt_vecs, cnt_skip, cnt_vel} <= '0;
    end else if (!halted) begin
      if (fin_done) finished <= 1'b1;
      if (fault_now) begin
        fault <= 1'b1;
        fault_code <= vecu_fault_code;
        fault_index <= c_cur[spikec_isa_pkg::WORD_BITS+:spikec_isa_pkg::PC_W];
        fault_opcode <= c_op;
      end else if (illegal) begin
        fault <= 1'b1;
        fault_code <= no_wfifo ? FAULT_NO_WFIFO : FAULT_ILLEGAL;
        fault_index <= pc;
        fault_opcode <= fop;
      end
      cnt_cycles <= cnt_cycles + 1;
      cnt_busy_l <= cnt_busy_l + 64'(l_active);
      cnt_busy_c <= cnt_busy_c + 64'(c_active);
      cnt_busy_s <= cnt_busy_s + 64'(s_active);
      cnt_ins <= cnt_ins + 64'(l_done) + 64'(c_done) + 64'(s_done);
      cnt_rd <= cnt_rd + (dram_rd_req ? 64'(dram_rd_bytes) : 64'd0);
      cnt_wr <= cnt_wr + (dram_wr_req ? 64'(dram_wr_bytes) : 64'd0);
      cnt_spk <= cnt_spk + 64'(sp_spikes);
      cnt_vecs <= cnt_vecs + 64'(sp_vector);
      cnt_skip <= cnt_skip + 64'(sp_skipped);
      if (vecu_start) cnt_vel <= cnt_vel + 64'(vec_elems_now);
    end
  end
endmodule
