"""Programs for the paper's experiments: probe (Figure 3), attention_maps (Figure 4), sweep (Tables 1, 2), plots."""
