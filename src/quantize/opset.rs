//! Default-domain opset upgrades (so per-channel and int16 Q/DQ are available).
