"""The MDT4Rec network: a Decision Transformer over recommendation trajectories on a pre-trained causal LM backbone."""
