"""moeforge.rtl.expert: one expert's FFN on the MAC array (`expert_ffn`) and its hidden unit
(requantisation, SiLU or ReLU, the Hadamard rotation, int8 h)."""
