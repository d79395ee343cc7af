//! `train_mlp` (being written).
