"""`Dispatch`: the batch's dispatch table, expert → the tokens that chose it and their gates.

The router emits one route beat per token (its ``k`` experts and gates, and the shared-expert
gate). Expert-major scheduling needs the transpose: for each expert, the tokens that chose it,
in token order, with their gates, and how many there are (the job's ``n_tokens``). This unit
builds that table as the route beats arrive (a counting sort: expert ``e``'s list lives at
``e·t_max ..``, its count says where the next entry goes) and serves it through read ports.

Interface
---------
``i_route`` (in stream): ``{experts: k × ebits, gates: k × 22}`` (plus ``shared_gate: 16`` with
``shared``, ``keep: k`` with ``skip``), the `Router`'s ``o_route`` beats of one batch, token ``0``
first. A beat is held ``k`` cycles (``ready`` on its ``k``-th): each cycle writes one entry
``(token, gate)`` to the list of ``experts[j]`` — with ``skip`` only if ``keep`` bit ``j`` is set,
so an expert no token keeps has count 0 and is neither fetched nor run. The ``k`` experts of a
token are distinct (the router's top-k).

``clear`` (in): starts a batch: counts and ``n_routed`` to 0 (no beat may transfer in that cycle).

``n_routed`` (out): beats taken so far (= tokens routed); an entry and a shared gate are
readable from the cycle after their beat's transfer.

``counts`` (out): ``E × unsigned(bits(t_max))``, tokens per expert so far.

``rd_x`` (in ``expert``, ``index``, ``en``; out ``token``), ``rd_c`` (the same, also out ``gate``):
entry ``index`` of ``expert``'s list, latency 1, held while ``en`` is low.

``rd_sh`` (only with ``shared``; in ``token``, ``en``; out ``gate``): the token's shared-expert gate,
latency 1.

Storage: ``E·t_max`` token indices (two read ports) and gates, ``t_max`` shared gates, ``E``
count registers. A table of ``t_max·k`` entries laid out by prefix sums would be smaller for
large ``E`` (a second pass over the routes); at the example configs' ``E ≤ 16`` this one is.
"""

from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from moeforge.spec.arith import GATE_BITS, SHARED_GATE_BITS

from moeforge.checks import check_int
from ..datapath.mac_array import index_shape

__all__ = ["Dispatch", "pick"]


def pick(values, index):
    """``values[index]`` as a complete multiplexer (padded with zeros to every value of `index`,
    so the Verilog case statement is complete)."""
    values = list(values)
    values += [Const(0, values[0].shape())] * ((1 << len(index)) - len(values))
    return Array(values)[index]


class Dispatch(wiring.Component):
    """Route beats → per-expert token lists (see the module docstring).

    Parameters
    ----------
    n_experts : int
        ``E``, in [1, 1024].
    top_k : int
        ``k``, in [1, E].
    t_max : int
        Largest batch, in [1, 4096].
    shared : bool
        Keep each token's shared-expert gate (``rd_sh``).
    skip : bool
        The beats carry a keep mask (expert skipping): only kept entries are written.
    """

    def __init__(self, *, n_experts: int, top_k: int, t_max: int, shared: bool,
                 skip: bool = False, src_loc_at: int = 0):
        check_int("n_experts", n_experts, 1, 1024)
        check_int("top_k", top_k, 1, n_experts)
        check_int("t_max", t_max, 1, 4096)
        for name, flag in (("shared", shared), ("skip", skip)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, not {flag!r}")
        self.n_experts, self.top_k, self.t_max, self.shared = n_experts, top_k, t_max, shared
        self.skip = skip
        self.expert_shape = unsigned(max(1, ceil_log2(n_experts)))
        self.token_shape = index_shape(t_max)
        self.count_shape = unsigned(t_max.bit_length())
        fields = {"experts": data.ArrayLayout(self.expert_shape, top_k),
                  "gates": data.ArrayLayout(unsigned(GATE_BITS), top_k)}
        if shared:
            fields["shared_gate"] = unsigned(SHARED_GATE_BITS)
        if skip:
            fields["keep"] = unsigned(top_k)
        self.route_layout = data.StructLayout(fields)
        es, ts = self.expert_shape, self.token_shape
        members = {
            "i_route": In(stream.Signature(self.route_layout)),
            "clear": In(1),
            "n_routed": Out(self.count_shape),
            "counts": Out(data.ArrayLayout(self.count_shape, n_experts)),
            "rd_x": In(wiring.Signature({"expert": Out(es), "index": Out(ts), "en": Out(1),
                                         "token": In(ts)})),
            "rd_c": In(wiring.Signature({"expert": Out(es), "index": Out(ts), "en": Out(1),
                                         "token": In(ts), "gate": In(GATE_BITS)})),
        }
        if shared:
            members["rd_sh"] = In(wiring.Signature({"token": Out(ts), "en": Out(1),
                                                    "gate": In(SHARED_GATE_BITS)}))
        super().__init__(members, src_loc_at=1 + src_loc_at)

    def elaborate(self, platform):
        m = Module()
        E, k, T = self.n_experts, self.top_k, self.t_max
        depth = E * T
        aw = max(1, ceil_log2(depth))
        rt = self.i_route

        def address(expert, index):
            return (expert * T + index)[:aw]

        m.submodules.tokens = tokens = Memory(shape=self.token_shape, depth=max(2, depth), init=[])
        m.submodules.gates = gates = Memory(shape=unsigned(GATE_BITS), depth=max(2, depth), init=[])
        tw, gw = tokens.write_port(), gates.write_port()

        # Entry j of the beat in front: written in the j-th cycle the beat is valid.
        counts = [Signal(self.count_shape, name=f"count{e}") for e in range(E)]
        if k > 1:
            j = Signal(index_shape(k), name="entry")
            with m.If(rt.valid):
                m.d.sync += j.eq(Mux(j == k - 1, 0, j + 1))
            expert = pick(rt.payload.experts, j)
            gate = pick(rt.payload.gates, j)
            kept = (rt.payload.keep >> j)[0] if self.skip else Const(1, 1)
            m.d.comb += rt.ready.eq(j == k - 1)
        else:
            j = None
            expert, gate, kept = rt.payload.experts[0], rt.payload.gates[0], Const(1, 1)
            m.d.comb += rt.ready.eq(1)
        write = Signal(name="write_entry")
        m.d.comb += write.eq(rt.valid & kept)
        cur = Signal(self.expert_shape, name="cur_expert")
        m.d.comb += cur.eq(expert)
        where = address(cur, pick(counts, cur)[:self.token_shape.width])
        token = self.n_routed[:self.token_shape.width]
        m.d.comb += [tw.addr.eq(where), tw.data.eq(token), tw.en.eq(write),
                     gw.addr.eq(where), gw.data.eq(gate), gw.en.eq(write)]
        for e in range(E):
            with m.If(write & (cur == e)):
                m.d.sync += counts[e].eq(counts[e] + 1)
        with m.If(rt.valid & rt.ready):
            m.d.sync += self.n_routed.eq(self.n_routed + 1)
        with m.If(self.clear):
            m.d.sync += [c.eq(0) for c in counts]
            m.d.sync += self.n_routed.eq(0)
            if j is not None:
                m.d.sync += j.eq(0)
        m.d.comb += [self.counts[e].eq(counts[e]) for e in range(E)]

        # Read ports: the x feed (token), the contribution mapper (token and gate).
        rx, rc, rg = tokens.read_port(), tokens.read_port(), gates.read_port()
        m.d.comb += [
            rx.addr.eq(address(self.rd_x.expert, self.rd_x.index)), rx.en.eq(self.rd_x.en),
            self.rd_x.token.eq(rx.data),
            rc.addr.eq(address(self.rd_c.expert, self.rd_c.index)), rc.en.eq(self.rd_c.en),
            rg.addr.eq(address(self.rd_c.expert, self.rd_c.index)), rg.en.eq(self.rd_c.en),
            self.rd_c.token.eq(rc.data), self.rd_c.gate.eq(rg.data),
        ]
        if self.shared:
            m.submodules.shared_gates = sg = Memory(shape=unsigned(SHARED_GATE_BITS),
                                                    depth=max(2, T), init=[])
            sw, sr = sg.write_port(), sg.read_port()
            m.d.comb += [sw.addr.eq(token), sw.data.eq(rt.payload.shared_gate),
                         sw.en.eq(rt.valid & rt.ready),
                         sr.addr.eq(self.rd_sh.token), sr.en.eq(self.rd_sh.en),
                         self.rd_sh.gate.eq(sr.data)]
        return m
