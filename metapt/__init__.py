"""metapt: meta-learned multi-task pretraining of transformer encoders (Luo et al. 2021)."""

__version__ = "0.1.0"
