"""Pictures: colour maps, overlays and attention grids (render.py); Figures 3 and 4 (plots.py)."""
