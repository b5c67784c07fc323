"""`MoEAccelerator`: one MoE layer's accelerator behind a byte-packet command interface.

It holds the `LayerCore` (token buffer, router, dispatch, expert-major scheduler, routed and
shared expert engines, combiner, output buffer) and the `ExpertCache` between the routed engine
and the backing memory, and decodes the commands of `moeforge.spec.protocol` (opcodes, packet
formats and status codes are specified there). The host runtime's link delivers the command
packets and carries the responses back; in simulation a cocotb bench or the simulated device
does.

Interface
---------
``i_cmd`` (in stream ``{data: 8, last}``): command packets, one byte a beat, ``last`` on a
packet's final byte. Taken at one byte per cycle except while a response is being sent or a
batch runs.

``o_rsp`` (out stream ``{data: 8, last}``): one response packet per command, status byte first.

``mem_req`` / ``mem_resp``: the expert cache's burst-read port to the backing memory (see
`ExpertCache`); ``mem_wr`` (out ``{addr, data, en}``): ``WRITE_MEMORY``'s words, one a cycle, to
the backing memory's write port. Expert ``e``'s image is at word ``e · image_words``.

``error`` (out, 8 bits): the status of the last failed command since the last ``INFO`` (which
reports and clears it); ``loaded`` (out, 4 bits): `protocol.LOADED_FLAGS`; ``busy`` (out): the
decoder is not waiting for an opcode (a command is arriving, running or answering).

Command decoding
----------------
A state machine takes the opcode, then the fixed header of the command (`HEADER_BYTES`),
checks it (opcode, ranges, batch size, what is loaded) before touching any memory, then moves
the data: write commands assemble words byte by little-endian byte and write each the cycle
after its last byte; ``RUN`` starts the core and answers at its ``done``; ``READ_OUTPUT`` reads
the output buffer word by word and sends its bytes; ``INFO``, ``RUN``'s cycles, ``READ_IMAGE_CRC`` and
``READ_COUNTERS`` are sent from registers. ``SET_EXPERT_MASK``'s bytes are shifted into a staging
register as they arrive and become the mask (the core's ``expert_off``, inverted) only when the
packet ends with them; ``READ_PARTIAL`` reads the combiner's accumulators through the core's
``acc_rd`` word by word and sends each value's `CommandLayout.partial_bytes` bytes, low first.
The image CRC (`protocol`, ``READ_IMAGE_CRC``) advances one byte a cycle as the bytes arrive:
a working copy takes each data byte of a weight write (and ``SET_SCALE``'s header bytes), and
becomes the CRC when its word is written (when ``SET_SCALE`` succeeds); a command that fails
before that point leaves the CRC as it was, so the CRC covers exactly the words written.
A failing command drains the rest of its packet and answers its status alone; the device is
then ready for the next command. ``WRITE_MEMORY`` invalidates the expert cache when it ends (the
cached copies may be stale), and a ``RUN`` clears the cache's counters with the core's, so
``READ_COUNTERS`` gives the last batch's.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from moeforge.config import AccelConfig
from moeforge.spec.arith import MULT_BITS, SHIFT_BITS, SHIFT_MAX, SHIFT_MIN, X_SHIFT_BITS, X_SHIFT_MAX, X_SHIFT_MIN
from moeforge.spec.protocol import (CACHE_COUNTERS, CORE_COUNTERS, COUNTER_BYTES, HEADER_BYTES,
                                    LOADED_FLAGS, PROTOCOL_VERSION, RESPONSE_BYTES, CommandLayout,
                                    Op, Status, config_hash, header_bytes)

from ..link.crc32 import CRC_INIT, crc32_next
from ..memory.expert_cache import ExpertCache
from ..layer.layer_core import LayerCore
from ..datapath.mac_array import weight_word

__all__ = ["MoEAccelerator", "byte_layout"]


def byte_layout() -> data.StructLayout:
    return data.StructLayout({"data": 8, "last": 1})


def _bits(n: int) -> int:
    return max(1, ceil_log2(max(2, n)))


# What follows a response's status byte: nothing, or a payload sent from registers
P_NONE, P_INFO, P_RUN, P_COUNTERS, P_CRC = range(5)


class MoEAccelerator(wiring.Component):
    """The accelerator of one MoE layer (see the module docstring).

    Parameters
    ----------
    cfg : AccelConfig
    burst : int
        Longest burst the expert cache asks of the backing memory, in words.

    Raises
    ------
    TypeError, ValueError
        For a config the units cannot be built for (the message names the unit's parameter).
    """

    def __init__(self, cfg: AccelConfig, *, burst: int = 16, src_loc_at: int = 0):
        if not isinstance(cfg, AccelConfig):
            raise TypeError(f"cfg must be an AccelConfig, not {cfg!r}")
        self.cfg = cfg
        self.layout = lay = CommandLayout.from_config(cfg)
        self.core = LayerCore(cfg, src_loc_at=1 + src_loc_at)
        self.cache = ExpertCache.from_config(cfg, image_words=self.core.image_words,
                                             word_bits=8 * cfg.mac_cols, burst=burst)
        self.config_hash = config_hash(cfg)
        self.mem_words = lay.memory_words
        super().__init__({
            "i_cmd": In(stream.Signature(byte_layout())),
            "o_rsp": Out(stream.Signature(byte_layout())),
            "mem_req": Out(stream.Signature(self.cache.mem_req_layout)),
            "mem_resp": In(stream.Signature(self.cache.mem_resp_layout)),
            "mem_wr": Out(wiring.Signature({"addr": Out(_bits(self.mem_words)),
                                            "data": Out(8 * cfg.mac_cols), "en": Out(1)})),
            "error": Out(8),
            "loaded": Out(len(LOADED_FLAGS)),
            "busy": Out(1),
        }, src_loc_at=1 + src_loc_at)

    # `elaborate` calls one part per function of the design, each adding to the same Module;
    # `net` carries the signals and helpers a later part needs. The parts run in a fixed order
    # (the Verilog follows the order of statements and states); the decoder's states come from
    # the parts called inside its FSM.
    def elaborate(self, platform):
        m = Module()
        net = SimpleNamespace()
        m.submodules.core = self.core
        m.submodules.cache = self.cache
        self._cache_link(m)
        self._decoder_registers(m, net)
        self._image_crc(net)
        self._write_table(m, net)
        self._command_input(m, net)
        self._response_bytes(m, net)
        self._output_reads(m, net)
        self._command_table(m, net)
        with m.FSM(name="decoder") as decoder:
            self._opcode_and_header(m, net)
            self._check(m, net)
            self._write_data(m, net)
            self._written(m, net)
            self._execute(m, net)
            self._respond(m, net)
            self._output_states(m, net)
            self._partial_states(m, net)
            self._output_emit(m, net)       # after the PART_ states: the state order
        m.d.comb += self.busy.eq(~decoder.ongoing("OPCODE"))
        return m

    def _cache_link(self, m) -> None:
        """Core <-> cache <-> backing memory: the cache sits between the routed engine and
        the SoC's burst-read port."""
        core, cache = self.core, self.cache
        m.d.comb += [
            cache.i_req.valid.eq(core.o_req.valid),
            cache.i_req.payload.expert.eq(core.o_req.payload.expert),
            core.o_req.ready.eq(cache.i_req.ready),
            core.i_grant.valid.eq(cache.o_grant.valid),
            core.i_grant.payload.expert.eq(cache.o_grant.payload.expert),
            core.i_grant.payload.slot.eq(cache.o_grant.payload.slot),
            core.i_grant.payload.hit.eq(cache.o_grant.payload.hit),
            cache.o_grant.ready.eq(core.i_grant.ready),
            cache.release.eq(core.release),
            cache.rd.addr.eq(core.w_rd.addr),
            cache.rd.en.eq(core.w_rd.en),
            core.w_rd.data.eq(cache.rd.data),
        ]
        wiring.connect(m, wiring.flipped(self.mem_req), cache.mem_req)
        wiring.connect(m, wiring.flipped(self.mem_resp), cache.mem_resp)

    def _decoder_registers(self, m, net) -> None:
        """The decoder's state: the command being taken, what is loaded, the scale, the mask."""
        cfg, lay, core = self.cfg, self.layout, self.core
        T_max = cfg.token_buffer_depth
        op = Signal(8)
        hdr = Signal(8 * max(HEADER_BYTES.values()))   # the longest fixed header
        hdr_len = Signal(8)             # the opcode's header length (`_command_table`)
        idx = Signal(8)                 # header byte / word byte / payload byte index
        hdr_last = Signal()             # the header's final byte ended the packet
        status = Signal(8)
        payload = Signal(range(5))      # 0 none, 1 INFO, 2 RUN cycles, 3 counters, 4 image CRC
        wbytes = max(cfg.mac_cols, lay.router_bytes, lay.token_bytes)
        word = Signal(8 * wbytes)
        waddr = Signal(33)
        remaining = Signal(33)
        end = Signal(33)                # addr + count of a write
        first = Signal(16)              # WRITE_TOKENS' / READ_OUTPUT's first token
        error = Signal(8)
        ld_router, ld_scale, ld_experts, ld_shared = (Signal(name=f"loaded_{n}")
                                                      for n in LOADED_FLAGS)
        tokens_valid = Signal(range(T_max + 1))
        y_mult, y_shift = Signal(MULT_BITS), Signal(SHIFT_BITS)
        x_shift = Signal(X_SHIFT_BITS)  # S_x (wide input only; 0 otherwise)
        run_n = Signal(range(T_max + 1))
        if core.wide:
            m.d.comb += core.x_shift.eq(x_shift)
        m.d.comb += [self.error.eq(error), core.y_mult.eq(y_mult), core.y_shift.eq(y_shift),
                     self.loaded.eq(Cat(ld_router, ld_scale, ld_experts, ld_shared))]
        n_mask = cfg.n_experts + (1 if cfg.shared_d_ff else 0)    # the shared bit only with one
        expert_on = Signal(n_mask, init=(1 << n_mask) - 1)     # SET_EXPERT_MASK: all after reset
        mask_in = Signal(8 * lay.mask_bytes)                   # header bytes, shifted in
        m.d.comb += core.expert_off.eq(~expert_on)
        vars(net).update(
            op=op, hdr=hdr, hdr_len=hdr_len, idx=idx, hdr_last=hdr_last, status=status,
            payload=payload, wbytes=wbytes, word=word, waddr=waddr, remaining=remaining, end=end,
            first=first, error=error, ld_router=ld_router, ld_scale=ld_scale,
            ld_experts=ld_experts, ld_shared=ld_shared, tokens_valid=tokens_valid,
            y_mult=y_mult, y_shift=y_shift, x_shift=x_shift, run_n=run_n, n_mask=n_mask, expert_on=expert_on,
            mask_in=mask_in)

    def _image_crc(self, net) -> None:
        """The image CRC's registers: `img_crc` covers the words written; `img_run` is it plus
        the bytes of the word (or SET_SCALE header) being taken, and `img_next` that after
        this byte."""
        op = net.op
        net.img_crc = Signal(32, init=CRC_INIT, name="img_crc")
        net.img_run = Signal(32, name="img_run")
        net.img_next = Signal(32, name="img_next")
        net.is_weight_write = ((op == Op.WRITE_ROUTER) | (op == Op.WRITE_MEMORY)
                               | (op == Op.WRITE_SHARED))

    def _write_table(self, m, net) -> None:
        """The registered write ports: a word is written the cycle after its last byte, to the
        port of the command that took it (the core has a shared image port only with a shared
        expert; without one, WRITE_SHARED's region is empty and no word reaches the table)."""
        core, lay, C = self.core, self.layout, self.cfg.mac_cols
        wr_en = Signal()
        wr_addr = Signal(32)
        wr_data = Signal(8 * net.wbytes)
        wr_op = Signal(8)
        m.d.sync += wr_en.eq(0)
        table = [(core.router_wr, Op.WRITE_ROUTER, 8 * lay.router_bytes),
                 (self.mem_wr, Op.WRITE_MEMORY, 8 * C)]
        if core.shared is not None:
            table.append((core.shared_wr, Op.WRITE_SHARED, 8 * C))
        table.append((core.tok_wr, Op.WRITE_TOKENS, 8 * lay.token_bytes))
        for port, target, width in table:
            bits = len(Value.cast(port.data))          # (a View's len() counts its elements)
            assert bits <= width, (target, bits, width)
            m.d.comb += [port.addr.eq(wr_addr), Value.cast(port.data).eq(wr_data[:bits]),
                         port.en.eq(wr_en & (wr_op == target))]
        vars(net).update(wr_en=wr_en, wr_addr=wr_addr, wr_data=wr_data, wr_op=wr_op)

    def _command_input(self, m, net) -> None:
        """The command byte taken this cycle, the header's fields, and `respond` / `fail`,
        which every state ends a command through."""
        hdr, status, payload = net.hdr, net.status, net.payload
        net.h_addr, net.h_count = hdr[:32], hdr[32:64]
        net.h_lo16, net.h_hi16 = hdr[:16], hdr[16:32]

        def respond(code, kind=P_NONE):
            m.d.sync += [status.eq(code), payload.eq(kind)]
            m.next = "RESPOND"

        def fail(code, drain):
            """Answer `code` now (the packet has ended) or after draining the rest of it."""
            m.d.sync += [status.eq(code), payload.eq(P_NONE)]
            if isinstance(drain, bool):
                m.next = "DRAIN" if drain else "RESPOND"
            else:
                with m.If(drain):
                    m.next = "DRAIN"
                with m.Else():
                    m.next = "RESPOND"

        net.respond, net.fail = respond, fail
        net.n_cmd = self.i_cmd.valid & self.i_cmd.ready
        net.byte, net.last = self.i_cmd.payload.data, self.i_cmd.payload.last

    def _response_bytes(self, m, net) -> None:
        """The response payloads sent from registers (INFO, RUN's cycles, the counters, the
        image CRC): their lengths by kind, and the byte at `idx`."""
        core, cache, idx, payload = self.core, self.cache, net.idx, net.payload
        info_bytes = [Const(PROTOCOL_VERSION, 8), *[Const(b, 8) for b in self.config_hash],
                      net.error, Cat(net.ld_router, net.ld_scale, net.ld_experts, net.ld_shared,
                                     Const(0, 8 - len(LOADED_FLAGS)))]
        assert len(info_bytes) == RESPONSE_BYTES[Op.INFO]
        counter_values = [getattr(core, n) for n in CORE_COUNTERS] + \
                         [getattr(cache, n) for n in CACHE_COUNTERS]
        counter_bytes = [v.as_unsigned()[8 * i:8 * i + 8] if len(v) > 8 * i else Const(0, 8)
                         for v in counter_values for i in range(COUNTER_BYTES)]
        assert len(counter_bytes) == RESPONSE_BYTES[Op.READ_COUNTERS]
        run_bytes = [core.cycles[8 * i:8 * i + 8] for i in range(RESPONSE_BYTES[Op.RUN])]
        img_value = net.img_crc ^ CRC_INIT
        crc_bytes = [img_value[8 * i:8 * i + 8] for i in range(RESPONSE_BYTES[Op.READ_IMAGE_CRC])]
        payload_len = Signal(8)
        m.d.comb += payload_len.eq(Array([Const(0, 8), Const(len(info_bytes), 8),
                                          Const(len(run_bytes), 8), Const(len(counter_bytes), 8),
                                          Const(len(crc_bytes), 8)])[payload])
        payload_byte = Signal(8)
        with m.Switch(payload):
            with m.Case(P_INFO):
                m.d.comb += payload_byte.eq(Array(info_bytes)[idx])
            with m.Case(P_RUN):
                m.d.comb += payload_byte.eq(Array(run_bytes)[idx[:2]])
            with m.Case(P_COUNTERS):
                m.d.comb += payload_byte.eq(Array(counter_bytes)[idx])
            with m.Case(P_CRC):
                m.d.comb += payload_byte.eq(Array(crc_bytes)[idx[:2]])
        m.d.comb += net.img_next.eq(crc32_next(net.img_run, net.byte))
        net.payload_len, net.payload_byte = payload_len, payload_byte

    def _output_reads(self, m, net) -> None:
        """READ_OUTPUT's output-buffer reads, and READ_PARTIAL's combiner accumulator reads:
        token `first`, beat `part_beat` (of the combiner's ``L = combiner.lanes`` values); the
        value of lane `idx`, sign-extended, sent byte `part_byte` by byte. `out_left` counts
        output words of ``R`` values or accumulator words of ``L``."""
        cfg, core = self.cfg, self.core
        D, R, T_max = cfg.d_model, cfg.mac_rows, cfg.token_buffer_depth
        L = core.combiner.lanes
        out_word = Signal(8 * R)
        out_addr = Signal(range(T_max * (D // R) + 1))
        out_left = Signal(range(T_max * (D // L) + 1))
        m.d.comb += core.out_rd.addr.eq(out_addr)
        PB = self.layout.partial_bytes
        part_beat = Signal(range(max(2, D // L)))
        part_byte = Signal(range(max(2, PB)))
        part_value = Signal(signed(8 * PB))
        m.d.comb += [core.acc_rd.token.eq(net.first), core.acc_rd.beat.eq(part_beat),
                     part_value.eq(Array(core.acc_rd.data[i] for i in range(L))[net.idx])]
        vars(net).update(out_word=out_word, out_addr=out_addr, out_left=out_left,
                         part_beat=part_beat, part_byte=part_byte, part_value=part_value)

    def _command_table(self, m, net) -> None:
        """What the decoder knows of each opcode: its header length, whether it exists, a
        write's region, and what RUN needs loaded."""
        lay = self.layout
        hdr_table = header_bytes(lay)
        assert max(hdr_table.values()) < 256, hdr_table
        net.hdr_lens = Array([Const(hdr_table.get(o, 0), 8) for o in range(16)])
        # HEADER's length is looked up from the held opcode, not registered: Yosys makes this
        # table a ROM, and merging a register it feeds into the ROM's port left the ROM's
        # output undriven (check -assert) until a later opt
        m.d.comb += net.hdr_len.eq(net.hdr_lens[net.op[:4]])
        net.known = Array([Const(o in hdr_table, 1) for o in range(16)])
        net.region_end = {Op.WRITE_ROUTER: lay.router_words, Op.WRITE_MEMORY: lay.memory_words,
                          Op.WRITE_SHARED: lay.shared_image_words}
        needs_shared = bool(self.cfg.shared_d_ff)
        net.all_loaded = (net.ld_router & net.ld_scale & net.ld_experts
                          & (net.ld_shared if needs_shared else 1))

    def _opcode_and_header(self, m, net) -> None:
        """OPCODE and HEADER: take the opcode, then its fixed header into `hdr`."""
        byte, last, n_cmd, idx, fail = net.byte, net.last, net.n_cmd, net.idx, net.fail
        with m.State("OPCODE"):
            m.d.comb += self.i_cmd.ready.eq(1)
            m.d.sync += net.img_run.eq(net.img_crc)
            with m.If(n_cmd):
                m.d.sync += [net.op.eq(byte), net.hdr.eq(0), idx.eq(0)]
                with m.If((byte >= 16) | ~net.known[byte[:4]]):
                    fail(Status.BAD_OPCODE, drain=~last)
                with m.Elif(net.hdr_lens[byte[:4]] == 0):
                    with m.If(last):
                        m.next = "EXEC"
                    with m.Else():
                        fail(Status.BAD_LENGTH, drain=True)
                with m.Elif(last):
                    fail(Status.BAD_LENGTH, drain=False)
                with m.Else():
                    m.next = "HEADER"

        with m.State("HEADER"):
            m.d.comb += self.i_cmd.ready.eq(1)
            with m.If(n_cmd):
                m.d.sync += [net.hdr.word_select(idx[:3], 8).eq(byte), idx.eq(idx + 1),
                             net.mask_in.eq(Cat(net.mask_in[8:], byte))]
                with m.If(net.op == Op.SET_SCALE):
                    m.d.sync += net.img_run.eq(net.img_next)
                with m.If(idx == net.hdr_len - 1):
                    m.d.sync += net.hdr_last.eq(last)
                    m.next = "CHECK"
                with m.Elif(last):
                    fail(Status.BAD_LENGTH, drain=False)

    def _check(self, m, net) -> None:
        """CHECK: the header's checks (opcode, ranges, batch size, what is loaded) before any
        memory is touched; then the command's first state."""
        with m.State("CHECK"):
            net.drain = ~net.hdr_last
            m.d.sync += net.idx.eq(0)
            with m.Switch(net.op):
                self._check_writes(m, net)
                self._check_commands(m, net)

    def _check_writes(self, m, net) -> None:
        """CHECK's cases for the write commands: range, then length, then DATA."""
        fail, respond, hdr_last, drain = net.fail, net.respond, net.hdr_last, net.drain
        D, C = self.cfg.d_model, self.cfg.mac_cols

        def begin_write(end_value, limit, count, setup):
            """A write command's header: range, then length, then DATA."""
            with m.If(end_value > limit):
                fail(Status.OUT_OF_RANGE, drain)
            with m.Elif(count == 0):
                with m.If(hdr_last):
                    respond(Status.OK)
                with m.Else():
                    fail(Status.BAD_LENGTH, drain=True)
            with m.Elif(hdr_last):
                respond(Status.BAD_LENGTH)
            with m.Else():
                m.d.sync += [*setup, net.end.eq(end_value)]
                m.next = "DATA"

        h_addr, h_count, h_lo16, h_hi16 = net.h_addr, net.h_count, net.h_lo16, net.h_hi16
        for wop in (Op.WRITE_ROUTER, Op.WRITE_MEMORY, Op.WRITE_SHARED):
            with m.Case(wop):
                begin_write(h_addr + h_count, net.region_end[wop], h_count,
                            [net.waddr.eq(h_addr), net.remaining.eq(h_count)])
        with m.Case(Op.WRITE_TOKENS):
            begin_write(h_lo16 + h_hi16, self.cfg.token_buffer_depth, h_hi16,
                        [net.waddr.eq(h_lo16 * (D // C)), net.remaining.eq(h_hi16 * (D // C)),
                         net.first.eq(h_lo16)])

    def _check_commands(self, m, net) -> None:
        """CHECK's cases for the other commands with a header: each answers at once or starts
        its reads or its run."""
        fail, respond, drain, hdr = net.fail, net.respond, net.drain, net.hdr
        h_lo16, h_hi16 = net.h_lo16, net.h_hi16
        D, R, T_max = self.cfg.d_model, self.cfg.mac_rows, self.cfg.token_buffer_depth
        with m.Case(Op.SET_SCALE):
            with m.If(drain):
                fail(Status.BAD_LENGTH, drain=True)
            with m.Elif((hdr[16:24] < SHIFT_MIN) | (hdr[16:24] > SHIFT_MAX)):
                respond(Status.OUT_OF_RANGE)
            with m.Elif(((hdr[24:32] < X_SHIFT_MIN) | (hdr[24:32] > X_SHIFT_MAX)) if self.core.wide
                        else (hdr[24:32] != 0)):
                respond(Status.OUT_OF_RANGE)
            with m.Else():
                m.d.sync += [net.y_mult.eq(h_lo16), net.y_shift.eq(hdr[16:22]),
                             net.x_shift.eq(hdr[24:24 + X_SHIFT_BITS]),
                             net.ld_scale.eq(1), net.img_crc.eq(net.img_run)]
                respond(Status.OK)
        with m.Case(Op.RUN):
            with m.If(drain):
                fail(Status.BAD_LENGTH, drain=True)
            with m.Elif((h_lo16 == 0) | (h_lo16 > T_max)):
                respond(Status.BAD_BATCH)
            with m.Elif(~net.all_loaded):
                respond(Status.NOT_LOADED)
            with m.Elif(h_lo16 > net.tokens_valid):
                respond(Status.NO_TOKENS)
            with m.Else():
                m.d.sync += net.run_n.eq(h_lo16)
                m.next = "RUN"
        with m.Case(Op.READ_OUTPUT):
            with m.If(drain):
                fail(Status.BAD_LENGTH, drain=True)
            with m.Elif(h_lo16 + h_hi16 > T_max):
                respond(Status.OUT_OF_RANGE)
            with m.Else():
                m.d.sync += [net.out_addr.eq(h_lo16 * (D // R)),
                             net.out_left.eq(h_hi16 * (D // R)),
                             net.status.eq(Status.OK), net.payload.eq(P_NONE)]
                m.next = "OUT_STATUS"
        with m.Case(Op.READ_PARTIAL):
            with m.If(drain):
                fail(Status.BAD_LENGTH, drain=True)
            with m.Elif(h_lo16 + h_hi16 > T_max):
                respond(Status.OUT_OF_RANGE)
            with m.Else():
                m.d.sync += [net.first.eq(h_lo16), net.part_beat.eq(0),
                             net.out_left.eq(h_hi16 * (D // self.core.combiner.lanes))]
                m.next = "PART_STATUS"
        with m.Case(Op.SET_EXPERT_MASK):
            with m.If(drain):
                fail(Status.BAD_LENGTH, drain=True)
            with m.Else():
                m.d.sync += net.expert_on.eq(net.mask_in[:net.n_mask])
                respond(Status.OK)

    def _write_data(self, m, net) -> None:
        """DATA: a write's words, byte by little-endian byte, each to the write table the cycle
        after its last byte."""
        lay, C, idx, fail = self.layout, self.cfg.mac_cols, net.idx, net.fail
        byte, last, op, word, wbytes = net.byte, net.last, net.op, net.word, net.wbytes
        with m.State("DATA"):
            m.d.comb += self.i_cmd.ready.eq(1)
            nbytes = Signal(8)
            m.d.comb += nbytes.eq(Mux(op == Op.WRITE_ROUTER, lay.router_bytes,
                                      Mux(op == Op.WRITE_TOKENS, lay.token_bytes, C)))
            with m.If(net.n_cmd):
                m.d.sync += [word.word_select(idx[:ceil_log2(wbytes) or 1], 8).eq(byte),
                             idx.eq(idx + 1)]
                with m.If(net.is_weight_write):
                    m.d.sync += net.img_run.eq(net.img_next)
                with m.If(idx == nbytes - 1):
                    m.d.sync += [idx.eq(0), net.wr_en.eq(1), net.wr_op.eq(op),
                                 net.wr_addr.eq(net.waddr), net.waddr.eq(net.waddr + 1),
                                 net.remaining.eq(net.remaining - 1)]
                    with m.If(net.is_weight_write):
                        m.d.sync += net.img_crc.eq(net.img_next)     # the word is written
                    # the word's bytes so far, plus this one in its place
                    full = Signal.like(word, name="full_word")
                    m.d.comb += full.eq(word)
                    m.d.comb += full.word_select(idx[:ceil_log2(wbytes) or 1], 8).eq(byte)
                    m.d.sync += net.wr_data.eq(full)
                    with m.If(net.remaining == 1):
                        with m.If(last):
                            m.next = "WRITTEN"
                        with m.Else():
                            fail(Status.BAD_LENGTH, drain=True)
                    with m.Elif(last):
                        fail(Status.BAD_LENGTH, drain=False)
                with m.Elif(last):
                    fail(Status.BAD_LENGTH, drain=False)

    def _written(self, m, net) -> None:
        """WRITTEN: a write command completed; a region written to its end is loaded."""
        lay, end, tokens_valid = self.layout, net.end, net.tokens_valid
        with m.State("WRITTEN"):
            with m.Switch(net.op):
                with m.Case(Op.WRITE_ROUTER):
                    with m.If(end == lay.router_words):
                        m.d.sync += net.ld_router.eq(1)
                with m.Case(Op.WRITE_MEMORY):
                    m.d.comb += self.cache.invalidate.eq(1)
                    with m.If(end == lay.memory_words):
                        m.d.sync += net.ld_experts.eq(1)
                with m.Case(Op.WRITE_SHARED):
                    with m.If(end == lay.shared_image_words):
                        m.d.sync += net.ld_shared.eq(1)
                with m.Case(Op.WRITE_TOKENS):
                    with m.If((net.first <= tokens_valid) & (end > tokens_valid)):
                        m.d.sync += tokens_valid.eq(end)
            net.respond(Status.OK)

    def _execute(self, m, net) -> None:
        """EXEC: the commands without a header; RUN and RUN_WAIT: a batch on the core."""
        core, cache, idx, respond = self.core, self.cache, net.idx, net.respond
        with m.State("EXEC"):
            with m.Switch(net.op):
                with m.Case(Op.INFO):
                    m.d.sync += idx.eq(0)
                    respond(Status.OK, P_INFO)
                with m.Case(Op.READ_COUNTERS):
                    m.d.sync += idx.eq(0)
                    respond(Status.OK, P_COUNTERS)
                with m.Case(Op.READ_IMAGE_CRC):
                    m.d.sync += idx.eq(0)
                    respond(Status.OK, P_CRC)
                with m.Case(Op.INVALIDATE):
                    m.d.comb += cache.invalidate.eq(1)
                    respond(Status.OK)
                with m.Default():
                    respond(Status.BAD_OPCODE)

        with m.State("RUN"):
            m.d.comb += [core.i_run.valid.eq(1), core.i_run.payload.n_tokens.eq(net.run_n)]
            with m.If(core.i_run.ready):
                m.d.comb += cache.clear_counters.eq(1)
                m.next = "RUN_WAIT"

        with m.State("RUN_WAIT"):
            with m.If(core.done):
                m.d.sync += idx.eq(0)
                respond(Status.OK, P_RUN)

    def _respond(self, m, net) -> None:
        """DRAIN (the rest of a failed command's packet), RESPOND (the status byte) and
        PAYLOAD (a payload sent from registers)."""
        idx, status, payload_len = net.idx, net.status, net.payload_len
        rsp_valid, rsp_data, rsp_last = self.o_rsp.valid, self.o_rsp.payload.data, self.o_rsp.payload.last
        with m.State("DRAIN"):
            m.d.comb += self.i_cmd.ready.eq(1)
            with m.If(net.n_cmd & net.last):
                m.next = "RESPOND"

        with m.State("RESPOND"):
            m.d.comb += [rsp_valid.eq(1), rsp_data.eq(status), rsp_last.eq(payload_len == 0)]
            with m.If(self.o_rsp.ready):
                m.d.sync += idx.eq(0)
                with m.If(status != Status.OK):
                    m.d.sync += net.error.eq(status)
                m.next = "OPCODE"
                with m.If(payload_len != 0):
                    m.next = "PAYLOAD"

        with m.State("PAYLOAD"):
            m.d.comb += [rsp_valid.eq(1), rsp_data.eq(net.payload_byte),
                         rsp_last.eq(idx == payload_len - 1)]
            with m.If(self.o_rsp.ready):
                m.d.sync += idx.eq(idx + 1)
                with m.If(idx == payload_len - 1):
                    m.next = "OPCODE"
                    with m.If(net.payload == P_INFO):
                        m.d.sync += net.error.eq(0)   # INFO reports the last error and clears it

    def _output_states(self, m, net) -> None:
        """READ_OUTPUT's status byte, then per output-buffer word: OUT_READ, OUT_LATCH (its
        bytes are sent by OUT_EMIT)."""
        core, out_left = self.core, net.out_left
        with m.State("OUT_STATUS"):
            m.d.comb += [self.o_rsp.valid.eq(1), self.o_rsp.payload.data.eq(Status.OK),
                         self.o_rsp.payload.last.eq(out_left == 0)]
            with m.If(self.o_rsp.ready):
                m.next = "OPCODE"
                with m.If(out_left != 0):
                    m.next = "OUT_READ"

        with m.State("OUT_READ"):
            m.d.comb += core.out_rd.en.eq(1)
            m.next = "OUT_LATCH"

        with m.State("OUT_LATCH"):          # read latency 1: the word is here now
            m.d.sync += [net.out_word.eq(core.out_rd.data), net.idx.eq(0)]
            m.next = "OUT_EMIT"

    def _partial_states(self, m, net) -> None:
        """READ_PARTIAL: its status byte, then per beat of the combiner's accumulators (``L``
        values) each lane's value, byte by byte, low first (an untouched token's accumulator
        is 0)."""
        core, idx, out_left, part_byte = self.core, net.idx, net.out_left, net.part_byte
        D, L, PB = self.cfg.d_model, self.core.combiner.lanes, self.layout.partial_bytes
        rsp_valid, rsp_data, rsp_last = self.o_rsp.valid, self.o_rsp.payload.data, self.o_rsp.payload.last
        with m.State("PART_STATUS"):
            m.d.comb += [rsp_valid.eq(1), rsp_data.eq(Status.OK), rsp_last.eq(out_left == 0)]
            with m.If(self.o_rsp.ready):
                m.next = "OPCODE"
                with m.If(out_left != 0):
                    m.next = "PART_READ"

        with m.State("PART_READ"):          # latency 1; the port holds the word after
            m.d.comb += core.acc_rd.en.eq(1)
            m.d.sync += [idx.eq(0), part_byte.eq(0)]
            m.next = "PART_EMIT"

        with m.State("PART_EMIT"):
            lane_done = part_byte == PB - 1
            word_done = lane_done & (idx == L - 1)
            part_bytes = Array(net.part_value[8 * j:8 * j + 8] for j in range(PB))
            m.d.comb += [rsp_valid.eq(1),       # an untouched token's accumulator is 0
                         rsp_data.eq(Mux(core.acc_rd.touched, part_bytes[part_byte], 0)),
                         rsp_last.eq(word_done & (out_left == 1))]
            with m.If(self.o_rsp.ready):
                m.d.sync += part_byte.eq(part_byte + 1)
                with m.If(lane_done):
                    m.d.sync += [part_byte.eq(0), idx.eq(idx + 1)]
                with m.If(word_done):
                    m.d.sync += out_left.eq(out_left - 1)
                    with m.If(net.part_beat == D // L - 1):
                        m.d.sync += [net.part_beat.eq(0), net.first.eq(net.first + 1)]
                    with m.Else():
                        m.d.sync += net.part_beat.eq(net.part_beat + 1)
                    m.next = "OPCODE"
                    with m.If(out_left != 1):
                        m.next = "PART_READ"

    def _output_emit(self, m, net) -> None:
        """OUT_EMIT: the latched output word's bytes, lane by lane; then the next word."""
        idx, out_left, R = net.idx, net.out_left, self.cfg.mac_rows
        with m.State("OUT_EMIT"):
            final = (out_left == 1) & (idx == R - 1)
            m.d.comb += [self.o_rsp.valid.eq(1),
                         self.o_rsp.payload.data.eq(
                             Array(net.out_word[8 * i:8 * i + 8] for i in range(R))[idx]),
                         self.o_rsp.payload.last.eq(final)]
            with m.If(self.o_rsp.ready):
                m.d.sync += idx.eq(idx + 1)
                with m.If(idx == R - 1):
                    m.d.sync += [net.out_addr.eq(net.out_addr + 1), out_left.eq(out_left - 1)]
                    m.next = "OPCODE"
                    with m.If(out_left != 1):
                        m.next = "OUT_READ"
