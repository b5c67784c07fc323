"""The device's protocol: the command set (byte packets in, one response packet out per
command) and the host link's frames that carry them, HELLO report included.

This is the one place these layouts are declared: the accelerator's command decoder and the
link in `moeforge.rtl` build their state machines from it, the host runtime encodes and decodes
with it. ``docs/protocol.md`` describes the link; the command set is the table below.

Commands
--------
`MoEAccelerator` takes commands on its ``i_cmd`` byte stream, one command a packet (``last`` on
its final byte), and answers each with exactly one packet on ``o_rsp``: a status byte, then the
command's data. Integers are little-endian (`HEADER_FORMATS` gives each header).

==========  =========================================  ============================================
opcode      request (after the opcode byte)            response (after the status byte)
==========  =========================================  ============================================
``INFO``    —                                          version u8, config hash (8 bytes), the
                                                       last error u8, flags u8 (what is loaded)
``WRITE_    addr u32, count u32, ``count`` router      —
ROUTER``    words of `CommandLayout.router_bytes`
``WRITE_    addr u32, count u32, ``count`` words of    — (expert ``e``'s image at word
MEMORY``    ``C`` bytes into the backing memory        ``e · image_words``)
``WRITE_    addr u32, count u32, ``count`` words of    —
SHARED``    ``C`` bytes: the shared expert's image
``SET_      ``M_y`` u16, ``S_y`` u8 (``S_y`` in           —
SCALE``     ``arith.SHIFT_MIN .. SHIFT_MAX``), ``S_x``
            u8 (``X_SHIFT_MIN .. X_SHIFT_MAX`` with
            ``input_bits = 16``, else 0)
``WRITE_    first token u16, count u16, ``count``      —
TOKENS``    tokens of ``d_model`` values: int8, or
            int16 little-endian with ``input_bits = 16``
``RUN``     ``n_tokens`` u16                           cycles u32 (of the batch)
``READ_     first token u16, count u16                 ``count`` tokens of ``d_model`` int8
OUTPUT``
``READ_     —                                          `COUNTERS`, u32 each
COUNTERS``
``INVALI    —                                          — (forget the cached experts: after
DATE``                                                 rewriting expert images)
``SET_EXP   mask: `CommandLayout.mask_bytes` bytes,    — (from the next ``RUN`` on, a disabled
ERT_MASK``  bit ``e`` enables routed expert ``e``,     expert is neither fetched nor computed and
            bit ``n_experts`` the shared expert (the   adds nothing; the router still picks the
            other bits are ignored). All enabled       same top-k. The shared engine does not run
            after reset                                when the shared expert is disabled)
``READ_     first token u16, count u16                 ``count`` tokens of ``d_model`` raw
PARTIAL``                                              combiner accumulators of the last batch
                                                       (``Σ g·o`` over its enabled experts,
                                                       before ``rq_8``), signed, each in
                                                       `CommandLayout.partial_bytes` bytes; 0 for
                                                       a token no enabled expert contributed to
``READ_     —                                          image CRC u32 (see below)
IMAGE_
CRC``
==========  =========================================  ============================================

Image CRC: the device keeps a CRC-32 (``zlib.crc32``, the link's CRC) over every byte it has
put into its weight image since reset, in the order taken: the data bytes of each word that
``WRITE_ROUTER``, ``WRITE_MEMORY`` or ``WRITE_SHARED`` wrote, and the three header bytes of each
``SET_SCALE`` that succeeded (`image_bytes` says which bytes of a packet these are). Nothing
else moves it (not tokens, not the mask; only a reset clears it). A host reads it before and
after loading a layer: the value after is ``zlib.crc32(image bytes sent, value before)``
(`image_crc`) exactly when every byte reached the memories as sent, so a load corrupted on the
way (after the link's frame CRC, or in the device) is caught, not only a corrupted frame.

Expert parallelism: devices holding disjoint sets of experts (the shared expert on one of them),
each with the mask of its set, run the same tokens; the sum of their ``READ_PARTIAL`` values
requantised once (``rq_8`` with the layer's ``M_y``, ``S_y``) is what one device with every expert
answers to ``READ_OUTPUT`` (`QuantizedMoELayer.partial_int`). ``READ_OUTPUT`` and ``READ_PARTIAL``
both read the last batch until the next ``RUN``, in any order and as often as wanted.

A command that fails does nothing and answers its error status alone: the device checks the
header (opcode, ranges, order) before it writes anything, and stays usable. A packet longer or
shorter than its header says is `BAD_LENGTH`; the words of a write before the point where the
packet ended early have been written.

Frames and HELLO
----------------
A frame is ``MAGIC | type u8 | seq u8 | length u16 | payload | crc32 u32`` (`FRAME_HEADER_FORMAT`,
`CRC_FORMAT`), the CRC over type, sequence, length and payload. The HELLO report is
`HELLO_HEADER_FORMAT` (link version, ``max_payload``, `LINK_COUNTERS`) followed by the response
packets of ``INFO`` and ``READ_COUNTERS``: `HELLO_BYTES` in all, parsed by `HelloReport`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from moeforge.config import AccelConfig

from .image import ExpertImageLayout, RouterAddressMap, accumulator_width, expert_image, router_image

__all__ = [
    # commands
    "PROTOCOL_VERSION", "Op", "Status", "CORE_COUNTERS", "CACHE_COUNTERS", "COUNTERS",
    "COUNTER_FORMAT", "COUNTER_BYTES", "LOADED_FLAGS", "CONFIG_HASH_BYTES", "config_hash",
    "HEADER_FORMATS", "HEADER_BYTES", "OPCODE_BYTES", "STATUS_BYTES", "WRITE_HEADER_BYTES",
    "header_bytes", "INFO_FORMAT", "INFO_BYTES", "RUN_FORMAT", "IMAGE_CRC_FORMAT", "RESPONSE_BYTES",
    "CommandLayout", "CommandError", "encode", "check_response", "parse_counters", "WriteRun",
    "layer_writes", "layer_commands", "image_bytes", "image_crc",
    # frames and HELLO
    "MAGIC", "LINK_VERSION", "DEFAULT_MAX_PAYLOAD", "MAX_LENGTH_FIELD", "SEQ_MASK",
    "FRAME_HEADER_FORMAT", "FRAME_HEADER_BYTES", "CRC_FORMAT", "CRC_BYTES", "FrameType",
    "NackReason", "LINK_COUNTERS", "HELLO_HEADER_FORMAT", "HELLO_HEADER_BYTES", "HELLO_INFO_OFFSET",
    "HELLO_COUNTERS_OFFSET", "HELLO_BYTES", "HelloReport", "BUSY_LINE",
]

# ------------------------------------------------------------------------------ commands

PROTOCOL_VERSION = 3        # the command set's version (INFO); 2: READ_IMAGE_CRC; 3: int16 tokens, S_x


class Op:
    """Opcodes: the first byte of a command packet."""

    INFO = 0x00
    WRITE_ROUTER = 0x01
    WRITE_MEMORY = 0x02
    WRITE_SHARED = 0x03
    SET_SCALE = 0x04
    WRITE_TOKENS = 0x05
    RUN = 0x06
    READ_OUTPUT = 0x07
    READ_COUNTERS = 0x08
    INVALIDATE = 0x09
    SET_EXPERT_MASK = 0x0A
    READ_PARTIAL = 0x0B
    READ_IMAGE_CRC = 0x0C

    WRITES = (WRITE_ROUTER, WRITE_MEMORY, WRITE_SHARED)     # the weight writes (image CRC)


class Status:
    """The first byte of a response packet."""

    OK = 0
    BAD_OPCODE = 1       # no such command
    BAD_LENGTH = 2       # the packet is shorter or longer than its header says
    OUT_OF_RANGE = 3     # addresses or tokens beyond the config's memories (weights of another shape)
    BAD_BATCH = 4        # n_tokens of 0 or above the token buffer
    NOT_LOADED = 5       # run before the router, the output scale, the experts (and shared) are loaded
    NO_TOKENS = 6        # run over tokens that were not written since the last run

    NAMES = {0: "ok", 1: "unknown command", 2: "packet length does not match its header",
             3: "address or token range beyond the device's memories",
             4: "batch size outside 1..token_buffer_depth",
             5: "run before the weights were loaded", 6: "run over tokens that were not written"}


# Each command's header after the opcode (struct formats, little-endian). SET_EXPERT_MASK's
# header is its mask, whose length depends on the config: see `header_bytes`.
HEADER_FORMATS = {
    Op.INFO: "<", Op.READ_COUNTERS: "<", Op.INVALIDATE: "<", Op.READ_IMAGE_CRC: "<",
    Op.WRITE_ROUTER: "<II", Op.WRITE_MEMORY: "<II", Op.WRITE_SHARED: "<II",     # addr, count
    Op.SET_SCALE: "<HBB",                                                       # M_y, S_y, S_x
    Op.WRITE_TOKENS: "<HH", Op.READ_OUTPUT: "<HH", Op.READ_PARTIAL: "<HH",      # first, count
    Op.RUN: "<H",                                                               # n_tokens
}
HEADER_BYTES = {op: struct.calcsize(fmt) for op, fmt in HEADER_FORMATS.items()}
OPCODE_BYTES = 1            # a command packet's first byte, its opcode
STATUS_BYTES = 1            # a response packet's first byte, its status
WRITE_HEADER_BYTES = OPCODE_BYTES + HEADER_BYTES[Op.WRITE_MEMORY]   # a weight write's data after

# READ_COUNTERS: the last batch's figures (cleared when a RUN starts), u32 each, in this order:
# the layer core's, then the expert cache's.
CORE_COUNTERS = ("cycles", "router_cycles", "mac_busy", "mac_total", "shared_mac_busy",
                 "experts_run", "tokens_routed")
CACHE_COUNTERS = ("hits", "misses", "words_fetched", "prefetch_hits", "stall_cycles")
COUNTERS = CORE_COUNTERS + CACHE_COUNTERS
COUNTER_FORMAT = f"<{len(COUNTERS)}I"
COUNTER_BYTES = struct.calcsize("<I")       # bytes of one counter

# INFO's flags byte: bit i set when part i is loaded (each set by a write that reaches the end of
# its memory; RUN needs them all — `shared` only with shared experts).
LOADED_FLAGS = ("router", "scale", "experts", "shared")

CONFIG_HASH_BYTES = 8
INFO_FORMAT = f"<B{CONFIG_HASH_BYTES}sBB"   # version, config hash, last error, loaded flags
INFO_BYTES = struct.calcsize(INFO_FORMAT)
RUN_FORMAT = "<I"                           # the batch's cycles
IMAGE_CRC_FORMAT = "<I"

# Data bytes of the fixed-size responses (after the status byte).
RESPONSE_BYTES = {Op.INFO: INFO_BYTES, Op.RUN: struct.calcsize(RUN_FORMAT),
                  Op.READ_COUNTERS: struct.calcsize(COUNTER_FORMAT),
                  Op.READ_IMAGE_CRC: struct.calcsize(IMAGE_CRC_FORMAT)}


def config_hash(cfg: AccelConfig) -> bytes:
    """The config hash a device built for `cfg` reports in ``INFO``: the first
    `CONFIG_HASH_BYTES` bytes of ``cfg.content_hash()``."""
    return bytes.fromhex(cfg.content_hash()[:2 * CONFIG_HASH_BYTES])


class CommandError(Exception):
    """The device answered a command with an error status."""

    def __init__(self, op: int, status: int):
        self.op, self.status = op, status
        super().__init__(f"command 0x{op:02x}: {Status.NAMES.get(status, f'status {status}')}")


@dataclass(frozen=True)
class CommandLayout:
    """The sizes a config's device uses on the command stream (from the weight-image layout of
    `moeforge.spec.image`)."""

    d_model: int
    cols: int               # bytes of a backing-memory / shared-image word
    router_bytes: int       # bytes of a router word
    router_words: int
    image_words: int        # words of one routed expert's image
    shared_image_words: int
    n_experts: int
    t_max: int
    partial_bytes: int      # bytes of one READ_PARTIAL value (the combiner's accumulator width)
    token_bytes: int        # bytes of a token-buffer word: ``cols`` input values (int8 or int16)

    @property
    def value_bytes(self) -> int:
        """Bytes of one input token value on the wire: 1 (int8) or 2 (int16)."""
        return self.token_bytes // self.cols

    @classmethod
    def from_config(cls, cfg: AccelConfig) -> "CommandLayout":
        amap = RouterAddressMap.from_config(cfg, lanes=cfg.mac_cols)

        def img(d_ff: int) -> int:
            return ExpertImageLayout.from_config(cfg, d_ff=d_ff).words

        terms = cfg.top_k + (1 if cfg.shared_d_ff else 0)
        return cls(d_model=cfg.d_model, cols=cfg.mac_cols, router_bytes=-(-amap.data_bits // 8),
                   router_words=amap.words, image_words=img(cfg.d_ff),
                   shared_image_words=img(cfg.shared_d_ff) if cfg.shared_d_ff else 0,
                   n_experts=cfg.n_experts, t_max=cfg.token_buffer_depth,
                   partial_bytes=-(-accumulator_width(terms) // 8),
                   token_bytes=cfg.mac_cols * cfg.input_bits // 8)

    @property
    def memory_words(self) -> int:
        return self.n_experts * self.image_words

    @property
    def mask_bytes(self) -> int:
        """Bytes of ``SET_EXPERT_MASK``'s mask: ``n_experts + 1`` bits (the shared expert last)."""
        return self.n_experts // 8 + 1

    def expert_mask(self, experts=None, shared: bool = True) -> int:
        """``SET_EXPERT_MASK``'s mask enabling `experts` (None: all) and, if `shared`, the shared
        expert.

        Raises
        ------
        ValueError
            If `experts` names an expert outside ``0 .. n_experts-1``.
        """
        experts = range(self.n_experts) if experts is None else [int(e) for e in experts]
        bad = sorted(e for e in experts if not 0 <= e < self.n_experts)
        if bad:
            raise ValueError(f"experts must be in 0..{self.n_experts - 1}, not {bad}")
        return sum(1 << e for e in set(experts)) | int(bool(shared)) << self.n_experts

    def partials(self, data: bytes) -> list[list[int]]:
        """``READ_PARTIAL``'s response data → per token, ``d_model`` signed accumulators.

        Raises
        ------
        ValueError
            If `data` is not a whole number of tokens.
        """
        row = self.d_model * self.partial_bytes
        if len(data) % row:
            raise ValueError(f"READ_PARTIAL data must be whole tokens of {row} bytes, "
                             f"not {len(data)} bytes")
        b = self.partial_bytes
        values = [int.from_bytes(data[i:i + b], "little", signed=True) for i in range(0, len(data), b)]
        return [values[i:i + self.d_model] for i in range(0, len(values), self.d_model)]


def header_bytes(layout: CommandLayout) -> dict[int, int]:
    """Every opcode's header bytes on a device of `layout`: `HEADER_BYTES`, and
    ``SET_EXPERT_MASK``'s ``layout.mask_bytes``."""
    return {**HEADER_BYTES, Op.SET_EXPERT_MASK: layout.mask_bytes}


def _words(words, nbytes: int) -> bytes:
    return b"".join(int(w).to_bytes(nbytes, "little") for w in words)


def encode(op: int, *args) -> bytes:
    """One command packet. ``encode(Op.WRITE_MEMORY, addr, words, nbytes)``, ``encode(Op.RUN, n)``,
    ``encode(Op.WRITE_TOKENS, first, rows, value_bytes)`` (`CommandLayout.value_bytes`: 1 for
    int8 tokens, 2 for int16), ``encode(Op.READ_OUTPUT, first, count)`` (``READ_PARTIAL``
    alike), ``encode(Op.SET_SCALE, mult, shift, x_shift)``,
    ``encode(Op.SET_EXPERT_MASK, mask, nbytes)`` (`CommandLayout.expert_mask`, ``mask_bytes``),
    or a bare opcode."""
    if op in Op.WRITES:
        addr, words, nbytes = args
        return _packet(op, addr, len(words)) + _words(words, nbytes)
    if op == Op.WRITE_TOKENS:
        first, rows, value_bytes = args
        mask = (1 << (8 * value_bytes)) - 1
        return _packet(op, first, len(rows)) + b"".join(
            (int(v) & mask).to_bytes(value_bytes, "little") for r in rows for v in r)
    if op == Op.SET_EXPERT_MASK:
        mask, nbytes = args
        return bytes([op]) + int(mask).to_bytes(nbytes, "little")
    if op in HEADER_FORMATS and HEADER_BYTES[op]:
        return _packet(op, *args)
    if args:
        raise ValueError(f"command 0x{op:02x} takes no arguments")
    return bytes([op])


def _packet(op: int, *fields) -> bytes:
    """The opcode and `op`'s header of `fields` (`HEADER_FORMATS`)."""
    return bytes([op]) + struct.pack(HEADER_FORMATS[op], *fields)


def check_response(op: int, packet: bytes) -> bytes:
    """The data of a response packet; `CommandError` for an error status."""
    if not packet:
        raise CommandError(op, Status.BAD_LENGTH)
    if packet[0] != Status.OK:
        raise CommandError(op, packet[0])
    return packet[STATUS_BYTES:]


def parse_counters(data: bytes) -> dict[str, int]:
    """``READ_COUNTERS``'s response data → {counter name: value} (`COUNTERS`).

    Raises
    ------
    ValueError
        If `data` is not the size of the counters.
    """
    if len(data) != RESPONSE_BYTES[Op.READ_COUNTERS]:
        raise ValueError(f"READ_COUNTERS data of {len(data)} bytes, expected "
                         f"{RESPONSE_BYTES[Op.READ_COUNTERS]}")
    return dict(zip(COUNTERS, struct.unpack(COUNTER_FORMAT, data)))


@dataclass(frozen=True)
class WriteRun:
    """Words for consecutive addresses of one write command's memory, cut into packets only
    when sent: the host runtime sizes them to the link's frames, which shrink on a noisy link."""

    op: int             # WRITE_ROUTER, WRITE_MEMORY or WRITE_SHARED
    addr: int
    words: tuple[int, ...]
    nbytes: int         # bytes of a word

    @property
    def size(self) -> int:
        return len(self.words) * self.nbytes

    @property
    def data(self) -> bytes:
        """The run's words as the packets carry them (little-endian, ``nbytes`` each)."""
        return _words(self.words, self.nbytes)

    def packet(self, start: int, max_payload: int) -> bytes:
        """The packet of the words from index `start` on, as many as ``max_payload`` bytes hold."""
        per = (max_payload - WRITE_HEADER_BYTES) // self.nbytes
        if per < 1:
            raise ValueError(f"a packet of {max_payload} bytes cannot carry one {self.nbytes}-byte word")
        return encode(self.op, self.addr + start, self.words[start:start + per], self.nbytes)

    def packets(self, max_payload: int):
        """Every packet of the run, in address order, at most ``max_payload`` bytes each."""
        per = (max_payload - WRITE_HEADER_BYTES) // self.nbytes
        for start in range(0, len(self.words), max(per, 1)):
            yield self.packet(start, max_payload)


def _write_runs(op: int, writes, nbytes: int) -> list[WriteRun]:
    """(addr, word) writes → runs of consecutive addresses."""
    runs, start, cur = [], None, []
    for addr, word in sorted(writes):
        if cur and addr != start + len(cur):
            runs.append(WriteRun(op, start, tuple(cur), nbytes))
            cur = []
        if not cur:
            start = addr
        cur.append(word)
    if cur:
        runs.append(WriteRun(op, start, tuple(cur), nbytes))
    return runs


def layer_writes(q, cfg: AccelConfig, *, experts=None, shared: bool = True) -> list[WriteRun]:
    """Router, expert images (only ``experts`` if given) and shared image of `q` (a
    `QuantizedMoELayer`) for a device built for `cfg`. A device given a subset still gets the
    last word of each memory written (zero where it is not its own): the device counts a memory
    loaded once a write reaches its end, and the experts it does not hold are masked off
    (``SET_EXPERT_MASK``), never read.

    Raises
    ------
    ValueError
        If the layer's tensors do not fit the config's memories, or the config has a shared
        expert and the layer none.
    """
    lay = CommandLayout.from_config(cfg)
    runs = _write_runs(Op.WRITE_ROUTER, router_image(q, lanes=cfg.mac_cols), lay.router_bytes)
    mem = {}
    for e in (range(cfg.n_experts) if experts is None else sorted(experts)):
        mem.update((e * lay.image_words + i, w) for i, w in enumerate(expert_image(q.experts, e, cfg)))
    mem.setdefault(lay.memory_words - 1, 0)
    runs += _write_runs(Op.WRITE_MEMORY, mem.items(), lay.cols)
    if cfg.shared_d_ff:
        if q.shared is None:
            raise ValueError(f"config {cfg.name} has a shared expert; the layer has none")
        img = dict(enumerate(expert_image(q.shared, 0, cfg))) if shared else {}
        img.setdefault(lay.shared_image_words - 1, 0)
        runs += _write_runs(Op.WRITE_SHARED, img.items(), lay.cols)
    return runs


def image_bytes(packet: bytes) -> bytes:
    """The bytes of a command packet that a device which accepts it adds to its image CRC:
    a write's data (``WRITE_ROUTER``, ``WRITE_MEMORY``, ``WRITE_SHARED``), ``SET_SCALE``'s
    header; none of any other command."""
    if packet and packet[0] in Op.WRITES:
        return packet[WRITE_HEADER_BYTES:]
    if packet and packet[0] == Op.SET_SCALE:
        return packet[OPCODE_BYTES:]
    return b""


def image_crc(runs: Iterable[WriteRun], scale: tuple[int, int, int] | None = None,
              crc: int = 0) -> int:
    """The image CRC of a device whose CRC was `crc` once `runs` are written in order, then
    (if given) ``SET_SCALE`` with ``scale = (mult, shift, x_shift)`` (`layer_scale`). Computed
    from the runs' words, not from the packets cut from them: how the host cut them does not
    matter, a wrong byte in one does."""
    for run in runs:
        crc = zlib.crc32(run.data, crc)
    if scale is not None:
        crc = zlib.crc32(image_bytes(encode(Op.SET_SCALE, *scale)), crc)
    return crc


def layer_scale(q) -> tuple[int, int, int]:
    """``SET_SCALE``'s fields for a `QuantizedMoELayer`: ``M_y``, ``S_y``, ``S_x`` (0 for an
    int8 input)."""
    return int(q.out_mult), int(q.out_shift), int(q.x_shift)


def layer_commands(q, cfg: AccelConfig, *, chunk: int = 1024) -> list[bytes]:
    """The packets that load a `QuantizedMoELayer` into a device built for `cfg`: router,
    every expert's image into the backing memory, the shared expert, the output scale; write
    packets carry at most `chunk` words.

    Raises
    ------
    ValueError
        If the layer does not fit the config (its shapes, activation or parameters).
    """
    fields = ("d_model", "d_ff", "n_experts", "top_k", "activation", "shared_d_ff", "shared_gate",
              "routing", "router_bits", "rotation_block")
    differ = [f for f in fields if getattr(q.cfg, f) != getattr(cfg, f)]
    if differ:
        raise ValueError(f"the layer is quantised for config {q.cfg.name}, which differs from "
                         f"{cfg.name} in " + ", ".join(f"{f} ({getattr(q.cfg, f)!r} vs "
                                                       f"{getattr(cfg, f)!r})" for f in differ))
    packets = [p for run in layer_writes(q, cfg)
               for p in run.packets(WRITE_HEADER_BYTES + chunk * run.nbytes)]
    packets.append(encode(Op.SET_SCALE, *layer_scale(q)))
    return packets


# ------------------------------------------------------------------------ frames and HELLO

MAGIC = 0xA5                # a frame's first byte
LINK_VERSION = 1            # the link protocol's version (HELLO)
DEFAULT_MAX_PAYLOAD = 1024  # a device's longest payload unless built otherwise
# What a served simulated device (`moeforge serve-sim`) sends a client that connects while another
# is served, before it closes that connection; sim/device_server.cpp sends the same bytes (tested).
BUSY_LINE = (b"moeforge device busy: another client is connected (the simulated device serves "
             b"one client at a time)\n")
FRAME_HEADER_FORMAT = "<BBBH"   # magic, type, sequence number, payload length
FRAME_HEADER_BYTES = struct.calcsize(FRAME_HEADER_FORMAT)
MAX_LENGTH_FIELD = 0xFFFF     # the u16 length field's largest value: the longest payload
SEQ_MASK = 0xFF             # sequence numbers are u8: they wrap at 256
CRC_FORMAT = "<I"           # CRC-32 (zlib.crc32) of type, sequence, length and payload
CRC_BYTES = struct.calcsize(CRC_FORMAT)


class FrameType:
    CMD = 0x01          # host → device: one command packet
    HELLO = 0x02        # host → device: empty; answered with the HELLO report
    RSP = 0x11          # device → host: the response packet (the acknowledgement)
    NACK = 0x12         # device → host: one byte, a `NackReason`

    KNOWN = (CMD, HELLO, RSP, NACK)


class NackReason:
    CRC = 1
    TOO_LONG = 2
    TIMEOUT = 3
    BAD_FRAME = 4
    RESPONSE_TOO_LONG = 5

    NAMES = {1: "CRC mismatch", 2: "payload above the device's maximum",
             3: "frame stopped arriving", 4: "unknown frame type or empty command",
             5: "response longer than the device's maximum payload"}


# The link's counters in the HELLO report (u32 each, wrapping), in this order.
LINK_COUNTERS = ("frames", "crc_errors", "duplicates", "rx_timeouts")
HELLO_HEADER_FORMAT = f"<BH{len(LINK_COUNTERS)}I"     # link version, max_payload, link counters
HELLO_HEADER_BYTES = struct.calcsize(HELLO_HEADER_FORMAT)
HELLO_INFO_OFFSET = HELLO_HEADER_BYTES                  # INFO's response packet (status first)
HELLO_COUNTERS_OFFSET = HELLO_INFO_OFFSET + STATUS_BYTES + INFO_BYTES   # READ_COUNTERS' packet
HELLO_BYTES = HELLO_COUNTERS_OFFSET + STATUS_BYTES + RESPONSE_BYTES[Op.READ_COUNTERS]


@dataclass(frozen=True)
class HelloReport:
    """What the device says of itself at the start of a session (the HELLO report)."""

    link_version: int
    max_payload: int
    link_counters: dict
    accel_version: int
    config_hash: bytes
    last_error: int
    loaded_flags: int
    counters: dict

    SIZE = HELLO_BYTES

    @classmethod
    def parse(cls, payload: bytes) -> "HelloReport":
        """The report of a HELLO's ``RSP`` payload.

        Raises
        ------
        ValueError
            If the payload is not `HELLO_BYTES` long or an injected command did not answer OK.
        """
        if len(payload) != HELLO_BYTES:
            raise ValueError(f"HELLO report of {len(payload)} bytes, expected {HELLO_BYTES}")
        version, max_payload, *link = struct.unpack_from(HELLO_HEADER_FORMAT, payload, 0)
        info = payload[HELLO_INFO_OFFSET:HELLO_COUNTERS_OFFSET]
        if info[0] != Status.OK:
            raise ValueError(f"HELLO report: INFO answered status {info[0]}")
        ctr = payload[HELLO_COUNTERS_OFFSET:]
        if ctr[0] != Status.OK:
            raise ValueError(f"HELLO report: READ_COUNTERS answered status {ctr[0]}")
        accel_version, chash, last_error, flags = struct.unpack(INFO_FORMAT, info[STATUS_BYTES:])
        return cls(link_version=version, max_payload=max_payload,
                   link_counters=dict(zip(LINK_COUNTERS, link)), accel_version=accel_version,
                   config_hash=chash, last_error=last_error, loaded_flags=flags,
                   counters=parse_counters(ctr[STATUS_BYTES:]))
